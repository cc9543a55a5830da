"""Every DICOM file a real-time export folder can hold, read by rtserver.scanner.readers.

The real series (tests/reader_helpers.py) are read file by file and compared with dcm2niix's
conversion of the same files; single files are cut short, made foreign, forced to another
layout, re-encoded in other transfer syntaxes and compared with pydicom's own reading.
PAR/REC and NIfTI files: tests/test_readers_parrec.py and tests/test_readers_nifti.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

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

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.rigid import LPS_TO_RAS
from rtserver.scanner.readers import FORMATS, Piece, is_complete_file, read_file

from .conftest import SIEMENS_MOSAIC, SIEMENS_NIFTI, TRUNCATED_DICOM
from .reader_helpers import (
    GE_SLICES,
    LOCAL_SERIES,
    PARREC_DUMPS,
    PHILIPS_SLICES,
    REFERENCES,
    SHARED_DICOM,
    SHARED_SERIES,
    SIEMENS_ENHANCED,
    canonical,
    check_series,
    convert_with_dcm2niix,
    needs_dcm2niix,
    needs_shared,
    read_folder,
    slice_pieces,
)


def identifying_values(folder: Path) -> tuple[set[str], set[str]]:
    """PatientName and PatientID values (and the name's parts), and SeriesInstanceUIDs, of the
    DICOM files in a folder.
    """
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
    """Pydicom reads what there is of a value cut short without a word: a half-written group
    length, SOP class UID, sequence or pixel data must not read as broken, foreign or whole.
    """
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
    unpacking and geometry, for mosaics).
    """
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


def replaced(piece: Piece, **changes) -> Piece:
    return dataclasses.replace(piece, **changes)


def test_piece_checks_its_shape_and_kind():
    piece = slice_pieces()[0]
    with pytest.raises(InputError, match="should be 2D"):
        replaced(piece, data=piece.data[..., np.newaxis])
    with pytest.raises(InputError, match="kind should be one of"):
        replaced(piece, kind="analyze")
    assert "dtype=int16" in repr(piece) and "array(" not in repr(piece)
