"""The series assembler: pieces in, whole volumes out, in acquisition order.

``assemble`` is checked on real GE slices (sorted, refused when they are not one volume);
``SeriesAssembler`` on small synthetic pieces (order, missing volumes, slice counts, other
series and repeats) and on the TR it gives its volumes.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from rtserver.errors import ForeignFileError, InputError
from rtserver.scanner.assembly import SeriesAssembler, assemble
from rtserver.scanner.readers import Piece, read_file
from rtserver.volume import Volume

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


# --------------------------------------------------------------------------- SeriesAssembler
def piece(key: int, slice_key: float | None = None, series: str = "1.2.3",
          n_slices: int | None = None, value: float = 0.0, tr: float | None = 2.0) -> Piece:
    shape = (4, 4) if slice_key is not None else (4, 4, 3)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    if slice_key is not None:  # a slice: third column is the unit normal, origin its position
        affine[2, 2], affine[2, 3] = 1.0, slice_key
    return Piece(kind="dicom-slice" if slice_key is not None else "siemens-mosaic",
                 series=series, series_number=5, volume_key=key, slice_key=slice_key,
                 n_slices=n_slices, data=np.full(shape, value, np.float32), affine=affine,
                 tr=tr)


def test_assembler_releases_volumes_in_order_and_reports_a_missing_one():
    assembler = SeriesAssembler(missing_after=1.0)
    assembler.add(piece(1), 0.0)
    assert [v.meta["volume_key"] for v in assembler.pop_ready(0.0)] == [1]
    assembler.add(piece(3), 0.1)  # volume 2 has not come
    assembler.add(piece(4), 0.2)
    assert assembler.pop_ready(0.5) == []  # not yet: 2 may still come
    released = assembler.pop_ready(1.6)  # volume 3 whole for > 1 s: 2 is missing
    assert [v.meta["volume_key"] for v in released] == [3, 4]
    assert assembler.missing == [1]  # 0-based index of scanner volume 2
    with pytest.raises(ForeignFileError, match="after it was sent or reported missing"):
        assembler.add(piece(2), 1.7)


def test_assembler_waits_for_all_slices_and_sorts_them():
    assembler = SeriesAssembler(n_slices=3)
    for position in (6.0, 0.0):  # out of order, one slice short
        assembler.add(piece(1, position, value=position), 0.0)
    assert assembler.pop_ready(0.0) == []
    assembler.add(piece(1, 3.0, value=3.0), 0.5)
    (volume,) = assembler.pop_ready(0.5)
    assert volume.meta["n_files"] == 3 and volume.t_file_complete == 0.5
    assert [volume.data[0, 0, k] for k in range(3)] == [0.0, 3.0, 6.0]


def test_assembler_learns_the_slice_count_when_files_do_not_state_it():
    assembler = SeriesAssembler()
    for position in (0.0, 3.0):
        assembler.add(piece(1, position), 0.0)
    assert assembler.pop_ready(0.0) == []  # could still get more slices
    assembler.add(piece(2, 0.0), 0.1)  # the next volume started: volume 1 is whole
    assert [v.meta["volume_key"] for v in assembler.pop_ready(0.1)] == [1]
    assert assembler.n_slices == 2
    assembler.add(piece(2, 3.0), 0.2)
    assert [v.meta["volume_key"] for v in assembler.pop_ready(0.2)] == [2]  # no wait once learned


def test_assembler_holds_the_first_volume_for_an_earlier_one():
    assembler = SeriesAssembler(first_hold=0.25)
    assembler.add(piece(2), 0.0)
    assert assembler.pop_ready(0.0) == []
    assembler.add(piece(1), 0.1)  # watching began as volume 1 was being written
    assert [v.meta["volume_key"] for v in assembler.pop_ready(0.2)] == []
    assert [v.meta["volume_key"] for v in assembler.pop_ready(0.5)] == [1, 2]


def test_assembler_reports_a_volume_whose_slices_do_not_fit_and_goes_on():
    assembler = SeriesAssembler(n_slices=3)
    for position in (0.0, 3.0, 9.0):  # a gap: slices not evenly spaced
        assembler.add(piece(1, position), 0.0)
    for position in (0.0, 3.0, 6.0):
        assembler.add(piece(2, position), 0.0)
    assert [v.meta["volume_key"] for v in assembler.pop_ready(0.0)] == [2]
    assert assembler.missing == [0]


def test_assembler_refuses_other_series_and_repeats():
    assembler = SeriesAssembler()
    assembler.add(piece(1), 0.0)
    with pytest.raises(ForeignFileError, match="another series"):
        assembler.add(piece(2, series="9.9.9"), 0.1)
    with pytest.raises(ForeignFileError, match="a repeat of volume 1"):
        assembler.add(piece(1), 0.1)
    only = SeriesAssembler(series_number=7)
    with pytest.raises(ForeignFileError, match="not the series 7"):
        only.add(piece(1), 0.0)


def test_assembler_flush_releases_whole_volumes_and_reports_the_rest():
    assembler = SeriesAssembler(n_slices=2)
    assembler.add(piece(1, 0.0), 0.0)
    assembler.add(piece(1, 3.0), 0.0)
    assembler.add(piece(2, 0.0), 0.0)  # the run ends before its second slice
    assert [v.meta["volume_key"] for v in assembler.flush()] == [1]
    assert assembler.missing == [1]


def test_assembler_emits_volumes_indexed_from_the_first_with_their_metadata():
    assembler = SeriesAssembler()
    assembler.add(piece(7, value=1.0), 10.0)
    assembler.add(piece(8, value=2.0), None)  # no time known (a replay)
    first, second = assembler.flush()
    assert isinstance(first, Volume) and isinstance(second, Volume)
    assert (first.index, second.index) == (0, 1)
    assert (first.tr, second.tr) == (2.0, 2.0)
    assert (first.t_file_complete, second.t_file_complete) == (10.0, None)
    assert first.meta == {"kind": "siemens-mosaic", "volume_key": 7, "n_files": 1, "series_number": 5}
    assert first.data.flags.c_contiguous and float(second.data[0, 0, 0]) == 2.0


def test_assembler_tr_given_beats_the_files_and_a_default_comes_last(caplog):
    given = SeriesAssembler(tr=0.8)
    given.add(piece(1, tr=2.0), 0.0)
    assert [v.tr for v in given.flush()] == [0.8]
    assert given.tr == 0.8 and given.stated_tr == 2.0
    defaulted = SeriesAssembler(default_tr=2.5)
    for key in (1, 2):
        defaulted.add(piece(key, tr=None), 0.0)
    with caplog.at_level(logging.WARNING):
        assert [v.tr for v in defaulted.flush()] == [2.5, 2.5]
    assert caplog.text.count("the files state no TR, and none was given; taking 2.5 s") == 1
    unknown = SeriesAssembler()
    unknown.add(piece(1, tr=None), 0.0)
    with pytest.raises(InputError, match="state no repetition time"):
        unknown.flush()
