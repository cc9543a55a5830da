"""NIfTI files of a watched folder, read by rtserver.scanner.readers.

4D runs, numbered 3D volumes, files cut short, and gzip streams that hold no NIfTI.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from rtserver.errors import ForeignFileError, IncompleteFileError
from rtserver.scanner.readers import read_file

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
