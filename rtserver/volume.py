"""A volume is voxel data plus geometry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtserver.errors import InputError


def check_affine(affine: object) -> np.ndarray:
    """Return a float64 copy of a 4x4 affine, or raise if it is not one.

    Parameters
    ----------
    affine : array-like
        Voxel-to-world (RAS+, mm) matrix.

    Returns
    -------
    numpy.ndarray
        A new (4, 4) float64 array, isolated from the caller's.
    """
    arr = np.array(affine, dtype=np.float64, copy=True)
    if arr.shape != (4, 4):
        raise InputError(f"Affine should be shape (4, 4). Got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InputError("Affine should hold finite numbers. Got NaN or infinity.")
    if not np.allclose(arr[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"Affine's last row should be [0, 0, 0, 1]. Got {arr[3].tolist()}.")
    if abs(np.linalg.det(arr[:3, :3])) < 1e-12:
        raise InputError("Affine should be invertible. Got a singular 3x3 part.")
    return arr


@dataclass(frozen=True)
class Volume:
    """One acquired EPI volume.

    Parameters
    ----------
    data : numpy.ndarray
        3D voxel array (i, j, k), in the scanner's stored data type and values.
    affine : array-like
        4x4 voxel-to-world matrix (RAS+, mm). Copied and checked.
    index : int
        0-based position of the volume in its run.
    tr : float
        Repetition time in seconds.
    t_file_complete : float or None
        Wall-clock time (Unix seconds) at which the volume's file was complete, if known.
    meta : dict
        Further non-identifying metadata (source file name, series description).
    """

    data: np.ndarray
    affine: np.ndarray
    index: int
    tr: float
    t_file_complete: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise InputError(f"A volume should be 3D. Got {data.ndim}D data of shape {data.shape}.")
        if min(data.shape) < 1:
            raise InputError(f"A volume should have no empty axis. Got shape {data.shape}.")
        if isinstance(self.index, bool) or int(self.index) != self.index or self.index < 0:
            raise InputError(f"A volume index should be an integer >= 0. Got {self.index!r}.")
        if not (np.isfinite(self.tr) and self.tr > 0):
            raise InputError(f"TR should be a positive number of seconds. Got {self.tr!r}.")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", check_affine(self.affine))
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "tr", float(self.tr))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (i, j, k) shape of the voxel array."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> np.ndarray:
        """Voxel sizes in mm along i, j and k."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
