"""Pieces in, whole volumes out (no I/O).

:func:`assemble` stacks the pieces of one volume (one whole-volume piece, or its slices in
any order) into one voxel array and its affine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtserver.errors import InputError
from rtserver.scanner.readers.pieces import ORIENTATION_TOLERANCE, Piece, regular_spacing

__all__ = ["assemble"]


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
