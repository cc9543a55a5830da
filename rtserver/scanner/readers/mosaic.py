"""Siemens classic mosaic DICOM: one file per volume, its slices tiled in one image.

nibabel's ``MosaicWrapper`` unpacks the tiles and locates the volume from the Siemens CSA
header (the number of slices, the slice normal); this module turns its result into a
:class:`~rtserver.scanner.readers.pieces.Piece` in this project's axes and world space.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
from pydicom.dataset import Dataset

from rtserver.errors import InputError
from rtserver.rigid import LPS_TO_RAS
from rtserver.scanner.readers.dicom_common import Common
from rtserver.scanner.readers.dicom_values import integer_of, rescale
from rtserver.scanner.readers.pieces import Piece, scaled

__all__ = ["mosaic_piece"]


def _dicomwrappers() -> ModuleType:
    """Import nibabel's DICOM wrappers without the warning that nicom is experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    return dicomwrappers


def mosaic_piece(path: Path, dataset: Dataset, image: Common) -> Piece:
    """Read a Siemens mosaic, unpacked and located by nibabel's ``MosaicWrapper``.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    dataset : pydicom.dataset.Dataset
        Its data set.
    image : Common
        Its image header fields.

    Returns
    -------
    Piece
        The whole volume; its ``volume_key`` is the AcquisitionNumber (else the
        InstanceNumber), its values the stored integers after the public rescale.

    Raises
    ------
    InputError
        If nibabel cannot unpack the mosaic, or the file states neither number.
    """
    try:
        wrapper = _dicomwrappers().MosaicWrapper(dataset)
        mosaic, affine = wrapper.get_unscaled_data(), wrapper.affine
    except Exception as exc:  # nibabel raises WrapperError, CSAReadError, ValueError, ...
        raise InputError(f"{path} cannot be unpacked as a Siemens mosaic by nibabel: {exc}") from None
    # nibabel's arrays are (row, column, slice); pieces are (column, row, slice).
    data = np.ascontiguousarray(mosaic.transpose(1, 0, 2), dtype=mosaic.dtype.newbyteorder("="))
    affine = LPS_TO_RAS @ affine[:, [1, 0, 2, 3]]
    volume_key = integer_of(dataset, "AcquisitionNumber")
    if volume_key is None:
        volume_key = integer_of(dataset, "InstanceNumber")
    if volume_key is None:
        raise InputError(f"{path} states neither AcquisitionNumber nor InstanceNumber.")
    return Piece("siemens-mosaic", image.series, image.series_number, volume_key, None,
                 int(wrapper.n_mosaic), scaled(data, *rescale(dataset)), affine, image.tr)
