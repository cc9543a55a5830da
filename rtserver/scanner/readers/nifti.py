"""NIfTI-1 and NIfTI-2 files: a 3D file per volume, or one 4D file per run.

This is the one NIfTI reader of the project: a watched export folder (through
:func:`read_nifti`, called by ``read_file``) and a replayed file or folder
(:func:`rtserver.scanner.sources.open_source`, through :func:`load_nifti`) take the
repetition time by the same rule (:func:`nifti_tr`) and the voxel values by the same
scaling (:func:`nifti_volumes`), so a file gives the same volumes live and on replay.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.readers.pieces import Piece, series_digest, series_pattern
from rtserver.scanner.readers.sniff import nifti_version

__all__ = ["NiftiImage", "iter_nifti_volumes", "load_nifti", "nifti_n_volumes", "nifti_tr", "nifti_volumes",
           "read_nifti",
           "sidecar_tr"]

#: A NIfTI-1 or NIfTI-2 image as nibabel holds it.
NiftiImage = nib.Nifti1Image | nib.Nifti2Image


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
        digest of the folder and the file-name pattern; the TR is :func:`nifti_tr`'s.

    Raises
    ------
    IncompleteFileError
        If the file (or its gzip stream) ends before its header or its voxels do.
    ForeignFileError
        If it is not a volume or run (see :func:`nifti_n_volumes`), or is a single volume of
        values in [0, 1] (a mask or probability map).
    InputError
        If the gzip stream or the header is broken, or the voxels cannot be read.
    """
    raw, gzipped = _gunzipped(path, buf)
    image = _whole_image(path, raw, gzipped)
    data = nifti_volumes(image, path)
    if data.shape[3] == 1 and _is_mask(data):
        raise ForeignFileError(f"{path} holds only values in [0, 1]: a mask or probability map, not an "
                               f"fMRI volume; skipped.")
    pattern, number = series_pattern(path)
    series = series_digest("nifti", f"{path.parent.resolve()}/{pattern}")
    tr = nifti_tr(image, path)
    affine = image.affine
    if data.shape[3] == 1:
        return [Piece("nifti", series, None, number or 0, None, data.shape[2],
                      np.ascontiguousarray(data[..., 0]), affine, tr)]
    return [Piece("nifti", series, None, index, None, data.shape[2], np.ascontiguousarray(data[..., index]),
                  affine, tr) for index in range(data.shape[3])]


def _gunzipped(path: Path, buf: bytes) -> tuple[bytes, bool]:
    """Uncompress a gzipped file's bytes (others pass as they are); say whether they were gzipped."""
    if buf[:2] != b"\x1f\x8b":
        return buf, False
    try:
        return gzip.decompress(buf), True
    except EOFError:
        raise IncompleteFileError(f"{path} ends before its gzip stream does: it is probably still "
                                  f"being written; try again later.") from None
    except (OSError, zlib.error) as exc:
        raise InputError(f"{path} is a broken gzip stream: {exc}") from None


def _whole_image(path: Path, buf: bytes, gzipped: bool) -> NiftiImage:
    """Make an image of a NIfTI file's (uncompressed) bytes once they hold its header and every voxel.

    IncompleteFileError while they do not; ForeignFileError for a shape that is no volume or
    run; InputError for a broken header or voxels nibabel cannot read.
    """
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
    nifti_n_volumes(shape, path)
    try:
        return image_class.from_bytes(buf)
    except Exception as exc:  # nibabel raises many types on broken files
        raise InputError(f"Cannot read the voxels of {path}: {exc}") from None


def load_nifti(path: Path) -> NiftiImage:
    """Open a whole NIfTI file for reading: its header now, its voxels when asked for.

    Parameters
    ----------
    path : Path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    nibabel.Nifti1Image or nibabel.Nifti2Image

    Raises
    ------
    InputError
        If nibabel cannot read the file or its header.
    """
    try:
        image = nib.load(path)
        image.header  # noqa: B018 - touch the header so a broken file fails here
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"Cannot read NIfTI file {path}: {exc}") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path} should be a single-file NIfTI-1 or NIfTI-2 image. "
                         f"Got a {type(image).__name__}.")
    return image


def nifti_n_volumes(shape: tuple[int, ...], path: Path) -> int:
    """Count the volumes an image of ``shape`` holds, if it is a volume or a run.

    Parameters
    ----------
    shape : tuple of int
        The image's data shape.
    path : Path
        The file, named in messages.

    Returns
    -------
    int
        1 for a 3D image; the length of the fourth axis for a 4D one, or of the fifth for a
        5D one whose fourth axis has length 1 (as some writers store a run).

    Raises
    ------
    ForeignFileError
        For any other shape.
    """
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return int(shape[3])
    if len(shape) == 5 and shape[3] == 1:
        return int(shape[4])
    raise ForeignFileError(f"{path} is a {len(shape)}D NIfTI image of shape {shape}. Expected an fMRI "
                           f"volume (3D) or run (4D).")


def _identity_scaling(dataobj: object) -> bool:
    """Whether nibabel would leave a proxy's stored values unscaled."""
    slope, intercept = dataobj.slope, dataobj.inter
    return (slope is None or not np.isfinite(slope) or slope in (0.0, 1.0)) and (
        intercept is None or not np.isfinite(intercept) or intercept == 0.0)


def _as_float32_if_exact(value: object) -> np.ndarray:
    """A scale factor as nibabel applies it for float32 output (float32 where castable)."""
    array = np.asanyarray(value)
    return array.astype(np.float32) if np.can_cast(array, np.float32) else array


def iter_nifti_volumes(image: NiftiImage, path: Path) -> Iterator[np.ndarray]:
    """Read a NIfTI image's volumes one at a time, holding one volume in memory.

    The file is opened once and read forward (a ``.nii.gz`` is decompressed as a stream),
    so a long run costs one volume of memory and one pass over the file. Values are those
    of :func:`nifti_volumes`: stored values without scaling, else float32 values scaled
    by ``scl_slope`` and ``scl_inter`` as nibabel scales them.

    Parameters
    ----------
    image : nibabel.Nifti1Image or nibabel.Nifti2Image
        The image (:func:`load_nifti`); its shape must be one :func:`nifti_n_volumes`
        accepts.
    path : Path
        Its file.

    Yields
    ------
    numpy.ndarray
        Each volume, 3D, Fortran-ordered as stored.

    Raises
    ------
    InputError
        If the file ends before its last volume.
    """
    dataobj = image.dataobj
    shape3 = tuple(int(n) for n in image.shape[:3])
    n_volumes = nifti_n_volumes(image.shape, path)
    dtype = np.dtype(dataobj.dtype)
    n_bytes = int(np.prod(shape3)) * dtype.itemsize
    identity = _identity_scaling(dataobj)
    slope, intercept = (_as_float32_if_exact(v) for v in (dataobj.slope, dataobj.inter))
    with nib.openers.ImageOpener(path) as handle:
        handle.seek(int(dataobj.offset))
        for index in range(n_volumes):
            buf = handle.read(n_bytes)
            if len(buf) < n_bytes:
                raise InputError(f"{path} ends in volume {index} of {n_volumes}: "
                                 f"{len(buf)} of its {n_bytes} bytes are there.")
            raw = np.frombuffer(buf, dtype=dtype).reshape(shape3, order="F")
            if identity:
                yield raw
            else:
                scaled = apply_read_scaling(raw, slope, intercept)
                yield scaled.astype(np.float32, copy=False)


def nifti_volumes(image: NiftiImage, path: Path) -> np.ndarray:
    """Read the voxel values of a NIfTI image, as volumes along a fourth axis.

    The scaling is nibabel's ``scl_slope`` and ``scl_inter`` (nibabel reads a slope of 0 or
    not finite as no scaling): the stored values when there is none, else float32 values,
    as dcm2niix's users see them.

    Parameters
    ----------
    image : nibabel.Nifti1Image or nibabel.Nifti2Image
        The image; its shape must be one :func:`nifti_n_volumes` accepts.
    path : Path
        Its file, named in messages.

    Returns
    -------
    numpy.ndarray
        Shape (i, j, k, volumes).

    Raises
    ------
    InputError
        If nibabel cannot read the voxels.
    """
    dataobj = image.dataobj
    identity = _identity_scaling(dataobj)
    try:
        data = np.asanyarray(dataobj.get_unscaled()) if identity else np.asarray(dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types on broken files
        raise InputError(f"Cannot read the voxels of {path}: {exc}") from None
    if data.ndim == 5:
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[..., np.newaxis]
    return data


def nifti_tr(image: NiftiImage, path: Path, tr: float | None = None) -> float | None:
    """Decide the repetition time of a NIfTI image, in seconds: one rule, live and on replay.

    The first of:

    1. ``tr``, when given (the user's word beats the files');
    2. ``RepetitionTime`` of the BIDS JSON sidecar (the file's name with ``.json`` for
       ``.nii`` or ``.nii.gz``), when it is a positive number;
    3. the header's ``pixdim[4]``, when the image has a fourth axis of more than one volume
       and ``pixdim[4] > 0``, in the time unit of ``xyzt_units``: ``msec`` and ``usec`` are
       converted, anything else (``sec``, unknown) is taken as seconds;
    4. None.

    Parameters
    ----------
    image : nibabel.Nifti1Image or nibabel.Nifti2Image
        The image.
    path : Path
        Its file, beside which the sidecar is looked for.
    tr : float or None
        A repetition time (s) given by the user.

    Returns
    -------
    float or None
    """
    if tr is not None:
        return float(tr)
    stated = sidecar_tr(Path(re.sub(r"\.nii(\.gz)?$", ".json", str(path))))
    if stated is not None:
        return stated
    zooms = image.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0 and image.shape[3] != 1:
        unit = image.header.get_xyzt_units()[1]
        return float(zooms[3]) / (1000.0 if unit == "msec" else 1e6 if unit == "usec" else 1.0)
    return None


def sidecar_tr(path: Path) -> float | None:
    """Read the ``RepetitionTime`` a BIDS JSON sidecar states.

    Parameters
    ----------
    path : Path
        A ``.json`` file (another suffix, or a file that is not there, states none).

    Returns
    -------
    float or None
        The value when it is a positive number; None when the file is absent, unreadable,
        not a JSON object, or states no such number.
    """
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("RepetitionTime")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _is_mask(data: np.ndarray) -> bool:
    """Tell whether every value lies in [0, 1] (a mask or a probability map)."""
    return bool(data.size) and float(data.min()) >= 0.0 and float(data.max()) <= 1.0
