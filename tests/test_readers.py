"""Every file a real-time export folder can hold, read by rtserver.scanner.readers and compared with dcm2niix.

The real series come from two places: small subsets checked in under tests/data (always run)
and the shared real-data collection next to the repository (skipped when it is absent).
Each series' folder is read file by file, as a live export folder would be, its pieces are
grouped by volume and assembled, and the volumes are compared with dcm2niix's conversion of
the same files: same number of volumes, same voxel values (exact for integers, rtol 1e-5 for
floats), same world geometry (affines within 1e-3 mm after ``nibabel.as_closest_canonical``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import shutil
import subprocess
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RawDataStorage,
    RLELossless,
)

from rtserver.errors import InputError
from rtserver.rigid import LPS_TO_RAS
from rtserver.scanner.readers import (
    FORMATS,
    ForeignFileError,
    IncompleteFileError,
    Piece,
    assemble,
    is_complete_file,
    read_file,
)

from .conftest import DATA, SHARED_DATA, SIEMENS_MOSAIC, SIEMENS_NIFTI, TRUNCATED_DICOM

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


def identifying_values(folder: Path) -> tuple[set[str], set[str]]:
    """PatientName and PatientID values (and the name's parts), and SeriesInstanceUIDs, of the
    DICOM files in a folder."""
    identity, uids = set(), set()
    for path in folder.rglob("*"):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, IsADirectoryError, OSError):
            continue
        uids.add(str(dataset.SeriesInstanceUID))
        for value in (str(dataset.get("PatientName", "")), str(dataset.get("PatientID", ""))):
            identity.add(value)
            identity.update(value.split("^"))
    # Values of one or two characters (PatientID '02') would match any number in a repr.
    return {value for value in identity if len(value.strip()) >= 3}, uids


# --------------------------------------------------------------------------- real series
@pytest.mark.parametrize("name", list(LOCAL_SERIES))
def test_local_series_matches_dcm2niix(name):
    series = LOCAL_SERIES[name]
    check_series(series, series.reference)


@needs_shared
@pytest.mark.parametrize("name", list(SHARED_SERIES))
def test_shared_series_matches_dcm2niix(name, tmp_path):
    series = SHARED_SERIES[name]
    reference = series.reference
    if reference is None:
        needs_dcm2niix(name)
        reference = convert_with_dcm2niix(series.folder, tmp_path / "dcm2niix")
    check_series(series, reference)


@needs_shared
def test_export_folders_skip_readmes_licences_configs_and_masks():
    _, skipped = read_folder(SHARED_DICOM / "pyneal_3vendor_3vol" / "GE_env")
    assert sorted(skipped) == ["dummyMask.nii.gz", "scannerConfig.yaml"]
    _, skipped = read_folder(SHARED_DICOM / "philips_achieva_studyforrest_18vol")
    assert sorted(skipped) == ["LICENSE_PDDL.txt", "README.md", "events.tsv"]


def test_duplicate_mosaic_has_the_volume_key_of_its_original():
    original = read_file(SIEMENS_MOSAIC / "001_000013_000010.dcm")[0]
    duplicate = read_file(SIEMENS_MOSAIC / "001_000013_000000.dcm")[0]
    assert duplicate.volume_key == original.volume_key == 10
    assert np.array_equal(duplicate.data, original.data)


def test_mosaic_states_its_slices_and_keeps_integers():
    piece = read_file(SIEMENS_MOSAIC / "001_000013_000001.dcm")[0]
    assert (piece.kind, piece.volume_key, piece.n_slices, piece.slice_key) == ("siemens-mosaic", 1, 27, None)
    assert piece.data.shape == (64, 64, 27) and piece.data.dtype == np.uint16
    assert piece.series_number == 13
    assert piece.data.flags.c_contiguous


def test_ge_slices_without_temporal_position_get_their_volume_from_the_instance_number():
    files = sorted(GE_SLICES.glob("*.dcm"))
    for number, path in enumerate(files, start=1):
        assert pydicom.dcmread(path, stop_before_pixels=True).get("TemporalPositionIdentifier") is None
        piece = read_file(path)[0]
        assert piece.n_slices == 15
        assert piece.volume_key == (number - 1) // 15 + 1


def test_philips_slices_use_dcm2niix_precise_float_scaling():
    """dcm2niix (UsePhilipsFloatNotDisplayScaling) writes FP = PV / SS for RI = 0."""
    path = sorted(PHILIPS_SLICES.glob("*.dcm"))[0]
    dataset = pydicom.dcmread(path)
    scale_slope = float(dataset[0x2005, 0x100E].value)
    piece = read_file(path)[0]
    assert piece.data.dtype == np.float32
    np.testing.assert_allclose(piece.data, dataset.pixel_array.T / scale_slope, rtol=1e-6)
    sidecar = json.loads((REFERENCES / "philips_magdeburg_phantom_3vol.json").read_text())
    assert sidecar["UsePhilipsFloatNotDisplayScaling"] == 1
    assert sidecar["PhilipsScaleSlope"] == pytest.approx(scale_slope, rel=1e-5)


def test_enhanced_file_holding_two_volumes_gives_two_pieces(tmp_path):
    source = SIEMENS_ENHANCED / "6_1.dcm"
    whole = read_file(source)[0]
    dataset = pydicom.dcmread(source)
    frames = dataset.PerFrameFunctionalGroupsSequence
    heights = [float(frame.PlanePositionSequence[0].ImagePositionPatient[2]) for frame in frames]
    upper = np.argsort(heights)[3:]
    for index in upper:
        frames[int(index)].FrameContentSequence[0].TemporalPositionIndex = 2
    path = tmp_path / "two_volumes.dcm"
    dataset.save_as(path)
    pieces = read_file(path)
    assert [piece.volume_key for piece in pieces] == [1, 2]
    assert [piece.n_slices for piece in pieces] == [3, 3]
    assert np.array_equal(np.concatenate([piece.data for piece in pieces], axis=2), whole.data)
    np.testing.assert_allclose(pieces[0].affine, whole.affine, atol=1e-6)
    third_slice = whole.affine[:3, 3] + 3 * whole.affine[:3, 2]
    np.testing.assert_allclose(pieces[1].affine[:3, 3], third_slice, atol=1e-4)


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


# --------------------------------------------------------------------------- incomplete files
def test_truncated_mosaic_is_incomplete():
    with pytest.raises(IncompleteFileError, match="still being written"):
        read_file(TRUNCATED_DICOM)
    assert not is_complete_file(TRUNCATED_DICOM)
    assert is_complete_file(SIEMENS_MOSAIC / "001_000013_000005.dcm")


@pytest.mark.parametrize("source", [
    SIEMENS_MOSAIC / "001_000013_000005.dcm",
    SIEMENS_ENHANCED / "6_2.dcm",
    sorted(PHILIPS_SLICES.glob("*.dcm"))[4],
    sorted(GE_SLICES.glob("*.dcm"))[7],
], ids=["siemens-mosaic", "siemens-enhanced", "philips-slice", "ge-slice"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.999], ids=["in-header", "early", "last-bytes"])
def test_dicom_cut_short_is_incomplete(source, fraction, tmp_path):
    data = source.read_bytes()
    cut = tmp_path / source.name
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(IncompleteFileError, match=re.escape(str(cut))):
        read_file(cut)


@pytest.mark.parametrize("source", [sorted(GE_SLICES.glob("*.dcm"))[0], SIEMENS_ENHANCED / "6_1.dcm"],
                         ids=["ge-slice", "siemens-enhanced"])
def test_dicom_cut_at_any_byte_is_incomplete(source, tmp_path):
    """pydicom reads what there is of a value cut short without a word: a half-written group
    length, SOP class UID, sequence or pixel data must not read as broken, foreign or whole."""
    data = source.read_bytes()
    cut = tmp_path / source.name
    lengths = [*range(1, 700), *np.linspace(700, len(data) - 1, 300).astype(int).tolist()]
    wrong = {}
    for length in lengths:
        cut.write_bytes(data[:length])
        try:
            read_file(cut)
        except IncompleteFileError:
            continue
        except InputError as exc:
            wrong[length] = f"{type(exc).__name__}: {exc}"
        else:
            wrong[length] = "read as whole"
    assert not wrong, f"{len(wrong)} cut lengths not seen as incomplete, e.g. {next(iter(wrong.items()))}"


@pytest.mark.parametrize("length", [0, 60, 131], ids=["empty", "preamble-60", "preamble-131"])
def test_dicom_still_at_its_preamble_is_incomplete(length, tmp_path):
    path = tmp_path / "MR.0001.dcm"
    path.write_bytes(bytes(length))
    with pytest.raises(IncompleteFileError):
        read_file(path)


@pytest.mark.parametrize("removed", [("PixelData",), ("PixelData", "Rows", "Columns", "BitsAllocated")],
                         ids=["pixel-data", "pixel-module"])
def test_mr_image_that_ends_before_its_pixel_data_is_incomplete(removed, tmp_path):
    """Cut at an element boundary, a file being written looks like a complete one without pixels."""
    dataset = pydicom.dcmread(sorted(GE_SLICES.glob("*.dcm"))[0])
    for keyword in removed:
        delattr(dataset, keyword)
    path = tmp_path / "slice.dcm"
    dataset.save_as(path)
    with pytest.raises(IncompleteFileError, match="ends before its pixel data"):
        read_file(path)


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


# --------------------------------------------------------------------------- foreign files
def test_text_file_is_foreign(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("TR = 2 s\n" * 100)
    with pytest.raises(ForeignFileError, match="not a DICOM, PAR/REC or NIfTI file"):
        read_file(path)
    assert is_complete_file(path)


def test_dcm_suffix_without_dicom_header_is_foreign(tmp_path):
    path = tmp_path / "001_000013_000011.dcm"
    path.write_bytes(b"\x01\x02" * 4000)
    with pytest.raises(ForeignFileError, match=r"has a \.dcm suffix but no DICOM header"):
        read_file(path)


def test_dicom_without_pixel_data_is_foreign(tmp_path):
    dataset = pydicom.dcmread(SIEMENS_MOSAIC / "001_000013_000001.dcm")
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(dataset, keyword)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = RawDataStorage
    path = tmp_path / "raw.dcm"
    dataset.save_as(path)
    with pytest.raises(ForeignFileError, match="Raw Data Storage object, not an MR image"):
        read_file(path)


@pytest.mark.parametrize("source", [SIEMENS_MOSAIC / "001_000013_000001.dcm", SIEMENS_ENHANCED / "6_1.dcm",
                                    sorted(PHILIPS_SLICES.glob("*.dcm"))[0]],
                         ids=["siemens-mosaic", "siemens-enhanced", "philips-slice"])
def test_localizer_is_foreign(source, tmp_path):
    dataset = pydicom.dcmread(source)
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    path = tmp_path / "localizer.dcm"
    dataset.save_as(path)
    with pytest.raises(ForeignFileError, match="is a localizer"):
        read_file(path)


def test_survey_series_is_foreign(tmp_path):
    dataset = pydicom.dcmread(sorted(PHILIPS_SLICES.glob("*.dcm"))[0])
    dataset.SeriesDescription = dataset.ProtocolName = "SmartBrain Survey"
    path = tmp_path / "survey.dcm"
    dataset.save_as(path)
    with pytest.raises(ForeignFileError, match="SeriesDescription names one"):
        read_file(path)


@needs_shared
def test_rec_alone_and_mask_are_foreign():
    rec = sorted(PARREC_DUMPS.rglob("*.rec"))[0]
    with pytest.raises(ForeignFileError, match="read through the PAR file"):
        read_file(rec)
    with pytest.raises(ForeignFileError, match="a mask"):
        read_file(PARREC_DUMPS / "dummyMask.nii.gz")


def test_folder_is_foreign():
    with pytest.raises(ForeignFileError, match="is a folder"):
        read_file(SIEMENS_MOSAIC)


def test_broken_dicom_headers_are_input_errors(tmp_path):
    data = sorted(GE_SLICES.glob("*.dcm"))[0].read_bytes()
    assert data.count(b"-118.125") == 1
    path = tmp_path / "bad_number.dcm"
    path.write_bytes(data.replace(b"-118.125", b"-1l8.125"))
    with pytest.raises(InputError, match="broken DICOM header") as raised:
        read_file(path)
    assert type(raised.value) is InputError
    path = tmp_path / "garbage.dcm"
    path.write_bytes(data[:132] + bytes(range(256)) * 40)
    with pytest.raises(InputError, match="header is broken") as raised:
        read_file(path)
    assert type(raised.value) is InputError


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_file(tmp_path / "nothing.dcm")


# --------------------------------------------------------------------------- forced formats
@pytest.mark.parametrize(("source", "forced", "message"), [
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "ge", "is a Siemens mosaic .* not the GE image"),
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "philips", "not the Philips image"),
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "siemens-enhanced", "not the Siemens enhanced"),
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "nifti", "holds no NIfTI-1/2 header"),
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "parrec", "holds no PAR header"),
    (SIEMENS_ENHANCED / "6_1.dcm", "siemens-mosaic", "enhanced multi-frame image .* not the Siemens mosaic"),
    (SIEMENS_NIFTI, "dicom", "holds no DICOM header"),
    (SIEMENS_NIFTI, "ge", "holds no DICOM header"),
], ids=["mosaic-as-ge", "mosaic-as-philips", "mosaic-as-enhanced", "mosaic-as-nifti", "mosaic-as-parrec",
        "enhanced-as-mosaic", "nifti-as-dicom", "nifti-as-ge"])
def test_forced_format_that_does_not_match_is_refused(source, forced, message):
    with pytest.raises(InputError, match=message) as raised:
        read_file(source, format=forced)
    assert not isinstance(raised.value, ForeignFileError | IncompleteFileError)


def test_unknown_format_is_refused():
    with pytest.raises(InputError, match="format should be one of " + ", ".join(FORMATS)):
        read_file(SIEMENS_NIFTI, format="analyze")


@pytest.mark.parametrize(("source", "forced"), [
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "siemens-mosaic"),
    (SIEMENS_MOSAIC / "001_000013_000001.dcm", "dicom"),
    (SIEMENS_ENHANCED / "6_1.dcm", "siemens-enhanced"),
    (sorted(PHILIPS_SLICES.glob("*.dcm"))[0], "philips"),
    (sorted(GE_SLICES.glob("*.dcm"))[0], "ge"),
    (SIEMENS_NIFTI, "nifti"),
], ids=["siemens-mosaic", "dicom", "siemens-enhanced", "philips", "ge", "nifti"])
def test_forced_format_that_matches_reads_as_detected(source, forced):
    detected, forced_pieces = read_file(source), read_file(source, format=forced)
    assert [piece.kind for piece in forced_pieces] == [piece.kind for piece in detected]
    for ours, theirs in zip(forced_pieces, detected, strict=True):
        assert np.array_equal(ours.data, theirs.data)


# --------------------------------------------------------------------------- patient identity
def test_pieces_carry_no_patient_identity():
    assert {field.name for field in dataclasses.fields(Piece)} == {
        "kind", "series", "series_number", "volume_key", "slice_key", "n_slices", "data", "affine", "tr"}
    folders = [SIEMENS_MOSAIC, SIEMENS_ENHANCED, PHILIPS_SLICES, GE_SLICES]
    if SHARED_DICOM.is_dir():
        folders += [series.folder for series in SHARED_SERIES.values()] + [PARREC_DUMPS]
    checked = 0
    for folder in folders:
        identity, uids = identifying_values(folder)
        pieces, _ = read_folder(folder)
        for piece in pieces:
            text = repr(piece)
            assert not [value for value in identity if value in text], f"{folder}: identity in {text}"
            assert not [uid for uid in uids if uid in text]
            assert folder.name not in text
        checked += len(identity)
    assert checked > 0, "the test data should hold some patient identity to look for"


# --------------------------------------------------------------------------- transfer syntaxes
@pytest.mark.parametrize("syntax", ["implicit", "deflated", "rle", "bare"])
def test_other_transfer_syntaxes_read_the_same(syntax, tmp_path):
    source = sorted(PHILIPS_SLICES.glob("*.dcm"))[0]
    expected = read_file(source)[0]
    dataset = pydicom.dcmread(source)
    path = tmp_path / f"{syntax}.dcm"
    if syntax == "implicit":
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        dataset.save_as(path, implicit_vr=True, little_endian=True)
    elif syntax == "deflated":
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        dataset.save_as(path)
    elif syntax == "rle":
        dataset.compress(RLELossless)
        dataset.save_as(path)
    else:  # a data set without preamble and meta header, as old GE exports write them
        with pydicom.filebase.DicomBytesIO() as buffer:
            buffer.is_little_endian, buffer.is_implicit_VR = True, True
            pydicom.filewriter.write_dataset(buffer, dataset)
            path.write_bytes(buffer.getvalue())
    piece = read_file(path)[0]
    assert piece.kind == expected.kind
    assert (piece.volume_key, piece.n_slices) == (expected.volume_key, expected.n_slices)
    assert piece.slice_key == pytest.approx(expected.slice_key)
    assert np.array_equal(piece.data, expected.data)
    np.testing.assert_allclose(piece.affine, expected.affine)


@pytest.mark.parametrize("source", [
    SIEMENS_MOSAIC / "001_000013_000001.dcm", SIEMENS_ENHANCED / "6_1.dcm",
    sorted(PHILIPS_SLICES.glob("*.dcm"))[0], sorted(GE_SLICES.glob("*.dcm"))[0],
], ids=["siemens-mosaic", "siemens-enhanced", "philips-slice", "ge-slice"])
def test_explicit_big_endian_reads_the_same(source, tmp_path):
    """A retired transfer syntax, but pydicom reads it: values come out in native byte order."""
    expected = read_file(source)
    dataset = pydicom.dcmread(source)
    # pydicom writes the pixel bytes as they are: swap them as a big-endian writer would.
    dataset.PixelData = np.frombuffer(dataset.PixelData, "<u2").astype(">u2").tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    path = tmp_path / "big_endian.dcm"
    pydicom.dcmwrite(path, dataset, implicit_vr=False, little_endian=False, force_encoding=True)
    pieces = read_file(path)
    assert [piece.kind for piece in pieces] == [piece.kind for piece in expected]
    for piece, reference in zip(pieces, expected, strict=True):
        assert piece.data.dtype == reference.data.dtype and piece.data.dtype.isnative
        assert np.array_equal(piece.data, reference.data)
        np.testing.assert_allclose(piece.affine, reference.affine)
        assert (piece.volume_key, piece.n_slices) == (reference.volume_key, reference.n_slices)


@pytest.mark.parametrize("folder", [SIEMENS_MOSAIC, SIEMENS_ENHANCED, PHILIPS_SLICES, GE_SLICES],
                         ids=["siemens-mosaic", "siemens-enhanced", "philips-slice", "ge-slice"])
def test_stored_pixels_equal_pydicoms(folder):
    """The pixels and geometry read equal pydicom's ``pixel_array`` and positions (and nibabel's
    unpacking and geometry, for mosaics)."""
    for path in sorted(folder.glob("*.dcm"))[:4]:
        dataset = pydicom.dcmread(path)
        pieces = read_file(path)
        stored = dataset.pixel_array
        if "PerFrameFunctionalGroupsSequence" in dataset:
            frames = dataset.PerFrameFunctionalGroupsSequence
            heights = [float(frame.PlanePositionSequence[0].ImagePositionPatient[2]) for frame in frames]
            assert np.array_equal(pieces[0].data, stored[np.argsort(heights)].transpose(2, 1, 0))
        elif pieces[0].slice_key is not None:
            position = np.array(dataset.ImagePositionPatient, dtype=float)
            np.testing.assert_allclose(pieces[0].affine[:3, 3], position * [-1, -1, 1])
            if pieces[0].data.dtype.kind in "iu":
                assert np.array_equal(pieces[0].data, stored.T)
        else:  # a mosaic: nibabel's own unpacking and geometry
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                from nibabel.nicom import dicomwrappers
            wrapper = dicomwrappers.wrapper_from_data(dataset)  # (row, column) axes: compare canonical
            ours, theirs = canonical(pieces[0].data, pieces[0].affine), canonical(
                wrapper.get_data(), LPS_TO_RAS @ wrapper.affine)
            assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
            np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)


# --------------------------------------------------------------------------- assemble
def slice_pieces() -> list[Piece]:
    return [read_file(path)[0] for path in sorted(GE_SLICES.glob("*.dcm"))[:15]]


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


def test_piece_checks_its_shape_and_kind():
    piece = slice_pieces()[0]
    with pytest.raises(InputError, match="should be 2D"):
        replaced(piece, data=piece.data[..., np.newaxis])
    with pytest.raises(InputError, match="kind should be one of"):
        replaced(piece, kind="analyze")
    assert "dtype=int16" in repr(piece) and "array(" not in repr(piece)


def test_gzip_garbage_with_nifti_suffix_is_foreign(tmp_path):
    path = tmp_path / "vol_0001.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 100))
    with pytest.raises(ForeignFileError, match="NIfTI suffix but no NIfTI-1/2 header"):
        read_file(path)
