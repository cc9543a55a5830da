"""Known head motion for the motion-correction tests: real AFNI matrices and planted moves.

The moved volumes are made with a quintic spline (``scipy.ndimage.affine_transform``,
order 5), a different image model from the estimator's cubic B-spline, so a test cannot
pass merely because the same interpolator made and undid the motion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from rtserver.volume import Volume

#: DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS), and back.
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_afni_matrices(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The rigid 4x4 RAS matrices of an AFNI ``aff12.1D`` file, and the rows refused.

    3dvolreg's ``-1Dmatrix_save`` writes, per volume, the 3x4 matrix from base to input
    coordinates in DICOM (LPS) order. Rows whose 3x3 part is not a rotation (orthonormal,
    determinant +1, within 1e-4) are not rigid motions and are refused.
    """
    matrices, refused = [], []
    for row, values in enumerate(np.loadtxt(path, ndmin=2)):
        matrix = np.eye(4)
        matrix[:3] = values.reshape(3, 4)
        rotation = matrix[:3, :3]
        if (np.abs(rotation.T @ rotation - np.eye(3)).max() > 1e-4
                or abs(np.linalg.det(rotation) - 1.0) > 1e-4):
            refused.append(row)
            continue
        matrices.append(LPS_RAS @ matrix @ LPS_RAS)
    return matrices, refused


def move_volume(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray,
                noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The head of ``data`` moved by the world matrix ``matrix``: ``moved(M x) = data(x)``."""
    affine = np.asarray(affine, dtype=np.float64)
    mapping = np.linalg.inv(affine) @ np.linalg.inv(matrix) @ affine
    moved = ndimage.affine_transform(np.asarray(data, dtype=np.float64), mapping, order=5,
                                     mode="nearest")
    if noise:
        moved += rng.normal(0.0, noise, moved.shape)
    return moved.astype(np.float32)


def noisy(volume: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``volume`` plus Gaussian noise of standard deviation ``noise``."""
    return (np.asarray(volume, dtype=np.float64)
            + rng.normal(0.0, noise, volume.shape)).astype(np.float32)


def as_volume(data: np.ndarray, affine: np.ndarray, index: int) -> Volume:
    """A :class:`Volume` with a TR of 2 s."""
    return Volume(np.asarray(data, dtype=np.float32), affine, index=index, tr=2.0)
