"""NIfTI files, read by rtserver.scanner.readers: as a watched folder reads them, and as a replay does.

A watched folder reads each file with ``read_file`` (its pieces then go through the series
assembler); a replay opens it with ``open_source``. Both use the one NIfTI reader
(rtserver.scanner.readers.nifti), so the same file gives the same TR and the same voxel
values either way: checked here for files whose TR is in msec, usec or sec, stated in the
header or in a JSON sidecar, and whose values are scaled (scl_slope, scl_inter) or not.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.assembly import SeriesAssembler
from rtserver.scanner.readers import nifti_tr, read_file
from rtserver.scanner.sources import open_source
from rtserver.scanner.watch import watch_and_send

from .conftest import SIEMENS_NIFTI


# --------------------------------------------------------------------------- NIfTI
def test_4d_nifti_gives_one_piece_per_volume():
    image = nib.load(SIEMENS_NIFTI)
    pieces = read_file(SIEMENS_NIFTI)
    assert [piece.volume_key for piece in pieces] == list(range(10))
    assert {piece.kind for piece in pieces} == {"nifti"}
    expected = np.asarray(image.dataobj)
    for piece in pieces:
        assert piece.data.dtype == expected.dtype
        assert np.array_equal(piece.data, expected[..., piece.volume_key])
        np.testing.assert_allclose(piece.affine, image.affine)
        assert piece.tr == pytest.approx(1.5)


def test_3d_nifti_files_are_keyed_by_the_number_in_their_name(tmp_path):
    image = nib.load(SIEMENS_NIFTI)
    volume = nib.Nifti1Image(np.asarray(image.dataobj)[..., 3], image.affine)
    volume.header.set_slope_inter(2.0, 1.0)
    nib.save(volume, tmp_path / "run1_vol0007.nii.gz")
    (tmp_path / "run1_vol0007.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    piece, = read_file(tmp_path / "run1_vol0007.nii.gz")
    assert piece.volume_key == 7
    assert piece.tr == 1.5
    assert piece.data.dtype == np.float32
    np.testing.assert_allclose(piece.data, np.asarray(image.dataobj)[..., 3] * 2.0 + 1.0)
    other, = read_file(tmp_path / "run1_vol0007.nii.gz")
    assert other.series == piece.series and "run1" not in piece.series


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_cut_short_is_incomplete(suffix, tmp_path):
    whole = tmp_path / f"whole{suffix}"
    nib.save(nib.load(SIEMENS_NIFTI), whole)
    data = whole.read_bytes()
    for length in (2, 100, 349, *(int(len(data) * fraction) for fraction in (0.001, 0.5, 0.99))):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[:length])
        with pytest.raises(IncompleteFileError):
            read_file(cut)


def test_gzip_garbage_with_nifti_suffix_is_foreign(tmp_path):
    path = tmp_path / "vol_0001.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 100))
    with pytest.raises(ForeignFileError, match="NIfTI suffix but no NIfTI-1/2 header"):
        read_file(path)


# --------------------------------------------------------------------------- live and replay agree
def write_run(path, *, unit: str, pixdim4: float, scaling: tuple[float, float] | None = None,
              sidecar_tr: float | None = None, n_volumes: int = 4):
    """Four volumes of the real Siemens run, saved with the given time unit, TR and scaling."""
    real = nib.load(SIEMENS_NIFTI)
    stored = np.asanyarray(real.dataobj)[..., :n_volumes]
    image = nib.Nifti1Image(stored, real.affine)
    image.header.set_xyzt_units("mm", unit)
    image.header.set_zooms((*real.header.get_zooms()[:3], pixdim4))
    if scaling is not None:
        image.header.set_slope_inter(*scaling)
    nib.save(image, path)
    if sidecar_tr is not None:
        sidecar = path.with_name(path.name.replace(".nii.gz", ".json").replace(".nii", ".json"))
        sidecar.write_text(json.dumps({"RepetitionTime": sidecar_tr}))
    return stored


RUNS = {  # name: (file options, TR the rule gives)
    "msec": ({"unit": "msec", "pixdim4": 1500.0}, 1.5),
    "usec": ({"unit": "usec", "pixdim4": 1_500_000.0}, 1.5),
    "sec-with-scl-slope": ({"unit": "sec", "pixdim4": 2.0, "scaling": (2.0, -3.0)}, 2.0),
    "usec-with-scl-slope": ({"unit": "usec", "pixdim4": 800_000.0, "scaling": (0.5, 10.0)}, 0.8),
    "sidecar-beats-header": ({"unit": "sec", "pixdim4": 3.0, "sidecar_tr": 0.7}, 0.7),
}


def watched_path_volumes(path):
    """The volumes a watched folder makes of the file: read_file, then the series assembler."""
    assembler = SeriesAssembler(default_tr=2.0)
    for piece in read_file(path):
        assembler.add(piece, 0.0)
    return assembler.flush()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("name", list(RUNS))
def test_replay_and_watch_read_a_4d_file_alike(name, suffix, tmp_path):
    options, tr = RUNS[name]
    path = tmp_path / f"run{suffix}"
    stored = write_run(path, **options)
    scaling = options.get("scaling")
    expected = stored if scaling is None else stored.astype(np.float32) * scaling[0] + scaling[1]
    source = open_source(path)
    replayed = list(source)
    watched = watched_path_volumes(path)
    pieces = read_file(path)
    assert source.tr == pytest.approx(tr, rel=1e-6)
    assert {piece.tr for piece in pieces} == {source.tr}
    assert [volume.tr for volume in watched] == [source.tr] * len(replayed)
    assert len(replayed) == len(watched) == len(pieces) == stored.shape[3]
    for live, replay in zip(watched, replayed, strict=True):
        assert live.index == replay.index
        assert live.data.dtype == replay.data.dtype == expected.dtype
        assert np.array_equal(live.data, replay.data)
        np.testing.assert_allclose(replay.data, expected[..., replay.index], rtol=1e-6)
        np.testing.assert_array_equal(live.affine, replay.affine)


def test_replay_and_a_real_watched_folder_read_a_usec_scaled_file_alike(tmp_path):
    """The whole watch path (file events, reader, assembler) on a file with usec units and a
    scl_slope: the volumes sent equal the replayed ones, with the same TR.
    """
    folder = tmp_path / "export"
    folder.mkdir()
    path = folder / "run.nii.gz"
    options, tr = RUNS["usec-with-scl-slope"]
    write_run(path, **options)
    sent = []
    report = watch_and_send(folder, sent.append, n_volumes=4, idle_timeout=10.0)
    replayed = list(open_source(path))
    assert report.n_sent == len(sent) == len(replayed) == 4
    for live, replay in zip(sent, replayed, strict=True):
        assert (live.index, live.tr) == (replay.index, replay.tr) == (replay.index, pytest.approx(tr))
        assert live.data.dtype == replay.data.dtype == np.float32
        assert np.array_equal(live.data, replay.data)


def test_tr_rule_given_then_sidecar_then_header(tmp_path):
    path = tmp_path / "run.nii"
    write_run(path, unit="msec", pixdim4=1500.0)
    image = nib.load(path)
    assert nifti_tr(image, path) == pytest.approx(1.5)
    assert nifti_tr(image, path, tr=0.9) == 0.9
    assert open_source(path, tr=0.9).tr == 0.9
    (tmp_path / "run.json").write_text(json.dumps({"RepetitionTime": 1.2}))
    assert nifti_tr(image, path) == 1.2
    (tmp_path / "run.json").write_text(json.dumps({"RepetitionTime": True}))  # not a number
    assert nifti_tr(image, path) == pytest.approx(1.5)
    (tmp_path / "run.json").write_text(json.dumps([1.2]))  # not an object
    assert nifti_tr(image, path) == pytest.approx(1.5)
    single = tmp_path / "one.nii"
    write_run(single, unit="sec", pixdim4=3.0, n_volumes=1)
    assert nifti_tr(nib.load(single), single) is None  # pixdim[4] of a single volume says nothing


def test_replay_of_a_run_stating_no_tr_names_the_tr_setting(tmp_path):
    path = tmp_path / "run.nii"
    write_run(path, unit="sec", pixdim4=0.0)
    with pytest.raises(InputError, match="states no TR") as raised:
        open_source(path)
    assert raised.value.setting == "tr"
    assert len(open_source(path, tr=1.0)) == 4


@pytest.mark.parametrize(("suffix", "dtype", "slope", "inter"), [
    (".nii.gz", "<i2", 1.0, 0.0), (".nii", "<i2", 0.37, 12.5), (".nii.gz", ">i2", 0.1, 0.0),
    (".nii.gz", "u1", 2.0, -3.0), (".nii", "<f4", 1.0, 0.0), (".nii.gz", "<f8", 3.3, 1.1)])
def test_streamed_volumes_equal_the_whole_run_read_at_once(tmp_path, suffix, dtype, slope, inter):
    """Replay streams a 4D file volume by volume; the values and types are nibabel's own
    whole-image read with its scaling (``np.asarray(dataobj, dtype)`` / unscaled).
    """
    rng = np.random.default_rng(3)
    data = (rng.random((5, 6, 4, 7)) * 100).astype(np.dtype(dtype))
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.5, 1.0]))
    image.header.set_slope_inter(slope, inter)
    image.header.set_zooms((3.0, 3.0, 3.5, 2.0))
    path = tmp_path / f"run{suffix}"
    nib.save(image, path)
    loaded = nib.load(path)
    identity = slope == 1.0 and inter == 0.0
    expected = (np.asanyarray(loaded.dataobj.get_unscaled()) if identity
                else np.asarray(loaded.dataobj, dtype=np.float32))
    volumes = list(open_source(path))
    assert len(volumes) == 7
    for volume in volumes:
        assert volume.data.dtype == expected.dtype
        assert np.array_equal(volume.data, expected[..., volume.index])


def test_a_long_run_is_streamed_not_held_whole(tmp_path):
    """Iterating a 120-volume .nii.gz holds about one volume, not the run (tracemalloc
    counts numpy's buffers).
    """
    import tracemalloc

    shape = (64, 64, 36)
    one_volume = int(np.prod(shape)) * 2
    rng = np.random.default_rng(0)
    path = tmp_path / "long_bold.nii.gz"
    data = rng.integers(0, 2000, size=(*shape, 120), dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    del data
    source = open_source(path, tr=2.0)
    tracemalloc.start()
    count = 0
    for volume in source:
        count += int(volume.data.shape == shape)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 120
    assert peak < 6 * one_volume, f"peak {peak / 1e6:.1f} MB for {one_volume / 1e6:.2f} MB volumes"
