"""Known head motion for the motion-correction tests.

The moved volumes are made with a quintic spline (:func:`rtserver.sim.motion.apply_motion`,
order 5), a different image model from the estimator's cubic B-spline, so a test cannot
pass merely because the same interpolator made and undid the motion.
"""

from __future__ import annotations

import numpy as np

from rtserver.sim.motion import apply_motion
from rtserver.volume import Volume


def move_volume(data: np.ndarray, affine: np.ndarray, matrix: np.ndarray,
                noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The head of ``data`` moved by the world matrix ``matrix``: ``moved(M x) = data(x)``."""
    moved = apply_motion(np.asarray(data, dtype=np.float64), matrix, affine, order=5)
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
