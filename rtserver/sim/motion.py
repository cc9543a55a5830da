"""Planted head motion: a rigid trajectory, and moving a head image by it.

A rigid trajectory (slow drift plus one or two spikes, :func:`motion_trajectory`) moves the
head; volume ``k`` is the reference image resampled so that ``V_k(M_k @ x) = reference(x)``
(:mod:`rtserver.rigid`'s convention, :func:`apply_motion`). Volume 0 does not move.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from rtserver.rigid import voxel_mapping

#: Largest slow drift of each translation (mm) and rotation (degrees); each run draws its own.
MOTION_DRIFT_MAX = (0.5, 0.5)
#: Translation size of a motion spike (mm) and of its rotation (degrees), drawn uniformly.
SPIKE_TRANSLATION_MM = (1.0, 2.0)
SPIKE_ROTATION_DEG = (0.2, 0.6)


def apply_motion(image: np.ndarray, matrix: np.ndarray, affine: np.ndarray, *,
                 order: int = 3, mode: str = "nearest") -> np.ndarray:
    """Move a head: return the volume ``V`` with ``V(matrix @ x) = image(x)`` on the same grid.

    Parameters
    ----------
    image : numpy.ndarray
        3D reference image.
    matrix : numpy.ndarray
        4x4 world (RAS, mm) rigid transform, reference -> moved (:mod:`rtserver.rigid`).
    affine : numpy.ndarray
        The grid's voxel-to-world matrix.
    order : int
        Spline order of the interpolation.
    mode : str
        How ``scipy.ndimage.affine_transform`` extends the image past its edges.

    Returns
    -------
    numpy.ndarray
        float64 image on the grid of ``image``.
    """
    # V[j] = image[inv(voxel_mapping) @ j]: the moved voxel j shows reference voxel M^-1 j.
    sampling = np.linalg.inv(voxel_mapping(matrix, affine))
    return ndimage.affine_transform(image, sampling, order=order, mode=mode)


def motion_trajectory(n_volumes: int, rng: np.random.Generator,
                      scale: float = 1.0) -> tuple[np.ndarray, tuple[int, ...]]:
    """Draw a rigid head-motion trajectory: slow drift plus one or two single-volume spikes.

    Parameters
    ----------
    n_volumes : int
        Length of the run.
    rng : numpy.random.Generator
        Source of the random draws.
    scale : float
        Multiplies the whole trajectory (0: no motion, and no spikes).

    Returns
    -------
    params : numpy.ndarray
        ``(n_volumes, 6)``: ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z``
        (radians), relative to volume 0, whose row is zero.
    spike_volumes : tuple of int
        Volumes displaced by a spike (the head returns at the next volume).
    """
    params = np.zeros((n_volumes, 6))
    limits = (MOTION_DRIFT_MAX[0],) * 3 + (math.radians(MOTION_DRIFT_MAX[1]),) * 3
    for column, limit in enumerate(limits):
        walk = ndimage.gaussian_filter1d(np.cumsum(rng.standard_normal(n_volumes)), 4.0)
        walk -= walk[0]
        peak = np.abs(walk).max()
        if peak > 0:
            params[:, column] = walk * rng.uniform(0.3, 1.0) * limit / peak
    candidates = np.arange(max(1, n_volumes // 10), max(1, n_volumes - 2))
    n_spikes = min(int(rng.integers(1, 3)), len(candidates))
    spikes = np.sort(rng.choice(candidates, size=n_spikes, replace=False))
    for volume in spikes:
        params[volume, :3] += _random_direction(rng) * rng.uniform(*SPIKE_TRANSLATION_MM)
        params[volume, 3:] += (_random_direction(rng)
                               * math.radians(rng.uniform(*SPIKE_ROTATION_DEG)))
    if scale == 0:
        return np.zeros_like(params), ()
    return params * scale, tuple(int(v) for v in spikes)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    """Draw a unit vector uniformly on the sphere."""
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)
