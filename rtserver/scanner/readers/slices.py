"""Classic per-slice DICOM (GE, Philips and other vendors): one file per slice.

Each file becomes one slice piece, located in world space and keyed by its position along
the slice normal; the series assembler stacks the slices of a volume. Which volume a slice
belongs to, how many slices a volume has, and how its values are scaled differ by vendor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from rtserver.errors import InputError
from rtserver.rigid import LPS_TO_RAS
from rtserver.scanner.readers.dicom_common import Common, slice_affine
from rtserver.scanner.readers.dicom_values import (
    integer_of,
    numbers_of,
    philips_scale,
    private_integer,
    rescale,
)
from rtserver.scanner.readers.pieces import Piece, scaled

__all__ = ["slice_piece"]


def slice_piece(path: Path, dataset: Dataset, image: Common, pixels: np.ndarray, kind: str) -> Piece:
    """Read one slice of a per-slice series.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    dataset : pydicom.dataset.Dataset
        Its data set.
    image : Common
        Its image header fields.
    pixels : numpy.ndarray
        Its stored values, (rows, columns).
    kind : str
        ``"ge-slice"``, ``"philips-slice"`` or ``"dicom-slice"``.

    Returns
    -------
    Piece
        A slice: Philips' precise float scaling for Philips (else the public rescale), the
        slice count from GE's or Philips' private elements when they state it.

    Raises
    ------
    InputError
        If the slice's geometry or its volume cannot be told from the file.
    """
    if kind == "philips-slice":
        scale = philips_scale(dataset)
        slope, intercept = scale if scale is not None else rescale(dataset)
        n_slices = private_integer(dataset, 0x2001, "Philips Imaging DD 001", 0x18)
    else:
        slope, intercept = rescale(dataset)
        n_slices = private_integer(dataset, 0x0021, "GEMS_RELA_01", 0x4F) if kind == "ge-slice" else None
    affine = LPS_TO_RAS @ slice_affine(path, numbers_of(dataset, "ImagePositionPatient"),
                                       numbers_of(dataset, "ImageOrientationPatient"),
                                       numbers_of(dataset, "PixelSpacing"))
    volume_key = _slice_volume_key(path, dataset, kind, n_slices)
    data = scaled(np.ascontiguousarray(pixels.T), slope, intercept)
    return Piece(kind, image.series, image.series_number, volume_key, _slice_key(affine),
                 n_slices if n_slices and n_slices > 0 else None, data, affine, image.tr)


def _slice_key(affine_ras: np.ndarray) -> float:
    """Return a slice's position (mm) along its unit normal."""
    return float(affine_ras[:3, 2] @ affine_ras[:3, 3])


def _slice_volume_key(path: Path, dataset: Dataset, kind: str, n_slices: int | None) -> int:
    """Which volume a slice belongs to.

    TemporalPositionIdentifier when stated. Otherwise GE numbers the images of a run
    volume after volume, so a slice's volume is (InstanceNumber - 1) // slices + 1; other
    single-slice images number volumes with AcquisitionNumber (Philips: no fallback).
    """
    temporal = integer_of(dataset, "TemporalPositionIdentifier")
    if temporal is not None:
        return temporal
    if kind == "ge-slice":
        instance = integer_of(dataset, "InstanceNumber")
        if instance is not None and n_slices:
            return (instance - 1) // n_slices + 1
        raise InputError(f"{path} states no TemporalPositionIdentifier, and no InstanceNumber and "
                         f"LocationsInAcquisition to derive it from.")
    if kind == "dicom-slice":
        acquisition = integer_of(dataset, "AcquisitionNumber")
        if acquisition is not None:
            return acquisition
    alternative = "" if kind == "philips-slice" else " or AcquisitionNumber"
    raise InputError(f"{path} states no TemporalPositionIdentifier{alternative}, so its volume is unknown.")
