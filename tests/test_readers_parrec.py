"""Philips PAR/REC real-time dumps, read by rtserver.scanner.readers and compared with dcm2niix.

dcm2niix refuses the dumps as written, so each is compared with dcm2niix's conversion of a
relabelled copy (only index columns change); values and geometry are also checked against
the PAR's own image lines. Needs the shared real-data collection (skipped without it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtserver.errors import ForeignFileError, IncompleteFileError
from rtserver.scanner.readers import read_file

from .reader_helpers import DCM2NIIX, PARREC_DUMPS, canonical, needs_dcm2niix, needs_shared, read_folder


# --------------------------------------------------------------------------- PAR/REC
def dcm2niix_readable_par(source: Path, target: Path) -> None:
    """Copy a Philips real-time dump so that dcm2niix converts its magnitude images.

    dcm2niix 1.0.20220720 refuses the dumps as written ("maxNumberOfMixes > 1", unknown image
    types 16 and 17, cardiac phase 0). The copy keeps the type-16 image lines and their REC
    images, in order, and relabels only index columns: type 16 -> 0 (magnitude), cardiac
    phase, diffusion value, gradient and label numbers 0 -> 1, mixes 2 -> 1. Geometry and
    scaling columns are unchanged.
    """
    lines, images = [], []
    rec = source.with_suffix(".rec").read_bytes()
    for line in source.read_text(encoding="latin-1").splitlines(keepends=True):
        fields = line.split()
        if "Max. number of mixes" in line:
            line = re.sub(r":\s*2\s*$", ":   1\n", line)
        elif len(fields) > 40 and fields[0].isdigit():
            if fields[4] != "16":
                continue
            size = int(fields[9]) * int(fields[10]) * int(fields[7]) // 8
            images.append(rec[int(fields[6]) * size:(int(fields[6]) + 1) * size])
            fields[3] = fields[41] = fields[42] = fields[48] = "1"
            fields[4], fields[6] = "0", str(len(images) - 1)
            line = " ".join(fields) + "\n"
        lines.append(line)
    target.with_suffix(".par").write_text("".join(lines), encoding="latin-1")
    target.with_suffix(".rec").write_bytes(b"".join(images))


def par_image_lines(path: Path, image_type: str) -> np.ndarray:
    rows = [line.split() for line in path.read_text(encoding="latin-1").splitlines()]
    return np.array([[float(value) for value in row] for row in rows
                     if len(row) > 40 and row[0].isdigit() and row[4] == image_type])


@needs_shared
def test_parrec_dumps_match_dcm2niix_of_relabelled_copies(tmp_path):
    needs_dcm2niix("the Philips PAR/REC dumps")
    pars = sorted(PARREC_DUMPS.rglob("*.par"))
    pieces, skipped = read_folder(PARREC_DUMPS)
    assert sorted(skipped) == sorted([path.with_suffix(".rec").name for path in pars]
                                     + ["dummyMask.nii.gz", "scannerConfig.yaml"])
    assert {piece.kind for piece in pieces} == {"parrec"}
    assert [piece.volume_key for piece in pieces] == [1, 2, 3, 4]  # "Acquisition nr" of each dump
    assert all(piece.tr is None for piece in pieces)  # the dumps state a placeholder TR of 1 ms
    for par, piece in zip(pars, pieces, strict=True):
        copy = tmp_path / "relabelled" / par.stem
        copy.parent.mkdir(exist_ok=True)
        dcm2niix_readable_par(par, copy)
        out = tmp_path / f"dcm2niix_{par.stem}"
        out.mkdir()
        subprocess.run([DCM2NIIX, "-z", "n", "-b", "n", "-o", str(out), "-f", "vol",
                        str(copy.with_suffix(".par"))], capture_output=True, timeout=120, check=True)
        reference = nib.as_closest_canonical(nib.load(out / "vol.nii"))
        ours = canonical(piece.data, piece.affine)
        assert piece.data.dtype == np.float32
        np.testing.assert_allclose(ours.get_fdata(), reference.get_fdata(), rtol=1e-5, atol=0)
        np.testing.assert_allclose(ours.affine[:3, :2], reference.affine[:3, :2], atol=1e-3)
        normal = ours.affine[:3, 2] / np.linalg.norm(ours.affine[:3, 2])
        reference_normal = reference.affine[:3, 2] / np.linalg.norm(reference.affine[:3, 2])
        assert normal @ reference_normal == pytest.approx(1.0, abs=1e-8)


@needs_shared
def test_parrec_slices_sit_at_the_offcentres_of_their_image_lines():
    """dcm2niix places dumps at the zeroed general off-centre; the image lines say where they are."""
    par = sorted(PARREC_DUMPS.rglob("*.par"))[0]
    piece = read_file(par)[0]
    lines = par_image_lines(par, "16")
    x_size, y_size = piece.data.shape[:2]
    assert np.linalg.norm(piece.affine[:3, 2]) == pytest.approx(lines[0, 22] + lines[0, 23])  # thick + gap
    for line in lines:
        ap, fh, rl = line[19:22]
        centre = piece.affine @ [(x_size - 1) / 2, (y_size - 1) / 2, line[0] - 1, 1]
        # Philips (ap, fh, rl) are LPH: RAS is (-rl, -ap, fh). The dumps round them to 0.1 mm.
        np.testing.assert_allclose(centre[:3], [-rl, -ap, fh], atol=0.1)


@needs_shared
def test_parrec_values_are_display_values_of_the_magnitude_images():
    par = sorted(PARREC_DUMPS.rglob("*.par"))[0]
    piece = read_file(par)[0]
    lines = par_image_lines(par, "16")
    rec = np.frombuffer(par.with_suffix(".rec").read_bytes(), dtype="<u2")
    x_size, y_size = piece.data.shape[:2]
    for line in lines:
        index, intercept, slope = int(line[6]), line[11], line[12]
        stored = rec[index * x_size * y_size:(index + 1) * x_size * y_size].reshape(y_size, x_size).T
        np.testing.assert_allclose(piece.data[:, :, int(line[0]) - 1], stored * slope + intercept, rtol=1e-6)


@needs_shared
def test_parrec_with_short_or_missing_rec_is_incomplete(tmp_path):
    par = sorted(PARREC_DUMPS.rglob("*.par"))[0]
    copy = tmp_path / par.name
    shutil.copy(par, copy)
    with pytest.raises(IncompleteFileError, match="no REC file"):
        read_file(copy)
    rec = par.with_suffix(".rec").read_bytes()
    copy.with_suffix(".rec").write_bytes(rec[:len(rec) - 100])
    with pytest.raises(IncompleteFileError, match="short of what its PAR describes"):
        read_file(copy)
    copy.with_suffix(".rec").write_bytes(rec)
    assert len(read_file(copy)) == 1
    copy.write_bytes(par.read_bytes()[:5000])
    with pytest.raises(IncompleteFileError, match="END OF DATA DESCRIPTION"):
        read_file(copy)


@needs_shared
def test_rec_alone_and_mask_are_foreign():
    rec = sorted(PARREC_DUMPS.rglob("*.rec"))[0]
    with pytest.raises(ForeignFileError, match="read through the PAR file"):
        read_file(rec)
    with pytest.raises(ForeignFileError, match="a mask"):
        read_file(PARREC_DUMPS / "dummyMask.nii.gz")
