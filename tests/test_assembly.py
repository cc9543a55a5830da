"""Pieces in, whole volumes out.

``assemble`` is checked on real GE slices: sorted, and refused when they are not one volume.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rtserver.errors import InputError
from rtserver.scanner.assembly import assemble
from rtserver.scanner.readers import Piece, read_file

from .conftest import SIEMENS_MOSAIC
from .reader_helpers import slice_pieces


# --------------------------------------------------------------------------- assemble
def test_assemble_sorts_slices_by_position():
    pieces = slice_pieces()
    data, affine = assemble(pieces[::-1])
    assert data.shape == (64, 64, 15)
    keys = sorted(piece.slice_key for piece in pieces)
    assert np.linalg.norm(affine[:3, 2]) == pytest.approx(keys[1] - keys[0])
    lowest = min(pieces, key=lambda piece: piece.slice_key)
    assert np.array_equal(data[..., 0], lowest.data)


def replaced(piece: Piece, **changes) -> Piece:
    return dataclasses.replace(piece, **changes)


def test_assemble_refuses_what_is_not_one_volume():
    pieces = slice_pieces()
    with pytest.raises(InputError, match="should have 15 slices"):
        assemble(pieces[:14])
    with pytest.raises(InputError, match="lie at one position"):
        assemble([*pieces[:14], replaced(pieces[14], slice_key=pieces[0].slice_key)])
    moved, shifted, rotated = (piece.affine.copy() for piece in (pieces[7], pieces[7], pieces[3]))
    moved[:3, 3] += 1.0 * moved[:3, 2]
    shifted[:3, 3] += shifted[:3, 0]
    rotated[:3, :2] = rotated[:3, 1::-1]
    irregular = [*pieces[:7], replaced(pieces[7], slice_key=pieces[7].slice_key + 1.0, affine=moved),
                 *pieces[8:]]
    with pytest.raises(InputError, match="evenly spaced"):
        assemble(irregular)
    with pytest.raises(InputError, match="shifted in-plane"):
        assemble([*pieces[:7], replaced(pieces[7], affine=shifted), *pieces[8:]])
    with pytest.raises(InputError, match="one shape"):
        assemble([*pieces[:14], replaced(pieces[14], data=pieces[14].data[:32])])
    with pytest.raises(InputError, match="one orientation"):
        assemble([*pieces[:3], replaced(pieces[3], affine=rotated), *pieces[4:]])
    with pytest.raises(InputError, match="pieces of one volume"):
        assemble([*pieces[:14], replaced(pieces[14], volume_key=2)])
    whole = read_file(SIEMENS_MOSAIC / "001_000013_000001.dcm")[0]
    with pytest.raises(InputError, match="one whole-volume piece"):
        assemble([whole, whole])
    with pytest.raises(InputError, match="at least one piece"):
        assemble([])
