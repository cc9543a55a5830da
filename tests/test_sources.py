"""Reading scanner exports: compared with dcm2niix's conversion of the same series."""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest

from rtserver.errors import InputError
from rtserver.scanner.sources import open_source

from .conftest import SIEMENS_MOSAIC, SIEMENS_NIFTI, TRUNCATED_DICOM


def canonical(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))


def test_siemens_mosaic_matches_dcm2niix():
    source = open_source(SIEMENS_MOSAIC)
    reference = nib.as_closest_canonical(nib.load(SIEMENS_NIFTI))
    expected = np.asarray(reference.dataobj)
    assert source.kind == "siemens-mosaic"
    assert source.tr == pytest.approx(1.5)
    assert source.n_volumes == expected.shape[3] == 10
    for volume in source:
        ours = canonical(volume.data, volume.affine)
        assert np.array_equal(np.asarray(ours.dataobj), expected[..., volume.index])
        np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3)


def test_duplicate_acquisition_is_skipped_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING):
        source = open_source(SIEMENS_MOSAIC)
    assert source.n_volumes == 10
    assert "skipped 001_000013_000010.dcm: a repeat of volume 10" in caplog.text


def test_truncated_dicom_is_skipped_not_sent(tmp_path, caplog):
    folder = tmp_path / "export"
    folder.mkdir()
    for path in sorted(SIEMENS_MOSAIC.glob("001_000013_00000[1-4].dcm")):
        shutil.copy(path, folder)
    shutil.copy(TRUNCATED_DICOM, folder / "001_000013_000005.dcm")
    with caplog.at_level(logging.WARNING):
        source = open_source(folder)
    assert source.n_volumes == 4
    assert "skipped 001_000013_000005.dcm: incomplete" in caplog.text
    assert [v.meta["volume_key"] for v in source] == [1, 2, 3, 4]


def test_4d_nifti_source_gives_the_stored_volumes():
    source = open_source(SIEMENS_NIFTI)
    img = nib.load(SIEMENS_NIFTI)
    stored = np.asanyarray(img.dataobj)
    assert (source.kind, source.n_volumes, source.tr) == ("nifti4d", 10, 1.5)
    for volume in source:
        assert volume.data.dtype == stored.dtype
        assert np.array_equal(volume.data, stored[..., volume.index])
        np.testing.assert_allclose(volume.affine, img.affine)


def test_folder_of_3d_nifti_in_natural_order(tmp_path):
    img = nib.load(SIEMENS_NIFTI)
    stored = np.asanyarray(img.dataobj)
    for index in (0, 1, 2, 10):
        data = stored[..., index % 10]
        nib.save(nib.Nifti1Image(data, img.affine), tmp_path / f"vol{index}.nii")
    (tmp_path / "series.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    source = open_source(tmp_path)
    volumes = list(source)
    assert (source.kind, source.tr) == ("nifti3d-folder", 2.0)
    assert [v.meta["file"] for v in volumes] == ["vol0.nii", "vol1.nii", "vol2.nii", "vol10.nii"]
    assert np.array_equal(volumes[3].data, stored[..., 0])


def test_folder_of_3d_nifti_without_tr_says_so(tmp_path):
    img = nib.load(SIEMENS_NIFTI)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine), tmp_path / "a.nii")
    with pytest.raises(InputError, match="states no TR"):
        open_source(tmp_path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "holds no readable fMRI image"),
        (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "should be a NIfTI file"),
    ],
)
def test_bad_sources_raise_clear_errors(tmp_path, make, match):
    with pytest.raises(InputError, match=match):
        open_source(make(tmp_path))
