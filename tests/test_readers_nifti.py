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
