"""Watching a live export folder: files in as the scanner writes them, volumes out in order.

Three parts, each testable alone:

* :class:`SeriesAssembler` (no I/O) collects the pieces the readers make of each file
  (whole volumes, or single slices) into whole volumes of one series, and releases them in
  acquisition order: a volume whose successors are complete but which itself is not is
  reported missing after ``missing_after`` seconds instead of being waited for forever.
* :class:`FolderWatcher` turns file-system events (watchdog: inotify on a local disk, or
  polling for network shares) into files that are ready to read: a file is read once the
  writer closed it, or once its size and time stamp have stopped changing; the reader then
  checks that its content is whole (a DICOM's pixel data, a NIfTI's voxels), and a file
  that is not is read again when it changes.
* :func:`watch_and_send` runs both and hands each volume to the scanner bridge, recording
  when its last file was found complete.

Nothing that identifies the patient is passed on: the readers keep only voxels, geometry,
series and volume numbers, and the wire protocol drops any other metadata.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.assembly import assemble
from rtserver.scanner.readers import Piece, read_file
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: Seconds a file's size and time stamp must stay unchanged before it is read without a
#: close event (inotify reports closes; polling and some network file systems do not).
SETTLE_SECONDS = 0.05
#: Seconds between re-checks of files that were not ready or not complete yet.
RECHECK_SECONDS = 0.02
#: Seconds the first volume of a watched run is held back, in case an earlier one is still
#: settling (watching began while the scanner was writing).
FIRST_HOLD_SECONDS = 0.25


@dataclass
class AssembledVolume:
    """A whole volume, ready to send."""

    key: int
    data: np.ndarray
    affine: np.ndarray
    tr: float | None
    t_file_complete: float
    n_files: int
    kind: str
    series_number: int | None


@dataclass
class _Pending:
    pieces: dict[float | None, Piece] = field(default_factory=dict)
    t_complete: float = 0.0
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

    Attributes
    ----------
    missing : list of int
        0-based indices of volumes reported missing.
    """

    def __init__(self, n_slices: int | None = None, missing_after: float | None = None,
                 series_number: int | None = None, first_hold: float = 0.0) -> None:
        self.n_slices = n_slices
        self.first_hold = first_hold
        self.missing_after = missing_after
        self.series_number = series_number
        self.series: str | None = None
        self.start_key: int | None = None
        self.next_key: int | None = None
        self.tr: float | None = None
        self.missing: list[int] = []
        self._pending: dict[int, _Pending] = {}
        self._positions: set[float] = set()
        self._released = 0

    # ------------------------------------------------------------------ input
    def add(self, piece: Piece, t_complete: float) -> None:
        """Take one piece of a file found complete at ``t_complete`` (Unix seconds).

        Raises
        ------
        ForeignFileError
            If the piece belongs to another series, or to a volume already released or
            reported missing, or repeats a piece already held.
        """
        if self.series is None:
            if self.series_number is not None and piece.series_number != self.series_number:
                raise ForeignFileError(
                    f"series {piece.series_number}, not the series {self.series_number} asked "
                    "for (--series)")
            self.series = piece.series
            log.info("following series %s(%s)", "" if piece.series_number is None
                     else f"{piece.series_number} ", piece.kind)
        elif piece.series != self.series:
            raise ForeignFileError(f"another series (number {piece.series_number}) than the "
                                   "one being followed")
        if self.tr is None and piece.tr:
            self.tr = piece.tr
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
        pending.t_complete = max(pending.t_complete, t_complete)
        pending.n_files += 1
        if piece.slice_key is not None:
            self._positions.add(round(piece.slice_key, 2))

    # ------------------------------------------------------------------ output
    def pop_ready(self, now: float) -> list[AssembledVolume]:
        """The volumes that can go now, in order (``now``: Unix seconds, for missing ones)."""
        ready: list[AssembledVolume] = []
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

    def flush(self) -> list[AssembledVolume]:
        """At the end of the run: release every whole volume; report the rest missing."""
        ready: list[AssembledVolume] = []
        while self._pending:
            pending = self._pending.get(self.next_key)
            if pending is not None and (pending.t_whole is not None
                                        or self._is_whole(self.next_key, pending, final=True)):
                ready += self._release(self.next_key)
            else:
                self._report_missing(self.next_key, pending)
        return ready

    def _missing_after(self) -> float:
        if self.missing_after is not None:
            return self.missing_after
        return 2.0 * self.tr if self.tr else 4.0

    def _is_whole(self, key: int, pending: _Pending, final: bool = False) -> bool:
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

    def _release(self, key: int) -> list[AssembledVolume]:
        """The whole volume ``key`` (none, reported missing, if its pieces do not fit)."""
        pending = self._pending[key]
        pieces = list(pending.pieces.values())
        try:
            data, affine = assemble(pieces)
        except InputError as exc:
            log.warning("volume %d cannot be assembled: %s", key - self.start_key, exc)
            self._report_missing(key, pending)
            return []
        del self._pending[key]
        if self.n_slices is None and pieces[0].slice_key is not None:
            self.n_slices = len(pieces)
        self.next_key = key + 1
        self._released += 1
        first = pieces[0]
        return [AssembledVolume(key=key, data=data, affine=affine, tr=self.tr or first.tr,
                                t_file_complete=pending.t_complete, n_files=pending.n_files,
                                kind=first.kind, series_number=first.series_number)]

    def _report_missing(self, key: int, pending: _Pending | None) -> None:
        index = key - self.start_key
        have = 0 if pending is None else len(pending.pieces)
        log.warning("volume %d (scanner number %d) is missing%s; going on without it",
                    index, key, f" ({have} of {self.n_slices or '?'} slices came)" if have
                    else "")
        self.missing.append(index)
        self._pending.pop(key, None)
        self.next_key = key + 1


# --------------------------------------------------------------------------- watching
@dataclass
class _FileState:
    size: int = -1
    mtime_ns: int = -1
    t_changed: float = 0.0
    closed: bool = False
    attempted: tuple[int, int] | None = None  # (size, mtime) of the last failed read


class FolderWatcher:
    """Files of one folder that are ready to be read, from file-system events.

    Parameters
    ----------
    folder : Path
        The export folder (not its subfolders).
    poll : float or None
        Poll the folder every ``poll`` seconds (for network shares, where inotify sees
        nothing); ``None`` uses the operating system's events.
    """

    def __init__(self, folder: str | Path, poll: float | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"--watch needs a folder. {self.folder} is not one.")
        self.poll = poll
        self._events: queue.Queue[tuple[str, bool]] = queue.Queue()
        self._states: dict[str, _FileState] = {}
        self._done: set[str] = set()
        self._observer = None

    def start(self) -> FolderWatcher:
        """Start watching; files already in the folder count as just created."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        events = self._events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's event type
                if event.is_directory or event.event_type in ("deleted", "opened",
                                                              "closed_no_write"):
                    return
                path = getattr(event, "dest_path", "") or event.src_path
                events.put((os.fsdecode(path), event.event_type == "closed"))

        observer = PollingObserver(timeout=self.poll) if self.poll else Observer()
        observer.schedule(Handler(), str(self.folder), recursive=False)
        observer.start()
        self._observer = observer
        # Files already there: complete if they have not changed for a while (as if closed).
        now = time.time()
        for entry in sorted(os.scandir(self.folder), key=lambda e: _natural_key(e.name)):
            if entry.is_file():
                old = now - entry.stat().st_mtime > SETTLE_SECONDS
                self._events.put((entry.path, old))
        return self

    def stop(self) -> None:
        """Stop the observer thread."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5.0)
            self._observer = None

    def ready(self, timeout: float) -> list[tuple[Path, float]]:
        """Files ready to read now, with the time they were found ready (Unix seconds).

        Waits up to ``timeout`` seconds for an event when nothing is pending.
        """
        wait = timeout if not self._states else min(timeout, RECHECK_SECONDS)
        try:
            first = self._events.get(timeout=max(wait, 0.0))
        except queue.Empty:
            first = None
        touched = [] if first is None else [first]
        while True:
            try:
                touched.append(self._events.get_nowait())
            except queue.Empty:
                break
        for path, closed in touched:
            if path in self._done or _hidden(path):
                continue
            state = self._states.setdefault(path, _FileState())
            state.closed = state.closed or closed
            # A file read together with a sibling (a PAR with its REC) is tried again when
            # the sibling changes.
            stem = os.path.splitext(path)[0]
            for other, sibling in self._states.items():
                if other != path and os.path.splitext(other)[0] == stem:
                    sibling.attempted = None
        now_wall, now = time.time(), time.monotonic()
        ready = []
        for path, state in list(self._states.items()):
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # deleted or renamed away before it was read
                del self._states[path]
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            if signature != (state.size, state.mtime_ns):
                state.size, state.mtime_ns, state.t_changed = *signature, now
            if signature == state.attempted:
                continue  # read before at exactly this size and time: wait for a change
            settled = now - state.t_changed >= SETTLE_SECONDS
            if stat.st_size > 0 and (state.closed or settled):
                ready.append((Path(path), now_wall))
        return sorted(ready, key=lambda item: _natural_key(item[0].name))

    def retry(self, path: Path) -> None:
        """The file could not be used as it is: read it again once it changes."""
        state = self._states.get(str(path))
        if state is not None:
            state.closed = False
            state.attempted = (state.size, state.mtime_ns)

    def finish(self, path: Path) -> None:
        """The file was read: ignore its further events."""
        self._states.pop(str(path), None)
        self._done.add(str(path))

    @property
    def n_waiting(self) -> int:
        """Files seen but not yet read."""
        return len(self._states)


def _hidden(path: str) -> bool:
    return os.path.basename(path).startswith(".")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------- the loop
@dataclass
class WatchReport:
    """What a watched run did."""

    n_sent: int = 0
    n_files: int = 0
    n_skipped: int = 0  # files not used: foreign, other series, repeats
    missing: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def watch_and_send(folder: str | Path, send: Callable[[Volume], object], *,
                   poll: float | None = None, file_format: str | None = None,
                   n_slices: int | None = None, series_number: int | None = None,
                   n_volumes: int | None = None, idle_timeout: float | None = 60.0,
                   missing_after: float | None = None, tr: float | None = None,
                   stop: threading.Event | None = None,
                   progress: object | None = None) -> WatchReport:
    """Watch an export folder and send each volume once, in acquisition order.

    Parameters
    ----------
    folder : str or Path
        The folder the scanner writes into.
    send : callable
        Called with each :class:`Volume` (e.g. ``ScannerBridge.send_volume``).
    poll : float or None
        Poll every ``poll`` seconds instead of using inotify.
    file_format : str or None
        Force the readers' interpretation of the files (``--format``).
    n_slices, series_number, missing_after
        See :class:`SeriesAssembler`.
    n_volumes : int or None
        Stop after this many volumes (sent or reported missing).
    idle_timeout : float or None
        Stop when no file has arrived for this many seconds after the first volume.
    tr : float or None
        TR (s) for files that do not state one.
    stop : threading.Event or None
        Set it to end the run from another thread (e.g. on SIGINT).
    progress : tqdm-like or None
        Updated once per volume sent.

    Returns
    -------
    WatchReport
    """
    watcher = FolderWatcher(folder, poll=poll).start()
    assembler = SeriesAssembler(n_slices=n_slices, missing_after=missing_after,
                                series_number=series_number, first_hold=FIRST_HOLD_SECONDS)
    report = WatchReport()
    last_activity = time.monotonic()
    tr_default: list[float | None] = [None]  # set (and warned about) once when files lack a TR
    skipped: dict[str, str] = {}  # unreadable or foreign files (watched, should they change)
    rejected: dict[str, str] = {}  # readable files of another series, repeats, late volumes

    def deliver(volumes: list[AssembledVolume]) -> None:
        for item in volumes:
            index = item.key - assembler.start_key
            repetition = item.tr or tr or tr_default[0]
            if repetition is None:
                log.warning("the files state no TR; taking 2 s (pass --tr)")
                tr_default[0] = repetition = 2.0
            volume = Volume(
                data=np.ascontiguousarray(item.data), affine=item.affine, index=index,
                tr=repetition, t_file_complete=item.t_file_complete,
                meta={"kind": item.kind, "volume_key": item.key, "n_files": item.n_files,
                      **({"series_number": item.series_number}
                         if item.series_number is not None else {})},
            )
            send(volume)
            report.n_sent += 1
            report.latencies_ms.append((time.time() - item.t_file_complete) * 1000.0)
            if progress is not None:
                progress.update(1)

    def done() -> bool:
        if stop is not None and stop.is_set():
            return True
        if n_volumes is not None and report.n_sent + len(assembler.missing) >= n_volumes:
            return True
        return (idle_timeout is not None and report.n_sent > 0
                and time.monotonic() - last_activity > idle_timeout)

    try:
        while not done():
            for path, t_ready in watcher.ready(timeout=0.2):
                try:
                    pieces = read_file(path, file_format)
                except IncompleteFileError:
                    watcher.retry(path)  # still being written
                    continue
                except InputError as exc:  # foreign or unreadable as it stands
                    watcher.retry(path)  # (read again should it change)
                    if skipped.get(path.name) != str(exc):
                        skipped[path.name] = str(exc)
                        log.info("skipped %s: %s", path.name, exc)
                    continue
                watcher.finish(path)
                skipped.pop(path.name, None)
                report.n_files += 1
                last_activity = time.monotonic()
                for piece in pieces:
                    try:
                        assembler.add(piece, t_ready)
                    except ForeignFileError as exc:
                        rejected[path.name] = str(exc)
                        log.info("skipped %s: %s", path.name, exc)
            # After the whole batch: files found together (e.g. already in the folder when
            # the watch began) all count before the first volume goes.
            deliver(assembler.pop_ready(time.time()))
        deliver(assembler.flush())
    finally:
        watcher.stop()
    report.n_skipped = len(skipped) + len(rejected)
    report.missing = list(assembler.missing)
    incomplete = watcher.n_waiting - len(skipped)
    if incomplete > 0:
        log.warning("%d files never became complete", incomplete)
    return report
