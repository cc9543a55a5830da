"""Any DICOM file of an export folder: parsed, checked, and handed to the reader of its layout.

pydicom reads DICOM files (every transfer syntax it reads, with its data dictionaries and
pixel decoders). This module adds what it does not do: telling a file the scanner is still
writing (:class:`rtserver.errors.IncompleteFileError`) from a broken one, skipping what is
not an fMRI image (non-image objects, localizers: :class:`rtserver.errors.ForeignFileError`),
and telling the layout (Siemens mosaic, enhanced multi-frame, GE, Philips or other
per-slice) from the header, or checking a layout the caller forces.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.readers.dicom_common import PIXEL_DATA, common, pixels
from rtserver.scanner.readers.dicom_values import broken_header_as_input_error, text_of, texts_of
from rtserver.scanner.readers.enhanced import enhanced_pieces
from rtserver.scanner.readers.mosaic import mosaic_piece
from rtserver.scanner.readers.pieces import Piece
from rtserver.scanner.readers.slices import slice_piece

__all__ = ["read_dicom"]

#: What pydicom raises when the bytes end inside an element's header (struct.error), inside
#: a sequence (OSError "No tag to read"), in a deflated data set (zlib.error) or before a
#: delimiter (EOFError). A cut inside a value it does not raise on: see
#: :func:`_ends_inside_last_element`.
_CUT_SHORT = (EOFError, OSError, struct.error, zlib.error)
#: SOP classes whose files this system reads: MR Image, Enhanced MR Image, Legacy Converted
#: Enhanced MR Image.
_MR_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
                     "1.2.840.10008.5.1.4.1.1.4.4")
_LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT"})
_LOCALIZER_NAME = re.compile(r"locali[sz]er|scout|survey", re.IGNORECASE)


def read_dicom(path: Path, buf: bytes, format: str) -> list[Piece]:  # noqa: A002 - read_file's name
    """Read the pieces of one DICOM file.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    buf : bytes
        Its bytes.
    format : str
        ``"dicom"`` (detect the layout) or the layout to read it as: ``"siemens-mosaic"``,
        ``"siemens-enhanced"``, ``"ge"`` or ``"philips"``.

    Returns
    -------
    list of Piece

    Raises
    ------
    IncompleteFileError
        If the bytes end inside an element, or before the pixel data of an MR image.
    ForeignFileError
        If the file is not an MR image, or is a localizer.
    InputError
        If the header is broken, or the layout is not the one forced.
    """
    # pydicom warns of odd values, and of the short values of a file still being written,
    # which a watcher reads again and again: what is used is checked here instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = _parse_dicom(path, buf)
        with broken_header_as_input_error(path):
            return _dicom_pieces(path, dataset, format)


def _parse_dicom(path: Path, buf: bytes) -> Dataset:
    """Parse a whole DICOM file with pydicom (values are decoded when first asked for).

    IncompleteFileError when the bytes end inside an element; InputError when they are not
    a DICOM data set.
    """
    if buf[128:132] == b"DICM" and len(buf) >= 134 and buf[132:134] != b"\x02\x00":
        raise InputError(f"{path} starts like DICOM but its header is broken: no file meta information "
                         f"follows the preamble.")
    cut_short = IncompleteFileError(f"{path} ends inside its DICOM header or pixel data ({len(buf)} bytes "
                                    f"so far): it is probably still being written; try again later.")
    try:
        dataset = pydicom.dcmread(io.BytesIO(buf), force=True)
    except _CUT_SHORT:
        raise cut_short from None
    except Exception as exc:  # pydicom raises InvalidDicomError, ValueError, ... on broken headers
        if buf[128:132] == b"DICM" and len(buf) < 144:  # inside the file meta group length
            raise cut_short from None
        raise InputError(f"{path} starts like DICOM but its header is broken: {exc}.") from None
    if _ends_inside_last_element(dataset):
        raise cut_short
    return dataset


def _ends_inside_last_element(dataset: Dataset) -> bool:
    """Whether the last element pydicom read holds fewer bytes than its header states.

    pydicom reads what there is of a value cut short (a UID, the pixel data, ...) and stops
    there without a word; elements come in tag order, so that one has the highest tag.
    """
    tags = dataset.keys()
    if not tags:
        return False
    last = dataset.get_item(max(tags, key=int))
    return (isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF
            and len(last.value or b"") < last.length)


def _dicom_pieces(path: Path, dataset: Dataset, format: str) -> list[Piece]:  # noqa: A002
    """Check the image, tell its layout, and read it with that layout's reader."""
    _check_mr_image(path, dataset)
    manufacturer = text_of(dataset, "Manufacturer").upper()
    image = common(path, dataset, manufacturer)
    enhanced = "PerFrameFunctionalGroupsSequence" in dataset
    kind = _dicom_kind(path, dataset, manufacturer, enhanced, format)
    if kind == "siemens-mosaic":
        return [mosaic_piece(path, dataset, image)]
    frames = pixels(path, dataset, image)
    if kind in ("siemens-enhanced", "enhanced"):
        return enhanced_pieces(path, dataset, image, frames, kind)
    return [slice_piece(path, dataset, image, frames[0], kind)]


def _check_mr_image(path: Path, dataset: Dataset) -> None:
    """ForeignFileError unless the file is an MR image other than a localizer.

    Non-image objects (raw data, spectroscopy, reports, presentation states, ...) are told
    apart by their SOP class; an MR image without pixel data is still being written.
    """
    sop_class = text_of(dataset, "SOPClassUID")
    if sop_class and sop_class not in _MR_IMAGE_CLASSES:
        raise ForeignFileError(f"{path} is a DICOM {_uid_name(sop_class)} object, not an MR image; skipped.")
    modality = text_of(dataset, "Modality")
    if not sop_class and modality not in ("", "MR"):
        raise ForeignFileError(f"{path} is a DICOM {modality} image, not MR; skipped.")
    image_type = texts_of(dataset, "ImageType")
    if {value.upper() for value in image_type} & _LOCALIZER_TYPES:
        raise ForeignFileError(f"{path} is a localizer (ImageType {'/'.join(image_type)}), not an fMRI "
                               f"volume; skipped.")
    for name in ("SeriesDescription", "ProtocolName"):
        if _LOCALIZER_NAME.search(text_of(dataset, name)):
            raise ForeignFileError(f"{path} is a localizer (its {name} names one), not an fMRI volume; "
                                   f"skipped.")
    if PIXEL_DATA not in dataset and ("FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset):
        raise InputError(f"{path} holds floating-point pixel data, which this reader does not read.")
    if PIXEL_DATA not in dataset:
        # An MR image must hold pixel data: the file ends before it, and may end at an element
        # boundary while the scanner writes it. A watcher gives up once the file stops growing.
        raise IncompleteFileError(f"{path} is an MR image that ends before its pixel data: it is probably "
                                  f"still being written; try again later.")


def _uid_name(uid: str) -> str:
    """Name a SOP class, or give its UID when pydicom does not know it."""
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def _dicom_kind(path: Path, dataset: Dataset, manufacturer: str, enhanced: bool, format: str) -> str:  # noqa: A002
    """Tell the layout of a DICOM image (a piece kind), as found or as forced by ``format``."""
    siemens = manufacturer.startswith("SIEMENS")
    ge = manufacturer.startswith("GE ") or manufacturer == "GE" or "GENERAL ELECTRIC" in manufacturer
    philips = manufacturer.startswith("PHILIPS")
    mosaic = not enhanced and "MOSAIC" in {value.upper() for value in texts_of(dataset, "ImageType")}
    if enhanced:
        found = "siemens-enhanced" if siemens else "enhanced"
    elif mosaic and (siemens or not manufacturer):
        found = "siemens-mosaic"
    elif ge:
        found = "ge-slice"
    elif philips:
        found = "philips-slice"
    else:
        found = "dicom-slice"
    what = f"{path} is {_describe_kind(found)} (Manufacturer {manufacturer or 'not stated'})"
    if format == "siemens-mosaic" and found != "siemens-mosaic":
        if found == "dicom-slice" and not manufacturer:
            return "siemens-mosaic"  # nibabel tells whether its CSA header makes it one
        raise InputError(f"{what}, not the Siemens mosaic it was to be read as.")
    if format == "siemens-enhanced" and found != "siemens-enhanced":
        if found == "enhanced" and not manufacturer:
            return "siemens-enhanced"
        raise InputError(f"{what}, not the Siemens enhanced multi-frame image it was to be read as.")
    if format == "ge":
        if manufacturer and not ge:
            raise InputError(f"{what}, not the GE image it was to be read as.")
        return "enhanced" if enhanced else "ge-slice"
    if format == "philips":
        if manufacturer and not philips:
            raise InputError(f"{what}, not the Philips image it was to be read as.")
        return "enhanced" if enhanced else "philips-slice"
    return found


def _describe_kind(kind: str) -> str:
    """Say a piece kind in words."""
    return {
        "siemens-mosaic": "a Siemens mosaic", "siemens-enhanced": "a Siemens enhanced multi-frame image",
        "enhanced": "an enhanced multi-frame image", "ge-slice": "a GE slice", "philips-slice":
        "a Philips slice", "dicom-slice": "a single-slice image",
    }[kind]
