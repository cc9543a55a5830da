"""What every reader makes of a file: :class:`Piece` objects, and what they share.

A piece is a whole volume, or one slice of a volume, with its geometry in world RAS+
millimetres and its voxel values as dcm2niix's NIfTI would hold them after scaling. This
module also holds what several readers (and the series assembler) share: the one-way
series digest, the file-name pattern of a series, the check that slices are evenly
stacked, and the scaling of stored integers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtserver.errors import InputError

__all__ = [
    "FORMATS",
    "KINDS",
    "ORIENTATION_TOLERANCE",
    "SHEAR_TOLERANCE_MM",
    "SLICE_TOLERANCE_MM",
    "Piece",
    "regular_spacing",
    "scaled",
    "series_digest",
    "series_pattern",
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
        slice normal; :func:`rtserver.scanner.assembly.assemble` replaces it by the spacing
        between slices.
    tr : float or None
        Repetition time in seconds, when stated.

    Raises
    ------
    InputError
        If ``kind`` is not one of :data:`KINDS`, the data is not 3D (whole volume) or 2D
        (slice), or the affine is not a finite 4x4 matrix.
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
        """Check the kind, the data's dimensions and the affine; store the affine as float64."""
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
        """Everything but the voxels, which show as their shape and type."""
        slice_key = "None" if self.slice_key is None else f"{self.slice_key:.3f}"
        return (f"Piece(kind={self.kind!r}, series={self.series!r}, series_number={self.series_number}, "
                f"volume_key={self.volume_key}, slice_key={slice_key}, n_slices={self.n_slices}, "
                f"shape={self.data.shape}, dtype={self.data.dtype}, tr={self.tr})")


def series_digest(kind: str, text: str) -> str:
    """Name a series stably and one-way: no UID, path or name can be read back from the name.

    Parameters
    ----------
    kind : str
        What ``text`` is (``"dicom"``, ``"parrec"``, ``"nifti"``); it prefixes the name.
    text : str
        The SeriesInstanceUID, or the folder and file-name pattern of the series.

    Returns
    -------
    str
        ``kind``, a hyphen and 24 hexadecimal digits.
    """
    return f"{kind}-{hashlib.blake2b(text.encode(), digest_size=12, person=b'rtfmri-series').hexdigest()}"


def series_pattern(path: Path) -> tuple[str, int | None]:
    """Split a file-name stem into its pattern and its trailing number.

    Parameters
    ----------
    path : Path
        A PAR or NIfTI file (``.par``, ``.nii``, ``.nii.gz``; other suffixes are kept).

    Returns
    -------
    pattern : str
        The stem up to its trailing number, without the separators before that number.
    number : int or None
        The trailing number; None if the stem ends in no digit.
    """
    stem = path.name
    for suffix in (".nii.gz", ".nii", ".par", ".PAR", ".Par"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = re.search(r"(\d+)$", stem)
    if match is None:
        return stem, None
    return stem[: match.start()].rstrip("-_. "), int(match.group(1))


def regular_spacing(keys: np.ndarray, positions: np.ndarray, normal: np.ndarray, where: str) -> float:
    """Measure the spacing of sorted slices along their normal, checking it is regular.

    Parameters
    ----------
    keys : numpy.ndarray
        Each slice's position along ``normal`` (mm), in increasing order.
    positions : numpy.ndarray
        Each slice's origin in world space (mm), shape (slices, 3), in the same order.
    normal : numpy.ndarray
        The unit slice normal.
    where : str
        Names the volume in messages.

    Returns
    -------
    float
        The mean step between slices (mm); 1.0 for a single slice.

    Raises
    ------
    InputError
        If two slices share a position, the steps are irregular (beyond
        :data:`SLICE_TOLERANCE_MM`), or the slices are shifted in-plane (sheared) rather than
        stacked along the normal (beyond :data:`SHEAR_TOLERANCE_MM`).
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


def scaled(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Scale stored values linearly, as dcm2niix does.

    Parameters
    ----------
    values : numpy.ndarray
        The stored integers.
    slope, intercept : float
        The scaling: ``values * slope + intercept``.

    Returns
    -------
    numpy.ndarray
        ``values`` itself when the scaling is the identity, else float32 values.
    """
    if slope == 1.0 and intercept == 0.0:
        return values
    return values.astype(np.float32) * np.float32(slope) + np.float32(intercept)
