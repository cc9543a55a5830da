"""NIfTI-1 and NIfTI-2 files: a 3D file per volume, or one 4D file per run."""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.readers.pieces import Piece, series_digest, series_pattern
from rtserver.scanner.readers.sniff import nifti_version

__all__ = ["read_nifti"]


def read_nifti(path: Path, buf: bytes) -> list[Piece]:
    """Read the volumes of one NIfTI file as it stands in a watched folder, one piece each.

    Parameters
    ----------
    path : Path
        The file (``.nii`` or ``.nii.gz``).
    buf : bytes
        Its bytes so far.

    Returns
    -------
    list of Piece
        A 3D file (or 4D of one volume): one piece keyed by the number ending its name (0
        without one). A 4D file: one piece per volume, keyed by its index. The series is a
        digest of the folder and the file-name pattern.

    Raises
    ------
    IncompleteFileError
        If the file (or its gzip stream) ends before its header or its voxels do.
    ForeignFileError
        If it is not a volume or run, or is a single volume of values in [0, 1] (a mask or
        probability map).
    InputError
        If the gzip stream or the header is broken, or the voxels cannot be read.
    """
    gzipped = buf[:2] == b"\x1f\x8b"
    if gzipped:
        try:
            buf = gzip.decompress(buf)
        except EOFError:
            raise IncompleteFileError(f"{path} ends before its gzip stream does: it is probably still "
                                      f"being written; try again later.") from None
        except (OSError, zlib.error) as exc:
            raise InputError(f"{path} is a broken gzip stream: {exc}") from None
    version = nifti_version(buf)
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
    pattern, number = series_pattern(path)
    series = series_digest("nifti", f"{path.parent.resolve()}/{pattern}")
    tr = _nifti_tr(image, path)
    affine = image.affine
    if data.shape[3] == 1:
        return [Piece("nifti", series, None, number or 0, None, data.shape[2],
                      np.ascontiguousarray(data[..., 0]), affine, tr)]
    return [Piece("nifti", series, None, index, None, data.shape[2], np.ascontiguousarray(data[..., index]),
                  affine, tr) for index in range(data.shape[3])]


def _nifti_voxels(image: nib.Nifti1Image) -> np.ndarray:
    """Return the stored values when the header asks for no scaling, else float32 values."""
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    identity = (slope is None or not np.isfinite(slope) or slope in (0.0, 1.0)) and (
        intercept is None or not np.isfinite(intercept) or intercept == 0.0)
    if identity:
        return np.asanyarray(image.dataobj.get_unscaled())
    return np.asarray(image.dataobj, dtype=np.float32)


def _is_mask(data: np.ndarray) -> bool:
    """Tell whether every value lies in [0, 1] (a mask or a probability map)."""
    return bool(data.size) and float(data.min()) >= 0.0 and float(data.max()) <= 1.0


def _nifti_tr(image: nib.Nifti1Image, path: Path) -> float | None:
    """Read the TR (s): the header's 4th zoom of a multi-volume image, else the JSON sidecar's."""
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
