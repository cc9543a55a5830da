"""Shared helpers of the reader tests: the real series, reading a folder, comparing with dcm2niix.

The real series come from two places: small subsets checked in under tests/data (always run)
and the shared real-data collection next to the repository (skipped when it is absent).
Each series' folder is read file by file, as a live export folder would be, its pieces are
grouped by volume and assembled, and the volumes are compared with dcm2niix's conversion of
the same files: same number of volumes, same voxel values (exact for integers, rtol 1e-5 for
floats), same world geometry (affines within 1e-3 mm after ``nibabel.as_closest_canonical``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtserver.errors import ForeignFileError
from rtserver.scanner.assembly import assemble
from rtserver.scanner.readers import Piece, read_file

from .conftest import DATA, SHARED_DATA, SIEMENS_MOSAIC, SIEMENS_NIFTI

SHARED_DICOM = SHARED_DATA / "dicom"
SHARED_NIFTI = SHARED_DATA / "nifti"
REFERENCES = DATA / "dcm2niix_references"
PHILIPS_SLICES = DATA / "philips_magdeburg_phantom_3vol"
SIEMENS_ENHANCED = DATA / "siemens_xa10_enhanced_phantom_3vol"
GE_SLICES = DATA / "ge_mr750_deliberate_motion_2vol"
PARREC_DUMPS = SHARED_DICOM / "pyneal_3vendor_3vol" / "Philips_env"
DCM2NIIX = shutil.which("dcm2niix")

needs_shared = pytest.mark.skipif(not SHARED_DICOM.is_dir(),
                                  reason=f"needs the shared real-data collection at {SHARED_DATA}")


def needs_dcm2niix(what: str) -> None:
    if DCM2NIIX is None:
        pytest.skip(f"dcm2niix is not on PATH: cannot make the reference conversion of {what}")


@dataclass(frozen=True)
class Series:
    """One real series: its export folder, dcm2niix's conversion (None: convert in the test)."""

    folder: Path
    reference: Path | None
    kind: str
    n_volumes: int
    tr: float | None


LOCAL_SERIES = {
    "local-siemens-mosaic-skyra": Series(SIEMENS_MOSAIC, SIEMENS_NIFTI, "siemens-mosaic", 10, 1.5),
    "local-siemens-xa10-enhanced": Series(
        SIEMENS_ENHANCED, REFERENCES / "siemens_xa10_enhanced_phantom_3vol.nii.gz", "siemens-enhanced", 3,
        0.5),
    "local-philips-magdeburg-slices": Series(
        PHILIPS_SLICES, REFERENCES / "philips_magdeburg_phantom_3vol.nii.gz", "philips-slice", 3, 2.0),
    "local-ge-mr750-motion-slices": Series(
        GE_SLICES, REFERENCES / "ge_mr750_deliberate_motion_2vol.nii.gz", "ge-slice", 2, 5.0),
}
SHARED_SERIES = {
    "siemens-mosaic-skyra": Series(
        SHARED_DICOM / "siemens_mosaic_skyra_10vol",
        SHARED_NIFTI / "siemens_skyra_rtcloud_facematching_10vol.nii.gz", "siemens-mosaic", 10, 1.5),
    "siemens-xa30-enhanced": Series(
        SHARED_DICOM / "siemens_xa30_enhanced_20vol",
        SHARED_NIFTI / "siemens_xa30_prismafit_bold_20vol.nii.gz", "siemens-enhanced", 20, 1.0),
    "philips-achieva-studyforrest-slices": Series(
        SHARED_DICOM / "philips_achieva_studyforrest_18vol",
        SHARED_NIFTI / "philips_achieva_studyforrest_18vol.nii.gz", "philips-slice", 18, 2.0),
    "ge-mr750-deliberate-motion-slices": Series(
        SHARED_DICOM / "ge_mr750_deliberate_motion_10vol",
        SHARED_NIFTI / "ge_mr750_dcmqa_nih_deliberate_motion_10vol.nii.gz", "ge-slice", 10, 5.0),
    "pyneal-ge-slices": Series(
        SHARED_DICOM / "pyneal_3vendor_3vol" / "GE_env",
        SHARED_NIFTI / "ge_mr750_pyneal_3vol.nii.gz", "ge-slice", 3, 1.0),
    "pyneal-siemens-mosaic": Series(
        SHARED_DICOM / "pyneal_3vendor_3vol" / "Siemens_env",
        SHARED_NIFTI / "siemens_prismafit_pyneal_3vol.nii.gz", "siemens-mosaic", 3, 1.0),
    "phantom-ge-triggertime-slices": Series(
        SHARED_DICOM / "phantom" / "ge_classic_phantom_triggertime_16vol",
        SHARED_NIFTI / "phantom_ge_triggertime_16vol.nii.gz", "ge-slice", 16, 1.5),
    "phantom-siemens-xa10-enhanced": Series(
        SHARED_DICOM / "phantom" / "siemens_xa10_enhanced_sms_phantom_18vol",
        SHARED_NIFTI / "phantom_siemens_xa10_sms_18vol.nii.gz", "siemens-enhanced", 18, 0.5),
    "phantom-philips-magdeburg-slices": Series(
        SHARED_DICOM / "phantom" / "philips_classic_magdeburg_phantom_3vol", None, "philips-slice", 3, 2.0),
}


# --------------------------------------------------------------------------- helpers
def read_folder(folder: Path) -> tuple[list[Piece], list[str]]:
    """Every file under ``folder``, read one by one as an export folder watcher would."""
    pieces, skipped = [], []
    for path in sorted(path for path in folder.rglob("*") if path.is_file()):
        try:
            pieces.extend(read_file(path))
        except ForeignFileError:
            skipped.append(path.name)
    return pieces, skipped


def volumes_of(pieces: list[Piece]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pieces grouped by volume_key and assembled, in volume order.

    A whole volume seen twice (a real-time export's byte copy, ``_000000`` = ``_000010``) is
    kept once.
    """
    groups: dict[int, list[Piece]] = defaultdict(list)
    for piece in pieces:
        group = groups[piece.volume_key]
        if piece.slice_key is None and group:
            continue
        group.append(piece)
    return [(key, *assemble(groups[key])) for key in sorted(groups)]


def canonical(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))


def convert_with_dcm2niix(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([DCM2NIIX, "-z", "n", "-b", "y", "-o", str(out), "-f", "%s_%p", str(folder)],
                          capture_output=True, text=True, timeout=300, check=False)
    converted = sorted(out.glob("*.nii"))
    assert len(converted) == 1, f"dcm2niix made {len(converted)} files:\n{done.stdout}{done.stderr}"
    return converted[0]


def assert_volumes_match(volumes: list[tuple[int, np.ndarray, np.ndarray]], reference_path: Path) -> None:
    reference_image = nib.load(reference_path)
    reference = nib.as_closest_canonical(reference_image)
    expected = reference.get_fdata()
    if expected.ndim == 3:
        expected = expected[..., np.newaxis]
    assert len(volumes) == expected.shape[3]
    keys = [key for key, _, _ in volumes]
    assert np.all(np.diff(keys) == 1), f"volume keys should be consecutive; got {keys}"
    slope, intercept = reference_image.dataobj.slope, reference_image.dataobj.inter
    scaled = slope not in (1.0, None) or intercept not in (0.0, None)
    for index, (key, data, affine) in enumerate(volumes):
        ours = canonical(data, affine)
        values = np.asarray(ours.dataobj)
        if scaled:
            assert data.dtype == np.float32, f"volume {key}: scaled values should be float32"
            np.testing.assert_allclose(values, expected[..., index], rtol=1e-5, atol=0,
                                       err_msg=f"volume {key}")
        else:
            assert np.issubdtype(data.dtype, np.integer), f"volume {key}: unscaled values should be integers"
            assert np.array_equal(values, expected[..., index]), f"volume {key}: voxel values differ"
        np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-3, err_msg=f"volume {key}")


def check_series(series: Series, reference: Path) -> list[Piece]:
    pieces, _ = read_folder(series.folder)
    assert {piece.kind for piece in pieces} == {series.kind}
    assert len({piece.series for piece in pieces}) == 1
    for piece in pieces:
        assert piece.tr == pytest.approx(series.tr, rel=1e-4)
        if piece.slice_key is None and piece.n_slices is not None:
            assert piece.data.shape[2] == piece.n_slices
    volumes = volumes_of(pieces)
    assert len(volumes) == series.n_volumes
    assert_volumes_match(volumes, reference)
    sidecar = reference.with_name(re.sub(r"\.nii(\.gz)?$", ".json", reference.name))
    if sidecar.exists():
        assert series.tr == pytest.approx(json.loads(sidecar.read_text())["RepetitionTime"], rel=1e-4)
    return pieces


def slice_pieces() -> list[Piece]:
    return [read_file(path)[0] for path in sorted(GE_SLICES.glob("*.dcm"))[:15]]
