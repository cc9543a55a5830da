"""Pieces in, whole volumes out: the series assembler (no I/O).

:func:`assemble` stacks the pieces of one volume (one whole-volume piece, or its slices in
any order) into one voxel array and its affine. :class:`SeriesAssembler` collects the
pieces the readers make of each file into whole volumes of one series and releases them
in acquisition order as :class:`rtserver.volume.Volume` objects: a volume whose
successors are complete but which itself is not is reported missing after
``missing_after`` seconds instead of being waited for forever. A watched live folder and a
replayed export folder go through the same assembler.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rtserver.errors import ForeignFileError, InputError
from rtserver.scanner.readers.pieces import ORIENTATION_TOLERANCE, Piece, regular_spacing
from rtserver.volume import Volume

__all__ = ["SeriesAssembler", "assemble"]

log = logging.getLogger(__name__)


def assemble(pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray]:
    """One whole volume from the pieces of one ``volume_key``.

    Parameters
    ----------
    pieces : sequence of Piece
        Either one whole-volume piece, or the slices of one volume in any order.

    Returns
    -------
    data : numpy.ndarray
        The 3D voxel array (i, j, k); slices sorted by ``slice_key`` on the third axis.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+, mm) matrix: the first slice's, with the third column the
        slice normal times the spacing between slices.

    Raises
    ------
    InputError
        If the pieces are not one volume: none, several whole volumes, mixed volume keys or
        series, slices of different shapes or orientations, two slices at one position,
        irregular spacing (beyond 1e-2 mm), or fewer or more slices than the files state.
    """
    if len(pieces) == 0:
        raise InputError("assemble() needs at least one piece. Got none.")
    first = pieces[0]
    keys = {(piece.series, piece.volume_key) for piece in pieces}
    if len(keys) > 1:
        raise InputError(f"assemble() needs the pieces of one volume. Got volume keys "
                         f"{sorted({key for _, key in keys})} of {len({s for s, _ in keys})} series.")
    whole = [piece for piece in pieces if piece.slice_key is None]
    if whole:
        if len(pieces) > 1:
            raise InputError(f"Volume {first.volume_key} should be one whole-volume piece. "
                             f"Got {len(whole)} whole volumes and {len(pieces) - len(whole)} slices.")
        return first.data, first.affine.copy()
    ordered = sorted(pieces, key=lambda piece: piece.slice_key)
    shapes = {piece.data.shape for piece in ordered}
    if len(shapes) > 1:
        raise InputError(f"The slices of volume {first.volume_key} should have one shape. "
                         f"Got {sorted(shapes)}.")
    stated = {piece.n_slices for piece in ordered if piece.n_slices is not None}
    if len(stated) > 1:
        raise InputError(f"The slices of volume {first.volume_key} disagree on the number of slices "
                         f"per volume: {sorted(stated)}.")
    if stated and len(ordered) != next(iter(stated)):
        raise InputError(f"Volume {first.volume_key} should have {next(iter(stated))} slices, "
                         f"as its files state. Got {len(ordered)}.")
    affines = np.stack([piece.affine for piece in ordered])
    positions = affines[:, :3, 3]
    normal = affines[0, :3, 2]
    if np.abs(affines[:, :3, :3] - affines[0, :3, :3]).max() > ORIENTATION_TOLERANCE:
        raise InputError(f"The slices of volume {first.volume_key} should share one orientation "
                         f"and pixel spacing. They differ.")
    spacing = regular_spacing(np.array([piece.slice_key for piece in ordered]), positions, normal,
                              f"volume {first.volume_key}")
    affine = affines[0].copy()
    affine[:3, 2] = normal * spacing
    data = np.stack([piece.data for piece in ordered], axis=2)
    return data, affine


@dataclass
class _Pending:
    """The pieces of one volume so far."""

    pieces: dict[float | None, Piece] = field(default_factory=dict)
    t_complete: float | None = None  # when its last file was found complete
    n_files: int = 0
    t_whole: float | None = None  # when the volume became whole


class SeriesAssembler:
    """Collect the pieces of one series into whole volumes, released in acquisition order.

    Parameters
    ----------
    n_slices : int or None
        Slices per volume for per-slice series; ``None`` takes it from the files, or, if
        they do not say, from the distinct slice positions seen once a later volume starts.
    missing_after : float or None
        Seconds a later volume must have been whole before a volume that is still not is
        reported missing and skipped; ``None``: two TRs (4 s while the TR is unknown).
    series_number : int or None
        Only take this DICOM series; ``None`` takes the first series that arrives.
    first_hold : float
        Seconds the first whole volume waits before it goes, in case files of earlier
        volumes are still being found (e.g. when watching starts as the scanner writes).
    tr : float or None
        The repetition time (s) of every volume, whatever the files state; ``None`` takes
        the first TR a piece of the series states.
    default_tr : float or None
        The repetition time (s) of volumes while neither ``tr`` nor the files give one (a
        warning is logged once); ``None``: releasing such a volume raises InputError.

    Attributes
    ----------
    missing : list of int
        0-based indices of volumes reported missing.
    stated_tr : float or None
        The first TR (s) a piece of the series stated.
    """

    def __init__(self, n_slices: int | None = None, missing_after: float | None = None,
                 series_number: int | None = None, first_hold: float = 0.0,
                 tr: float | None = None, default_tr: float | None = None) -> None:
        self.n_slices = n_slices
        self.first_hold = first_hold
        self.missing_after = missing_after
        self.series_number = series_number
        self.given_tr = tr
        self.default_tr = default_tr
        self.series: str | None = None
        self.start_key: int | None = None
        self.next_key: int | None = None
        self.stated_tr: float | None = None
        self.missing: list[int] = []
        self._pending: dict[int, _Pending] = {}
        self._positions: set[float] = set()
        self._released = 0
        self._warned_default_tr = False

    @property
    def tr(self) -> float | None:
        """The repetition time (s) known so far: the one given, else the files'; None if neither."""
        return self.given_tr if self.given_tr is not None else self.stated_tr

    # ------------------------------------------------------------------ input
    def add(self, piece: Piece, t_complete: float | None) -> None:
        """Take one piece of a file.

        Parameters
        ----------
        piece : Piece
            A piece a reader made.
        t_complete : float or None
            When its file was found complete (Unix seconds); None when not known (a replay).

        Raises
        ------
        ForeignFileError
            If the piece belongs to another series, or to a volume already released or
            reported missing, or repeats a piece already held.
        """
        if self.series is None:
            if self.series_number is not None and piece.series_number != self.series_number:
                raise ForeignFileError(
                    f"series {piece.series_number}, not the series {self.series_number} asked for",
                    setting="series")
            self.series = piece.series
            log.info("following series %s(%s)", "" if piece.series_number is None
                     else f"{piece.series_number} ", piece.kind)
        elif piece.series != self.series:
            raise ForeignFileError(f"another series (number {piece.series_number}) than the "
                                   "one being followed")
        if self.stated_tr is None and piece.tr:
            self.stated_tr = piece.tr
        if self.n_slices is None and piece.n_slices:
            self.n_slices = piece.n_slices
        key = piece.volume_key
        if self.start_key is None or (self._released == 0 and not self.missing
                                      and key < self.start_key):
            self.start_key = key  # the first volume so far
            self.next_key = key
        elif key < self.next_key:
            raise ForeignFileError(f"volume {key} arrived after it was sent or reported missing")
        pending = self._pending.setdefault(key, _Pending())
        if piece.slice_key in pending.pieces or (piece.slice_key is None and pending.pieces):
            raise ForeignFileError(f"a repeat of volume {key}"
                                   + ("" if piece.slice_key is None else
                                      f", slice at {piece.slice_key:.2f} mm"))
        pending.pieces[piece.slice_key] = piece
        if t_complete is not None:
            pending.t_complete = t_complete if pending.t_complete is None else max(pending.t_complete,
                                                                                   t_complete)
        pending.n_files += 1
        if piece.slice_key is not None:
            self._positions.add(round(piece.slice_key, 2))

    # ------------------------------------------------------------------ output
    def pop_ready(self, now: float) -> list[Volume]:
        """Release the volumes that can go now, in order.

        Parameters
        ----------
        now : float
            The time (Unix seconds), to tell how long volumes have been whole.

        Returns
        -------
        list of Volume
            Indexed from 0 at the first volume of the run; ``t_file_complete`` when the
            last file of the volume was found complete; ``meta`` the piece kind, the scanner's
            volume number (``volume_key``), the number of files and the series number.

        Raises
        ------
        InputError
            If a volume is to go but no TR is known and there is no ``default_tr``.
        """
        ready: list[Volume] = []
        if self.next_key is None:
            return ready
        for key, pending in self._pending.items():
            if pending.t_whole is None and self._is_whole(key, pending):
                pending.t_whole = now
        while True:
            pending = self._pending.get(self.next_key)
            if pending is not None and pending.t_whole is not None:
                if self._released == 0 and now - pending.t_whole < self.first_hold:
                    return ready  # an earlier volume may still turn up
                ready += self._release(self.next_key)
                continue
            later = [p.t_whole for k, p in self._pending.items()
                     if k > self.next_key and p.t_whole is not None]
            if later and now - min(later) >= self._missing_after():
                self._report_missing(self.next_key, pending)
                continue
            return ready

    def flush(self) -> list[Volume]:
        """At the end of the run: release every whole volume; report the rest missing.

        Returns
        -------
        list of Volume
            As for :meth:`pop_ready`.

        Raises
        ------
        InputError
            If a volume is to go but no TR is known and there is no ``default_tr``.
        """
        ready: list[Volume] = []
        while self._pending:
            pending = self._pending.get(self.next_key)
            if pending is not None and (pending.t_whole is not None
                                        or self._is_whole(self.next_key, pending, final=True)):
                ready += self._release(self.next_key)
            else:
                self._report_missing(self.next_key, pending)
        return ready

    def _missing_after(self) -> float:
        """Seconds before a volume that is not whole, behind a whole one, is reported missing."""
        if self.missing_after is not None:
            return self.missing_after
        return 2.0 * self.tr if self.tr else 4.0

    def _is_whole(self, key: int, pending: _Pending, final: bool = False) -> bool:
        """Whether volume ``key`` has all its pieces (``final``: the run has ended)."""
        pieces = pending.pieces
        if None in pieces:
            return True
        if self.n_slices is not None:
            return len(pieces) >= self.n_slices
        # Slice count unknown: whole once a later volume has started (or the run ended) and
        # every slice position seen in the series is there.
        started_later = final or any(k > key for k in self._pending)
        have = {round(s, 2) for s in pieces}
        return started_later and have >= self._positions

    def _volume_tr(self) -> float:
        """Return the TR of the next volume to go: given, else stated, else the default (or InputError)."""
        if self.tr is not None:
            return self.tr
        if self.default_tr is None:
            raise InputError("The files state no repetition time (TR), and none was given.", setting="tr")
        if not self._warned_default_tr:
            log.warning("the files state no TR, and none was given; taking %g s", self.default_tr)
            self._warned_default_tr = True
        return self.default_tr

    def _release(self, key: int) -> list[Volume]:
        """Release the whole volume ``key`` (none, reported missing, if its pieces do not fit)."""
        pending = self._pending[key]
        pieces = list(pending.pieces.values())
        tr = self._volume_tr()
        first = pieces[0]
        meta = {"kind": first.kind, "volume_key": key, "n_files": pending.n_files,
                **({"series_number": first.series_number} if first.series_number is not None else {})}
        try:
            data, affine = assemble(pieces)
            volume = Volume(data=np.ascontiguousarray(data), affine=affine, index=key - self.start_key,
                            tr=tr, t_file_complete=pending.t_complete, meta=meta)
        except InputError as exc:
            log.warning("volume %d cannot be assembled: %s", key - self.start_key, exc)
            self._report_missing(key, pending)
            return []
        del self._pending[key]
        if self.n_slices is None and first.slice_key is not None:
            self.n_slices = len(pieces)
        self.next_key = key + 1
        self._released += 1
        return [volume]

    def _report_missing(self, key: int, pending: _Pending | None) -> None:
        """Log volume ``key`` as missing, note it, and go on to the next."""
        index = key - self.start_key
        have = 0 if pending is None else len(pending.pieces)
        log.warning("volume %d (scanner number %d) is missing%s; going on without it",
                    index, key, f" ({have} of {self.n_slices or '?'} slices came)" if have
                    else "")
        self.missing.append(index)
        self._pending.pop(key, None)
        self.next_key = key + 1
