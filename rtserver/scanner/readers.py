"""Read any one file a real-time export folder can hold, as pieces of fMRI volumes.

A scanner's export folder fills with one file per volume (Siemens classic mosaic, Siemens
XA enhanced, a PAR/REC pair, a 3D NIfTI), one file per slice (GE, Philips and other classic
DICOM), or one file per run (a 4D NIfTI). :func:`read_file` turns any one of them into
:class:`Piece` objects: a whole volume, or one slice of a volume, with its geometry in world
RAS+ millimetres and its voxel values as dcm2niix's NIfTI would hold them after scaling.
:func:`assemble` stacks the slices of one volume.

pydicom reads DICOM files (every transfer syntax it reads, with its data dictionaries and
pixel decoders); nibabel reads Siemens CSA headers, PAR/REC files and NIfTI files. This
module adds what they do not do: which files and frames make which volume, dcm2niix's
scaling and geometry conventions, and telling a file the scanner is still writing
(IncompleteFileError) from a foreign one. pydicom parses every item of every sequence of
undefined length when it reads a file, so :func:`read_file` takes about 16 ms for a Siemens
XA30 enhanced volume (33 frames, 2,700 elements; 12 ms of it in ``dcmread``), 2 ms for a
mosaic or a Philips slice and 1.2 ms for a GE slice on a 2-core machine
(``python benchmarks/readers.py``).

Patient identity never enters a piece: it carries the fields below only, and its ``series``
is a one-way digest of the SeriesInstanceUID (a UID is itself an attribute that the DICOM
basic de-identification profile replaces) or, for PAR/REC and NIfTI files, of the folder
and the file-name pattern.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import VR

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.rigid import LPS_TO_RAS

__all__ = [
    "FORMATS",
    "KINDS",
    "ForeignFileError",
    "IncompleteFileError",
    "Piece",
    "assemble",
    "is_complete_file",
    "read_file",
]

#: What a piece can come from.
KINDS = ("siemens-mosaic", "siemens-enhanced", "enhanced", "ge-slice", "philips-slice",
         "dicom-slice", "parrec", "nifti")
#: Values of ``read_file(..., format=...)``.
FORMATS = ("siemens-mosaic", "siemens-enhanced", "ge", "philips", "parrec", "nifti", "dicom")

#: Slices of one volume must be this regular (mm), and no closer than this to each other.
SLICE_TOLERANCE_MM = 1e-2
#: Slices of one volume must lie this close (mm) to the line along their normal.
SHEAR_TOLERANCE_MM = 5e-2
#: In-plane axes of the slices of one volume must agree this well (mm per voxel).
ORIENTATION_TOLERANCE = 1e-3




@dataclass(frozen=True, repr=False, eq=False)
class Piece:
    """One whole volume, or one slice of a volume, read from one file.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`: ``"siemens-mosaic"``, ``"siemens-enhanced"``, ``"enhanced"``
        (other vendors' multi-frame DICOM), ``"ge-slice"``, ``"philips-slice"``,
        ``"dicom-slice"`` (other per-slice DICOM), ``"parrec"`` or ``"nifti"``.
    series : str
        Identifies the series: a digest of the DICOM SeriesInstanceUID, or of the folder and
        the file-name pattern for PAR/REC and NIfTI files. Never patient identity.
    series_number : int or None
        The DICOM SeriesNumber, when known.
    volume_key : int
        Orders the volumes of the series; consecutive volumes differ by 1 whenever the file
        says so (AcquisitionNumber of a mosaic, temporal position of slices and frames,
        dynamic or acquisition number of a PAR, the number in a 3D NIfTI file's name, the
        index in a 4D NIfTI).
    slice_key : float or None
        For a slice: its position (mm) along the slice normal. None for a whole volume.
    n_slices : int or None
        Slices in one whole volume, when the file states it.
    data : numpy.ndarray
        A whole volume (i, j, k) or a slice (i, j); the stored integers when no scaling
        applies, else float32 after the scaling dcm2niix applies.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+, mm) matrix. For a slice, the third column is the unit
        slice normal; :func:`assemble` replaces it by the spacing between slices.
    tr : float or None
        Repetition time in seconds, when stated.
    """

    kind: str
    series: str
    series_number: int | None
    volume_key: int
    slice_key: float | None
    n_slices: int | None
    data: np.ndarray
    affine: np.ndarray
    tr: float | None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"A piece's kind should be one of {', '.join(KINDS)}. Got {self.kind!r}.")
        expected_ndim = 3 if self.slice_key is None else 2
        if self.data.ndim != expected_ndim:
            what = "a whole volume" if self.slice_key is None else "a slice"
            raise InputError(f"The data of {what} should be {expected_ndim}D. Got shape {self.data.shape}.")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"A piece's affine should be a finite 4x4 matrix. Got shape {affine.shape}.")
        object.__setattr__(self, "affine", affine)

    def __repr__(self) -> str:
        slice_key = "None" if self.slice_key is None else f"{self.slice_key:.3f}"
        return (f"Piece(kind={self.kind!r}, series={self.series!r}, series_number={self.series_number}, "
                f"volume_key={self.volume_key}, slice_key={slice_key}, n_slices={self.n_slices}, "
                f"shape={self.data.shape}, dtype={self.data.dtype}, tr={self.tr})")


# =========================================================================== public API
def read_file(path: str | Path, format: str | None = None) -> list[Piece]:  # noqa: A002 - the brief's name
    """Read one file of a scanner export folder.

    Parameters
    ----------
    path : str or Path
        A DICOM file (Siemens mosaic, enhanced multi-frame of any vendor, GE, Philips or
        other per-slice), a PAR file with its REC beside it, or a ``.nii``/``.nii.gz`` file.
    format : str or None
        Force the interpretation: one of :data:`FORMATS`. None detects it from the content
        (not from the suffix).

    Returns
    -------
    list of Piece
        Usually one piece; a multi-frame DICOM or a 4D NIfTI holding several volumes gives
        one piece per volume, in file order.

    Raises
    ------
    IncompleteFileError
        If the file is shorter than its header promises (still being written).
    ForeignFileError
        If the file is not an fMRI image this system reads (text, non-image DICOM,
        localizer, mask, a REC without its PAR, ...).
    InputError
        If the file claims a format but cannot be read as it, or ``format`` does not match.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise InputError(f"format should be one of {', '.join(FORMATS)} or None. Got {format!r}.")
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ForeignFileError(f"{path} is a folder, not a file; skipped.") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror}.") from None
    found = _sniff(buf, path)
    requested = format
    if requested is None:
        if found is None:
            raise ForeignFileError(_not_an_image_message(path))
        if found == "rec":
            raise ForeignFileError(f"{path} is REC pixel data, read through the PAR file beside it; skipped.")
        requested = found
    elif requested == "parrec" and found != "parrec":
        raise InputError(f"{path} was to be read as a PAR file, but it holds no PAR header"
                         f"{' (it is a REC: pass its PAR file)' if found == 'rec' else ''}.")
    elif requested == "nifti" and found != "nifti":
        raise InputError(f"{path} was to be read as NIfTI, but it holds no NIfTI-1/2 header.")
    elif requested not in ("parrec", "nifti") and found != "dicom":
        raise InputError(f"{path} was to be read as DICOM ({requested}), but it holds no DICOM header.")
    if requested == "parrec":
        return _read_parrec(path, buf)
    if requested == "nifti":
        return _read_nifti(path, buf)
    return _read_dicom(path, buf, requested)


def assemble(pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray]:
    """One whole volume from the pieces of one ``volume_key``.

    Parameters
    ----------
    pieces : sequence of Piece
        Either one whole-volume piece, or the slices of one volume in any order.

    Returns
    -------
    data : numpy.ndarray
        The 3D voxel array (i, j, k); slices sorted by ``slice_key`` on the third axis.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS+, mm) matrix: the first slice's, with the third column the
        slice normal times the spacing between slices.

    Raises
    ------
    InputError
        If the pieces are not one volume: none, several whole volumes, mixed volume keys or
        series, slices of different shapes or orientations, two slices at one position,
        irregular spacing (beyond 1e-2 mm), or fewer or more slices than the files state.
    """
    if len(pieces) == 0:
        raise InputError("assemble() needs at least one piece. Got none.")
    first = pieces[0]
    keys = {(piece.series, piece.volume_key) for piece in pieces}
    if len(keys) > 1:
        raise InputError(f"assemble() needs the pieces of one volume. Got volume keys "
                         f"{sorted({key for _, key in keys})} of {len({s for s, _ in keys})} series.")
    whole = [piece for piece in pieces if piece.slice_key is None]
    if whole:
        if len(pieces) > 1:
            raise InputError(f"Volume {first.volume_key} should be one whole-volume piece. "
                             f"Got {len(whole)} whole volumes and {len(pieces) - len(whole)} slices.")
        return first.data, first.affine.copy()
    ordered = sorted(pieces, key=lambda piece: piece.slice_key)
    shapes = {piece.data.shape for piece in ordered}
    if len(shapes) > 1:
        raise InputError(f"The slices of volume {first.volume_key} should have one shape. "
                         f"Got {sorted(shapes)}.")
    stated = {piece.n_slices for piece in ordered if piece.n_slices is not None}
    if len(stated) > 1:
        raise InputError(f"The slices of volume {first.volume_key} disagree on the number of slices "
                         f"per volume: {sorted(stated)}.")
    if stated and len(ordered) != next(iter(stated)):
        raise InputError(f"Volume {first.volume_key} should have {next(iter(stated))} slices, "
                         f"as its files state. Got {len(ordered)}.")
    affines = np.stack([piece.affine for piece in ordered])
    positions = affines[:, :3, 3]
    normal = affines[0, :3, 2]
    if np.abs(affines[:, :3, :3] - affines[0, :3, :3]).max() > ORIENTATION_TOLERANCE:
        raise InputError(f"The slices of volume {first.volume_key} should share one orientation "
                         f"and pixel spacing. They differ.")
    spacing = _regular_spacing(np.array([piece.slice_key for piece in ordered]), positions, normal,
                               f"volume {first.volume_key}")
    affine = affines[0].copy()
    affine[:3, 2] = normal * spacing
    data = np.stack([piece.data for piece in ordered], axis=2)
    return data, affine


def is_complete_file(path: str | Path) -> bool:
    """Whether a file is complete, i.e. :func:`read_file` would not raise IncompleteFileError.

    Parameters
    ----------
    path : str or Path
        Any file of an export folder.

    Returns
    -------
    bool
        False while the file is shorter than its header promises; True otherwise, also for
        foreign or unreadable files (waiting would not help them).
    """
    try:
        read_file(path)
    except IncompleteFileError:
        return False
    except InputError:
        return True
    return True


# =========================================================================== detection
_NIFTI1_MAGIC = (b"n+1\x00",)
_NIFTI2_MAGIC = b"n+2\x00"
_NIFTI_STARTS = tuple(struct.pack(f"{order}i", size) for order in "<>" for size in (348, 540))
_PAR_START = b"# === DATA DESCRIPTION FILE"
_PAR_END = b"# === END OF DATA DESCRIPTION FILE"


def _sniff(buf: bytes, path: Path) -> str | None:
    """``"dicom"``, ``"parrec"``, ``"nifti"``, ``"rec"`` or None (foreign), from the content.

    Raises IncompleteFileError for a file too short to tell that looks like a start.
    """
    if len(buf) == 0:
        raise IncompleteFileError(f"{path} is empty: it is probably still being written; try again later.")
    if buf[128:132] == b"DICM" or _looks_like_bare_dicom(buf):
        return "dicom"
    if len(buf) < 132 and not any(buf[:128]) and (not any(buf[128:]) or b"DICM".startswith(buf[128:])):
        raise IncompleteFileError(f"{path} holds only {len(buf)} bytes so far (a DICOM preamble?); "
                                  f"try again later.")
    if buf[:2] == b"\x1f\x8b":
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            head = stream.decompress(buf[:65536], 544)
        except zlib.error:
            return None
        return _nifti_or_none(head, path, finished=stream.eof or len(buf) > 65536)
    if _nifti_or_none(buf, path, finished=False):
        return "nifti"
    if buf.lstrip(b"\xef\xbb\xbf \t\r\n")[:len(_PAR_START)] == _PAR_START:
        return "parrec"
    if path.suffix.lower() == ".rec":
        return "rec"
    return None


def _nifti_or_none(head: bytes, path: Path, finished: bool) -> str | None:
    """``"nifti"`` when ``head`` starts a single-file NIfTI-1 or NIfTI-2, else None.

    Raises IncompleteFileError when ``head`` is the start of a NIfTI header that is not all
    there yet (``finished``: the gzip stream ``head`` came from has ended, so it cannot grow).
    """
    if len(head) < 4:
        if not finished and any(start.startswith(head) for start in _NIFTI_STARTS):
            raise IncompleteFileError(f"{path} holds only the first bytes of a NIfTI header; "
                                      f"try again later.")
        return None
    size = _nifti_header_size(head)
    if not size:
        return None
    if len(head) < size + 4:
        if finished:
            return None
        raise IncompleteFileError(f"{path} holds only {len(head)} bytes of its NIfTI header so far; "
                                  f"try again later.")
    return "nifti" if _nifti_version(head) else None


def _nifti_header_size(head: bytes) -> int:
    """348 or 540 when ``head`` starts with a NIfTI-1 or NIfTI-2 header size (either byte order)."""
    for order in "<>":
        size = struct.unpack(f"{order}i", head[:4])[0]
        if size in (348, 540):
            return size
    return 0


def _nifti_version(head: bytes) -> int:
    """1 or 2 when ``head`` starts a single-file NIfTI (any byte order), else 0."""
    size = _nifti_header_size(head) if len(head) >= 4 else 0
    if size == 348 and head[344:348] in _NIFTI1_MAGIC:
        return 1
    if size == 540 and head[4:8] == _NIFTI2_MAGIC:
        return 2
    return 0


def _looks_like_bare_dicom(buf: bytes) -> bool:
    """A DICOM data set written without preamble and meta header (older GE exports do this)."""
    if len(buf) < 8:
        return False
    group, element = struct.unpack_from("<HH", buf)
    return group in (0x0002, 0x0008) and element < 0x0100 and (
        buf[4:6] in _VR_CODES or struct.unpack_from("<I", buf, 4)[0] < 0x10000)


def _not_an_image_message(path: Path) -> str:
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return f"{path} has a {path.suffix} suffix but no DICOM header; skipped."
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return f"{path} has a NIfTI suffix but no NIfTI-1/2 header; skipped."
    return f"{path} is not a DICOM, PAR/REC or NIfTI file; skipped."


# =========================================================================== DICOM files
_VR_CODES = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_PIXEL_DATA = 0x7FE00010
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


class _Malformed(Exception):
    """An element holds no value of its kind (internal; becomes InputError)."""


@dataclass
class _Common:
    """What every DICOM reader needs from the top-level data set."""

    manufacturer: str
    series: str
    series_number: int | None
    tr: float | None
    rows: int
    columns: int
    n_frames: int
    dtype: np.dtype


def _read_dicom(path: Path, buf: bytes, format: str) -> list[Piece]:  # noqa: A002
    # pydicom warns of odd values, and of the short values of a file still being written,
    # which a watcher reads again and again: what is used is checked here instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = _parse_dicom(path, buf)
        try:
            return _dicom_pieces(path, dataset, format)
        except _Malformed as exc:
            raise InputError(f"{path} has a broken DICOM header: {exc}.") from None


def _parse_dicom(path: Path, buf: bytes) -> Dataset:
    """pydicom's data set of a whole DICOM file (values are decoded when first asked for).

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
    _check_mr_image(path, dataset)
    manufacturer = _text(dataset, "Manufacturer").upper()
    common = _common(path, dataset, manufacturer)
    enhanced = "PerFrameFunctionalGroupsSequence" in dataset
    kind = _dicom_kind(path, dataset, manufacturer, enhanced, format)
    if kind == "siemens-mosaic":
        return [_mosaic_piece(path, dataset, common)]
    pixels = _pixels(path, dataset, common)
    if kind in ("siemens-enhanced", "enhanced"):
        return _enhanced_pieces(path, dataset, common, pixels, kind)
    return [_slice_piece(path, dataset, common, pixels[0], kind)]


def _check_mr_image(path: Path, dataset: Dataset) -> None:
    """ForeignFileError unless the file is an MR image other than a localizer.

    Non-image objects (raw data, spectroscopy, reports, presentation states, ...) are told
    apart by their SOP class; an MR image without pixel data is still being written.
    """
    sop_class = _text(dataset, "SOPClassUID")
    if sop_class and sop_class not in _MR_IMAGE_CLASSES:
        raise ForeignFileError(f"{path} is a DICOM {_uid_name(sop_class)} object, not an MR image; skipped.")
    modality = _text(dataset, "Modality")
    if not sop_class and modality not in ("", "MR"):
        raise ForeignFileError(f"{path} is a DICOM {modality} image, not MR; skipped.")
    image_type = _texts(dataset, "ImageType")
    if {value.upper() for value in image_type} & _LOCALIZER_TYPES:
        raise ForeignFileError(f"{path} is a localizer (ImageType {'/'.join(image_type)}), not an fMRI "
                               f"volume; skipped.")
    for name in ("SeriesDescription", "ProtocolName"):
        if _LOCALIZER_NAME.search(_text(dataset, name)):
            raise ForeignFileError(f"{path} is a localizer (its {name} names one), not an fMRI volume; "
                                   f"skipped.")
    if _PIXEL_DATA not in dataset and ("FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset):
        raise InputError(f"{path} holds floating-point pixel data, which this reader does not read.")
    if _PIXEL_DATA not in dataset:
        # An MR image must hold pixel data: the file ends before it, and may end at an element
        # boundary while the scanner writes it. A watcher gives up once the file stops growing.
        raise IncompleteFileError(f"{path} is an MR image that ends before its pixel data: it is probably "
                                  f"still being written; try again later.")


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


# --------------------------------------------------------------------------- element values
@functools.cache
def _tag(key: str | int) -> BaseTag:
    """The tag of a keyword (or of an int), looked up once."""
    return Tag(key)


def _value(dataset: Dataset, key: str | int) -> object:
    """The value of an element (keyword or tag) as pydicom decodes it; None when absent."""
    try:
        element = dataset[_tag(key)]
    except KeyError:
        return None
    except (ValueError, TypeError, struct.error) as exc:  # what pydicom raises on undecodable values
        raise _Malformed(f"{_name(key)} holds no valid value ({exc})") from None
    return element.value


def _name(key: str | int) -> str:
    return key if isinstance(key, str) else str(Tag(key))


def _text(dataset: Dataset, key: str | int) -> str:
    value = _value(dataset, key)
    return "" if value is None else str(value).strip()


def _texts(dataset: Dataset, key: str | int) -> list[str]:
    value = _value(dataset, key)
    if value is None or value == "":
        return []
    return [str(part).strip() for part in (value if isinstance(value, MultiValue) else [value])]


def _numbers(dataset: Dataset, key: str | int, cache: dict | None = None) -> tuple[float, ...]:
    """Numeric values of an element (DS, IS or binary); () when absent or empty.

    With a ``cache``, bytes seen before are not decoded again: the frames of an enhanced
    image repeat their orientation, pixel spacing and scaling, each in its own item.
    """
    if cache is not None:
        element = dataset.get_item(_tag(key))  # not decoded yet: its bytes as read
        if isinstance(element, RawDataElement):
            seen = (key, element.value)
            if seen not in cache:
                cache[seen] = _numbers(dataset, key)
            return cache[seen]
    value = _value(dataset, key)
    if value is None or value == "":
        return ()
    try:  # pydicom keeps what it cannot decode: bytes of unknown VR, text that is no number
        return tuple(float(part) for part in (value if isinstance(value, MultiValue) else [value]))
    except (ValueError, TypeError):
        raise _Malformed(f"{_name(key)} holds no number: {value!r}") from None


def _number(dataset: Dataset, key: str | int, cache: dict | None = None) -> float | None:
    values = _numbers(dataset, key, cache)
    return values[0] if values else None


def _integer(dataset: Dataset, key: str | int) -> int | None:
    value = _number(dataset, key)
    return None if value is None or not math.isfinite(value) else int(round(value))


def _private_tag(dataset: Dataset, group: int, creator: str, offset: int) -> int | None:
    """The tag of private element ``offset`` (0x00-0xFF) in ``creator``'s block, None without one.

    ``Dataset.private_block`` does this by sorting every tag of the data set: 0.09 ms on a
    GE slice, where probing the 240 places a creator can be takes 0.03 ms.
    """
    tags = dataset.keys()
    for block in range(0x10, 0x100):
        tag = group << 16 | block
        if tag in tags and _text(dataset, tag) == creator:
            return group << 16 | block << 8 | offset
    return None


def _items(dataset: Dataset | None, keyword: str) -> list[Dataset]:
    """The items of a sequence; [] when absent."""
    return list(_value(dataset, keyword) or []) if dataset is not None else []


# --------------------------------------------------------------------------- common
def _common(path: Path, dataset: Dataset, manufacturer: str) -> _Common:
    rows, columns = _integer(dataset, "Rows"), _integer(dataset, "Columns")
    bits = _integer(dataset, "BitsAllocated")
    if not rows or not columns or bits not in (8, 16, 32):
        raise InputError(f"{path} should state Rows, Columns and BitsAllocated 8, 16 or 32. "
                         f"Got {rows}, {columns} and {bits}.")
    samples = _integer(dataset, "SamplesPerPixel") or 1
    if samples != 1:
        raise ForeignFileError(f"{path} is a {samples}-sample (colour) image, not an MR magnitude image; "
                               f"skipped.")
    signed = _integer(dataset, "PixelRepresentation") == 1
    big_endian = dataset.original_encoding[1] is False
    dtype = np.dtype(f"{'>' if big_endian else '<'}{'i' if signed else 'u'}{bits // 8}")
    uid = _text(dataset, "SeriesInstanceUID")
    if not uid:
        raise InputError(f"{path} states no SeriesInstanceUID.")
    tr = _number(dataset, "RepetitionTime")
    if tr is None:
        shared = _items(dataset, "SharedFunctionalGroupsSequence")
        timing = _items(shared[0], "MRTimingAndRelatedParametersSequence") if shared else []
        tr = _number(timing[0], "RepetitionTime") if timing else None
    return _Common(
        manufacturer=manufacturer,
        series=_digest("dicom", uid),
        series_number=_integer(dataset, "SeriesNumber"),
        tr=tr / 1000.0 if tr and tr > 0 else None,
        rows=rows,
        columns=columns,
        n_frames=_integer(dataset, "NumberOfFrames") or 1,
        dtype=dtype,
    )


def _digest(kind: str, text: str) -> str:
    """A stable one-way name for a series: no UID, path or name can be read back from it."""
    return f"{kind}-{hashlib.blake2b(text.encode(), digest_size=12, person=b'rtfmri-series').hexdigest()}"


def _dicom_kind(path: Path, dataset: Dataset, manufacturer: str, enhanced: bool, format: str) -> str:  # noqa: A002
    siemens = manufacturer.startswith("SIEMENS")
    ge = manufacturer.startswith("GE ") or manufacturer == "GE" or "GENERAL ELECTRIC" in manufacturer
    philips = manufacturer.startswith("PHILIPS")
    mosaic = not enhanced and "MOSAIC" in {value.upper() for value in _texts(dataset, "ImageType")}
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
    return {
        "siemens-mosaic": "a Siemens mosaic", "siemens-enhanced": "a Siemens enhanced multi-frame image",
        "enhanced": "an enhanced multi-frame image", "ge-slice": "a GE slice", "philips-slice":
        "a Philips slice", "dicom-slice": "a single-slice image",
    }[kind]


def _pixels(path: Path, dataset: Dataset, common: _Common) -> np.ndarray:
    """The stored pixel values, shape (frames, rows, columns), unscaled, in native byte order.

    Native pixel data is viewed in the bytes pydicom read, without a copy (that they are all
    there is checked in :func:`_parse_dicom`); compressed pixel data goes through pydicom's
    decoders.
    """
    shape = (common.n_frames, common.rows, common.columns)
    element = dataset.get_item(_PIXEL_DATA)  # a RawDataElement: its stated length, its bytes as read
    if element.length == 0xFFFFFFFF:  # encapsulated (compressed) frames
        return _decode_compressed(path, dataset, shape)
    count = shape[0] * shape[1] * shape[2]
    needed = count * common.dtype.itemsize
    if len(element.value) < needed:
        raise InputError(f"{path}'s pixel data holds {len(element.value)} bytes. Expected {needed} for "
                         f"{shape[0]} frame(s) of {shape[1]}x{shape[2]} at {common.dtype.itemsize * 8} bits.")
    pixels = np.frombuffer(element.value, dtype=common.dtype, count=count).reshape(shape)
    return pixels if pixels.dtype.isnative else pixels.astype(pixels.dtype.newbyteorder("="))


def _decode_compressed(path: Path, dataset: Dataset, shape: tuple[int, int, int]) -> np.ndarray:
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    name = syntax.name if syntax else "transfer syntax not stated"
    try:
        array = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types when a decoder is missing or fails
        raise InputError(f"{path}'s compressed pixel data ({name}) cannot be decoded: "
                         f"{type(exc).__name__}: {exc}") from None
    return np.asarray(array).reshape(shape)


def _scaled(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """The stored integers when the scaling is the identity, else float32 values."""
    if slope == 1.0 and intercept == 0.0:
        return values
    return values.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _orientation(path: Path, position: Sequence[float], orientation: Sequence[float],
                 spacing: Sequence[float]) -> np.ndarray:
    """LPS 4x4 of one slice: columns row direction x column spacing, column direction x
    row spacing, unit normal, position of the first pixel."""
    if len(position) != 3 or len(orientation) != 6 or len(spacing) != 2:
        raise InputError(f"{path} should state ImagePositionPatient (3 numbers), ImageOrientationPatient (6) "
                         f"and PixelSpacing (2). Got {len(position)}, {len(orientation)} and {len(spacing)}.")
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    norm = np.linalg.norm(normal)
    if norm < 1e-3:
        raise InputError(f"{path}'s ImageOrientationPatient {orientation} has parallel axes.")
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[1]
    affine[:3, 1] = column * spacing[0]
    affine[:3, 2] = normal / norm
    affine[:3, 3] = position
    return affine


def _regular_spacing(keys: np.ndarray, positions: np.ndarray, normal: np.ndarray, where: str) -> float:
    """The spacing of sorted slices along ``normal``.

    InputError if two share a position, if the steps are irregular, or if the slices are
    shifted in-plane (sheared) rather than stacked along the normal.
    """
    if len(keys) == 1:
        return 1.0
    steps = np.diff(keys)
    if steps.min() < SLICE_TOLERANCE_MM:
        index = int(np.argmin(steps))
        raise InputError(f"Two slices of {where} lie at one position "
                         f"({keys[index]:.3f} mm along the normal).")
    spacing = float((keys[-1] - keys[0]) / (len(keys) - 1))
    if np.abs(steps - spacing).max() > SLICE_TOLERANCE_MM:
        raise InputError(f"The slices of {where} should be evenly spaced. Got steps from {steps.min():.4f} "
                         f"to {steps.max():.4f} mm.")
    shift = positions - positions[0] - np.outer(keys - keys[0], normal)
    worst = float(np.sqrt((shift**2).sum(axis=1)).max())
    if worst > SHEAR_TOLERANCE_MM:
        raise InputError(f"The slices of {where} should be stacked along their normal. They are shifted "
                         f"in-plane by up to {worst:.3f} mm (a tilted gantry?).")
    return spacing


def _slice_key(affine_ras: np.ndarray) -> float:
    return float(affine_ras[:3, 2] @ affine_ras[:3, 3])


# --------------------------------------------------------------------------- Siemens mosaic
def _dicomwrappers():  # noqa: ANN202 - a module
    with warnings.catch_warnings():  # nibabel warns that nicom is experimental, on import
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    return dicomwrappers


def _mosaic_piece(path: Path, dataset: Dataset, common: _Common) -> Piece:
    """A Siemens mosaic, unpacked and located by nibabel's ``MosaicWrapper`` (its CSA header
    gives the number of slices and the slice normal)."""
    try:
        wrapper = _dicomwrappers().MosaicWrapper(dataset)
        mosaic, affine = wrapper.get_unscaled_data(), wrapper.affine
    except Exception as exc:  # nibabel raises WrapperError, CSAReadError, ValueError, ...
        raise InputError(f"{path} cannot be unpacked as a Siemens mosaic by nibabel: {exc}") from None
    # nibabel's arrays are (row, column, slice); pieces are (column, row, slice).
    data = np.ascontiguousarray(mosaic.transpose(1, 0, 2), dtype=mosaic.dtype.newbyteorder("="))
    affine = LPS_TO_RAS @ affine[:, [1, 0, 2, 3]]
    volume_key = _integer(dataset, "AcquisitionNumber")
    if volume_key is None:
        volume_key = _integer(dataset, "InstanceNumber")
    if volume_key is None:
        raise InputError(f"{path} states neither AcquisitionNumber nor InstanceNumber.")
    return Piece("siemens-mosaic", common.series, common.series_number, volume_key, None,
                 int(wrapper.n_mosaic), _scaled(data, *_rescale(dataset)), affine, common.tr)


def _rescale(dataset: Dataset, cache: dict | None = None) -> tuple[float, float]:
    slope = _number(dataset, "RescaleSlope", cache)
    intercept = _number(dataset, "RescaleIntercept", cache)
    return (1.0 if slope is None or slope == 0 else slope), (intercept or 0.0)


# --------------------------------------------------------------------------- enhanced
def _functional_group(frame: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The item of functional group ``sequence`` for one frame (per-frame, else shared)."""
    items = _items(frame, sequence) or _items(shared, sequence)
    return items[0] if items else None


def _enhanced_pieces(path: Path, dataset: Dataset, common: _Common, frames: np.ndarray,
                     kind: str) -> list[Piece]:
    per_frame = _items(dataset, "PerFrameFunctionalGroupsSequence")
    if len(per_frame) != common.n_frames:
        raise InputError(f"{path} states {common.n_frames} frames but describes {len(per_frame)} in its "
                         f"PerFrameFunctionalGroupsSequence.")
    shared_items = _items(dataset, "SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    philips_scale = _philips_scale(dataset) if common.manufacturer.startswith("PHILIPS") else None
    default_scale = philips_scale if philips_scale is not None else _rescale(dataset)
    default_volume = _integer(dataset, "AcquisitionNumber") or 1
    # Frames of one volume share their orientation, spacing and scaling: decode each once.
    decoded: dict = {}
    planes: dict[tuple[tuple[float, ...], tuple[float, ...]], np.ndarray] = {}
    bases, positions, scaling, volumes = [], [], [], []
    stated_spacing = None
    for index, frame in enumerate(per_frame):
        position = _functional_group(frame, shared, "PlanePositionSequence")
        orientation = _functional_group(frame, shared, "PlaneOrientationSequence")
        measures = _functional_group(frame, shared, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise InputError(f"{path}: frame {index + 1} lacks a plane position, plane orientation or "
                             f"pixel measures functional group.")
        plane = (_numbers(orientation, "ImageOrientationPatient", decoded),
                 _numbers(measures, "PixelSpacing", decoded))
        if plane not in planes:
            planes[plane] = _orientation(path, (0.0, 0.0, 0.0), *plane)
        bases.append(planes[plane])
        positions.append(_numbers(position, "ImagePositionPatient"))
        if stated_spacing is None:
            stated_spacing = _number(measures, "SpacingBetweenSlices") or _number(measures, "SliceThickness")
        transform = _functional_group(frame, shared, "PixelValueTransformationSequence")
        own_scale = philips_scale is None and transform is not None
        scaling.append(_rescale(transform, decoded) if own_scale else default_scale)
        content = _functional_group(frame, None, "FrameContentSequence")
        temporal = _integer(content, "TemporalPositionIndex") if content is not None else None
        volumes.append(temporal if temporal is not None else default_volume)
    if any(len(position) != 3 for position in positions):
        raise InputError(f"{path}: every frame should state ImagePositionPatient as 3 numbers.")
    geometry = (bases, np.array(positions, dtype=np.float64), stated_spacing or 1.0)
    pieces = []
    for volume_key in sorted(set(volumes)):
        members = [index for index, key in enumerate(volumes) if key == volume_key]
        pieces.append(_enhanced_volume(path, common, frames, geometry, scaling, members, volume_key, kind))
    return pieces


def _enhanced_volume(path: Path, common: _Common, frames: np.ndarray,
                     geometry: tuple[list[np.ndarray], np.ndarray, float], scaling: list[tuple[float, float]],
                     members: list[int], volume_key: int, kind: str) -> Piece:
    bases, all_positions, stated_spacing = geometry
    base = bases[members[0]]
    for index in members:
        if bases[index] is not base and np.abs(bases[index] - base).max() > ORIENTATION_TOLERANCE:
            raise InputError(f"{path}: the frames of volume {volume_key} differ in orientation or "
                             f"pixel spacing.")
    normal = base[:3, 2]
    positions = all_positions[members]
    keys = positions @ normal
    order = np.argsort(keys, kind="stable")
    spacing = _regular_spacing(keys[order], positions[order], normal, f"{path} volume {volume_key}")
    if len(members) == 1:
        spacing = stated_spacing
    chosen = [members[index] for index in order]
    in_file_order = chosen == list(range(chosen[0], chosen[0] + len(chosen)))
    data = (frames[chosen[0]:chosen[-1] + 1] if in_file_order else frames[chosen]).transpose(2, 1, 0)
    factors = {scaling[index] for index in chosen}
    if len(factors) == 1:
        data = _scaled(np.ascontiguousarray(data), *factors.pop())
    else:
        slopes = np.array([scaling[index][0] for index in chosen], dtype=np.float32)
        intercepts = np.array([scaling[index][1] for index in chosen], dtype=np.float32)
        data = np.ascontiguousarray(data.astype(np.float32) * slopes + intercepts)
    affine = base.copy()
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[order[0]]
    return Piece(kind, common.series, common.series_number, volume_key, None, len(members), data,
                 LPS_TO_RAS @ affine, common.tr)


# --------------------------------------------------------------------------- per-slice
def _slice_piece(path: Path, dataset: Dataset, common: _Common, pixels: np.ndarray, kind: str) -> Piece:
    if kind == "philips-slice":
        scale = _philips_scale(dataset)
        slope, intercept = scale if scale is not None else _rescale(dataset)
        n_slices = _private_integer(dataset, 0x2001, "Philips Imaging DD 001", 0x18)
    else:
        slope, intercept = _rescale(dataset)
        n_slices = _private_integer(dataset, 0x0021, "GEMS_RELA_01", 0x4F) if kind == "ge-slice" else None
    affine = LPS_TO_RAS @ _orientation(path, _numbers(dataset, "ImagePositionPatient"),
                                       _numbers(dataset, "ImageOrientationPatient"),
                                       _numbers(dataset, "PixelSpacing"))
    volume_key = _slice_volume_key(path, dataset, kind, n_slices)
    data = _scaled(np.ascontiguousarray(pixels.T), slope, intercept)
    return Piece(kind, common.series, common.series_number, volume_key, _slice_key(affine),
                 n_slices if n_slices and n_slices > 0 else None, data, affine, common.tr)


def _private_integer(dataset: Dataset, group: int, creator: str, offset: int) -> int | None:
    tag = _private_tag(dataset, group, creator, offset)
    return _integer(dataset, tag) if tag is not None else None


def _slice_volume_key(path: Path, dataset: Dataset, kind: str, n_slices: int | None) -> int:
    """Which volume a slice belongs to.

    TemporalPositionIdentifier when stated. Otherwise GE numbers the images of a run
    volume after volume, so a slice's volume is (InstanceNumber - 1) // slices + 1; other
    single-slice images number volumes with AcquisitionNumber (Philips: no fallback).
    """
    temporal = _integer(dataset, "TemporalPositionIdentifier")
    if temporal is not None:
        return temporal
    if kind == "ge-slice":
        instance = _integer(dataset, "InstanceNumber")
        if instance is not None and n_slices:
            return (instance - 1) // n_slices + 1
        raise InputError(f"{path} states no TemporalPositionIdentifier, and no InstanceNumber and "
                         f"LocationsInAcquisition to derive it from.")
    if kind == "dicom-slice":
        acquisition = _integer(dataset, "AcquisitionNumber")
        if acquisition is not None:
            return acquisition
    alternative = "" if kind == "philips-slice" else " or AcquisitionNumber"
    raise InputError(f"{path} states no TemporalPositionIdentifier{alternative}, so its volume is unknown.")


def _philips_scale(dataset: Dataset) -> tuple[float, float] | None:
    """The slope and intercept of Philips' floating-point values, as dcm2niix applies them.

    dcm2niix's default (``-p y``, JSON key ``UsePhilipsFloatNotDisplayScaling: 1``) turns
    the stored value PV into the "precise" value FP = (PV * RS + RI) / (RS * SS), with the
    rescale slope RS and intercept RI (public, else Philips' private copies) and the private
    scale slope SS (2005,xx0E). Without SS it applies the public rescale only (None here).
    """
    tag = _private_tag(dataset, 0x2005, "Philips MR Imaging DD 001", 0x0E)
    scale_slope = _number(dataset, tag) if tag is not None else None
    if scale_slope is None or not math.isfinite(scale_slope) or scale_slope == 0:
        return None
    slope = _number(dataset, "RescaleSlope")
    intercept = _number(dataset, "RescaleIntercept")
    if slope is None:
        private = _private_tag(dataset, 0x2005, "Philips MR Imaging DD 005", 0x0A)
        slope = _number(dataset, private) if private is not None else None
        private = _private_tag(dataset, 0x2005, "Philips MR Imaging DD 005", 0x09)
        intercept = _number(dataset, private) if private is not None else intercept
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = intercept or 0.0
    return 1.0 / scale_slope, intercept / (slope * scale_slope)


# =========================================================================== PAR/REC
def _series_pattern(path: Path) -> tuple[str, int | None]:
    """The file-name stem without its trailing number, and that number (None if none)."""
    stem = path.name
    for suffix in (".nii.gz", ".nii", ".par", ".PAR", ".Par"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = re.search(r"(\d+)$", stem)
    if match is None:
        return stem, None
    return stem[: match.start()].rstrip("-_. "), int(match.group(1))


def _read_parrec(path: Path, buf: bytes) -> list[Piece]:
    """The volumes of one PAR file and the REC beside it (nibabel reads both).

    Choices, each checked against dcm2niix on Philips real-time dumps:

    - Image type: the magnitude (type 0) when present, else the lowest type number. Real-time
      dumps hold types 16 and 17 (17 has intercept -3142 and slope 1.53: a phase in mrad).
    - Values: the display values DV = PV * RS + RI of each slice, which is what dcm2niix
      writes for a PAR whose scaling varies between slices (real-time dumps rescale every
      slice). dcm2niix writes FP = DV / (RS * SS) only when the scaling is constant; doing
      that per file would switch conventions within a series.
    - Geometry: angulation and off-centre from the image lines (their mean over one
      dynamic's slices), not from the general information, which dumps fill with zeros.
    - volume_key: the dynamic number when the file holds several dynamics (or another than
      1), else the "Acquisition nr" (dumps hold one dynamic each and count acquisitions).
    - TR: None when the header states less than 10 ms (dumps write a placeholder of 1 ms).
    """
    from nibabel import parrec

    if _PAR_END not in buf:
        raise IncompleteFileError(f"{path} has no END OF DATA DESCRIPTION line yet: it is probably still "
                                  f"being written; try again later.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = parrec.PARRECHeader.from_fileobj(io.StringIO(buf.decode("latin-1")),
                                                      permit_truncated=False, strict_sort=True)
    except Exception as exc:  # nibabel raises PARRECError, ValueError, ... on broken headers
        raise InputError(f"{path} is a PAR file nibabel cannot read: {exc}") from None
    rec = _rec_path(path)
    if rec is None:
        raise IncompleteFileError(f"{path} has no REC file beside it yet; try again later.")
    defs = header.image_defs
    bits = int(defs["image pixel size"][0])
    x_size, y_size = (int(value) for value in defs["recon resolution"][0])
    # nibabel and dcm2niix read the REC's images in the order of the PAR's image lines.
    needed = max(len(defs), int(defs["index in REC file"].max()) + 1) * x_size * y_size * bits // 8
    rec_size = rec.stat().st_size
    if rec_size < needed:
        raise IncompleteFileError(f"{rec} holds {rec_size} bytes, {needed - rec_size} short of what its "
                                  f"PAR describes: it is probably still being written; try again later.")
    types = sorted(set(defs["image_type_mr"].tolist()))
    chosen_type = 0 if 0 in types else types[0]
    chosen = defs[defs["image_type_mr"] == chosen_type]
    info = dict(header.general_info)
    first_dynamic = chosen[chosen["dynamic scan number"] == chosen["dynamic scan number"].min()]
    # The general information of real-time dumps is all zeros; the image lines hold the geometry.
    info["angulation"] = np.asarray(chosen["image angulation"][0], dtype=np.float64)
    info["off_center"] = np.asarray(first_dynamic["image offcentre"], dtype=np.float64).mean(axis=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            located = parrec.PARRECHeader(info, defs, permit_truncated=False, strict_sort=True)
            affine = located.get_affine(origin="scanner")
            labels = {key: np.asarray(value) for key, value in located.get_volume_labels().items()}
            with rec.open("rb") as handle:
                proxy = parrec.PARRECArrayProxy(handle, located, mmap=False, scaling="dv")
                data = np.asarray(proxy, dtype=np.float64)
    except Exception as exc:  # nibabel raises PARRECError, ValueError, ... on odd headers
        raise InputError(f"{path} cannot be read with its REC: {exc}") from None
    if data.ndim == 3:
        data = data[..., np.newaxis]
    n_volumes = data.shape[3]
    types_per_volume = labels.pop("image_type_mr", np.full(n_volumes, chosen_type))
    dynamics = labels.pop("dynamic scan number", np.full(n_volumes, int(chosen["dynamic scan number"][0])))
    if labels:
        raise InputError(f"{path} holds several {', '.join(labels)} per dynamic; this reader reads one "
                         f"image per slice and dynamic.")
    pattern, _ = _series_pattern(path)
    series = _digest("parrec", f"{path.parent.resolve()}/{pattern}")
    kept = [index for index in range(n_volumes) if types_per_volume[index] == chosen_type]
    one_dynamic = len(kept) == 1 and int(dynamics[kept[0]]) == 1 and int(info["max_dynamics"]) <= 1
    acquisition = int(info.get("acq_nr", 0))
    tr_values = np.atleast_1d(info.get("repetition_time", []))
    # A real TR of a volume is never below 10 ms: real-time dumps write a placeholder of 1 ms.
    tr = float(tr_values[0]) / 1000.0 if len(tr_values) and tr_values[0] >= 10 else None
    n_slices = int(info["max_slices"]) or None
    return [Piece("parrec", series, None, acquisition if one_dynamic else int(dynamics[index]), None,
                  n_slices, np.ascontiguousarray(data[..., index], dtype=np.float32), affine, tr)
            for index in kept]


def _rec_path(path: Path) -> Path | None:
    for suffix in (".rec", ".REC", ".Rec"):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


# =========================================================================== NIfTI
def _read_nifti(path: Path, buf: bytes) -> list[Piece]:
    gzipped = buf[:2] == b"\x1f\x8b"
    if gzipped:
        try:
            buf = gzip.decompress(buf)
        except EOFError:
            raise IncompleteFileError(f"{path} ends before its gzip stream does: it is probably still "
                                      f"being written; try again later.") from None
        except (OSError, zlib.error) as exc:
            raise InputError(f"{path} is a broken gzip stream: {exc}") from None
    version = _nifti_version(buf)
    image_class = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    header_size = 544 if version == 2 else 352
    if len(buf) < header_size:
        raise IncompleteFileError(f"{path} holds {len(buf)} bytes, less than a NIfTI header; "
                                  f"try again later.")
    try:
        header = image_class.header_class.from_fileobj(io.BytesIO(buf))
    except Exception as exc:  # nibabel raises HeaderDataError, ValueError, ...
        raise InputError(f"{path} has a broken NIfTI header: {exc}") from None
    shape = header.get_data_shape()
    needed = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    if len(buf) < needed:
        raise IncompleteFileError(f"{path} holds {len(buf)} bytes{' (uncompressed)' if gzipped else ''}, "
                                  f"{needed - len(buf)} short of its {shape} voxels: it is probably still "
                                  f"being written; try again later.")
    if len(shape) not in (3, 4) and not (len(shape) == 5 and shape[3] == 1):
        raise ForeignFileError(f"{path} is a {len(shape)}D NIfTI image of shape {shape}, not an fMRI "
                               f"volume or run; skipped.")
    try:
        image = image_class.from_bytes(buf)
        data = _nifti_voxels(image)
    except Exception as exc:  # nibabel raises many types on broken files
        raise InputError(f"Cannot read the voxels of {path}: {exc}") from None
    if data.ndim == 5:
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if data.shape[3] == 1 and _is_mask(data):
        raise ForeignFileError(f"{path} holds only values in [0, 1]: a mask or probability map, not an "
                               f"fMRI volume; skipped.")
    pattern, number = _series_pattern(path)
    series = _digest("nifti", f"{path.parent.resolve()}/{pattern}")
    tr = _nifti_tr(image, path)
    affine = image.affine
    if data.shape[3] == 1:
        return [Piece("nifti", series, None, number or 0, None, data.shape[2],
                      np.ascontiguousarray(data[..., 0]), affine, tr)]
    return [Piece("nifti", series, None, index, None, data.shape[2], np.ascontiguousarray(data[..., index]),
                  affine, tr) for index in range(data.shape[3])]


def _nifti_voxels(image: nib.Nifti1Image) -> np.ndarray:
    """Stored values when the header asks for no scaling, else float32 (as dcm2niix's users see them)."""
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    identity = (slope is None or not np.isfinite(slope) or slope in (0.0, 1.0)) and (
        intercept is None or not np.isfinite(intercept) or intercept == 0.0)
    if identity:
        return np.asanyarray(image.dataobj.get_unscaled())
    return np.asarray(image.dataobj, dtype=np.float32)


def _is_mask(data: np.ndarray) -> bool:
    return bool(data.size) and float(data.min()) >= 0.0 and float(data.max()) <= 1.0


def _nifti_tr(image: nib.Nifti1Image, path: Path) -> float | None:
    zooms = image.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0 and image.shape[3:4] != (1,):
        unit = image.header.get_xyzt_units()[1]
        return float(zooms[3]) / (1000.0 if unit == "msec" else 1e6 if unit == "usec" else 1.0)
    sidecar = Path(re.sub(r"\.nii(\.gz)?$", ".json", str(path)))
    if sidecar != path and sidecar.is_file():
        try:
            value = json.loads(sidecar.read_text()).get("RepetitionTime")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None
