"""What every DICOM reader takes from a file: its image header, its stored pixels, a slice's place.

:func:`common` reads the top-level fields every layout needs (image size and data type,
series, TR), :func:`pixels` the stored values of every frame, and :func:`slice_affine` the
position and orientation of one slice or frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from rtserver.errors import ForeignFileError, InputError
from rtserver.scanner.readers.dicom_values import integer_of, items_of, number_of, text_of
from rtserver.scanner.readers.pieces import series_digest

__all__ = ["PIXEL_DATA", "Common", "common", "pixels", "slice_affine"]

#: The Pixel Data tag.
PIXEL_DATA = 0x7FE00010


@dataclass
class Common:
    """What every DICOM reader needs from the top-level data set.

    Attributes
    ----------
    manufacturer : str
        The Manufacturer, upper case ("" when not stated).
    series : str
        The one-way digest of the SeriesInstanceUID.
    series_number : int or None
        The SeriesNumber.
    tr : float or None
        The RepetitionTime in seconds (top level, else the shared functional groups').
    rows, columns : int
        The size of one frame.
    n_frames : int
        NumberOfFrames (1 when not stated).
    dtype : numpy.dtype
        The stored pixels' type, in the file's byte order.
    """

    manufacturer: str
    series: str
    series_number: int | None
    tr: float | None
    rows: int
    columns: int
    n_frames: int
    dtype: np.dtype


def common(path: Path, dataset: Dataset, manufacturer: str) -> Common:
    """Read the fields of a DICOM image every reader needs.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    dataset : pydicom.dataset.Dataset
        Its data set.
    manufacturer : str
        Its Manufacturer, upper case.

    Returns
    -------
    Common

    Raises
    ------
    ForeignFileError
        If the image has more than one sample per pixel (colour).
    InputError
        If Rows, Columns, BitsAllocated (8, 16 or 32) or the SeriesInstanceUID are missing.
    """
    rows, columns = integer_of(dataset, "Rows"), integer_of(dataset, "Columns")
    bits = integer_of(dataset, "BitsAllocated")
    if not rows or not columns or bits not in (8, 16, 32):
        raise InputError(f"{path} should state Rows, Columns and BitsAllocated 8, 16 or 32. "
                         f"Got {rows}, {columns} and {bits}.")
    samples = integer_of(dataset, "SamplesPerPixel") or 1
    if samples != 1:
        raise ForeignFileError(f"{path} is a {samples}-sample (colour) image, not an MR magnitude image; "
                               f"skipped.")
    signed = integer_of(dataset, "PixelRepresentation") == 1
    big_endian = dataset.original_encoding[1] is False
    dtype = np.dtype(f"{'>' if big_endian else '<'}{'i' if signed else 'u'}{bits // 8}")
    uid = text_of(dataset, "SeriesInstanceUID")
    if not uid:
        raise InputError(f"{path} states no SeriesInstanceUID.")
    tr = number_of(dataset, "RepetitionTime")
    if tr is None:
        shared = items_of(dataset, "SharedFunctionalGroupsSequence")
        timing = items_of(shared[0], "MRTimingAndRelatedParametersSequence") if shared else []
        tr = number_of(timing[0], "RepetitionTime") if timing else None
    return Common(
        manufacturer=manufacturer,
        series=series_digest("dicom", uid),
        series_number=integer_of(dataset, "SeriesNumber"),
        tr=tr / 1000.0 if tr and tr > 0 else None,
        rows=rows,
        columns=columns,
        n_frames=integer_of(dataset, "NumberOfFrames") or 1,
        dtype=dtype,
    )


def pixels(path: Path, dataset: Dataset, image: Common) -> np.ndarray:
    """Return the stored pixel values, (frames, rows, columns), unscaled, in native byte order.

    Native pixel data is viewed in the bytes pydicom read, without a copy (that they are all
    there is checked when the file is parsed); compressed pixel data goes through pydicom's
    decoders.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    dataset : pydicom.dataset.Dataset
        Its data set, holding pixel data.
    image : Common
        Its image size and data type.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    InputError
        If the native pixel data is shorter than the image size states, or compressed pixel
        data cannot be decoded.
    """
    shape = (image.n_frames, image.rows, image.columns)
    element = dataset.get_item(PIXEL_DATA)  # a RawDataElement: its stated length, its bytes as read
    if element.length == 0xFFFFFFFF:  # encapsulated (compressed) frames
        return _decode_compressed(path, dataset, shape)
    count = shape[0] * shape[1] * shape[2]
    needed = count * image.dtype.itemsize
    if len(element.value) < needed:
        raise InputError(f"{path}'s pixel data holds {len(element.value)} bytes. Expected {needed} for "
                         f"{shape[0]} frame(s) of {shape[1]}x{shape[2]} at {image.dtype.itemsize * 8} bits.")
    values = np.frombuffer(element.value, dtype=image.dtype, count=count).reshape(shape)
    return values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))


def _decode_compressed(path: Path, dataset: Dataset, shape: tuple[int, int, int]) -> np.ndarray:
    """Compressed frames, decoded by pydicom's decoders, as (frames, rows, columns)."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    name = syntax.name if syntax else "transfer syntax not stated"
    try:
        array = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types when a decoder is missing or fails
        raise InputError(f"{path}'s compressed pixel data ({name}) cannot be decoded: "
                         f"{type(exc).__name__}: {exc}") from None
    return np.asarray(array).reshape(shape)


def slice_affine(path: Path, position: Sequence[float], orientation: Sequence[float],
                 spacing: Sequence[float]) -> np.ndarray:
    """Make the LPS 4x4 matrix of one slice.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    position : sequence of float
        ImagePositionPatient: the first pixel's centre (mm, LPS).
    orientation : sequence of float
        ImageOrientationPatient: the row and column direction cosines.
    spacing : sequence of float
        PixelSpacing: the row and column spacing (mm).

    Returns
    -------
    numpy.ndarray
        Columns: row direction x column spacing, column direction x row spacing, unit
        normal, position of the first pixel.

    Raises
    ------
    InputError
        If an element holds the wrong number of values, or the two directions are parallel.
    """
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
