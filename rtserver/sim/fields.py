"""Smooth random fields in world space: sums of random plane waves.

The planted voxel patterns (:mod:`rtserver.sim.activation`) and the voxel coefficients of
the cardiac and respiratory noise (:mod:`rtserver.sim.noise`) are such fields. A field is a
function of world coordinates (mm), so grids of any shape or padding see the same one.
"""

from __future__ import annotations

import numpy as np


def plane_waves(rng: np.random.Generator, wavelengths: tuple[float, float],
                n_waves: int) -> np.ndarray:
    """Draw the plane waves of one random field.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the random draws: directions, then wavelengths, then phases.
    wavelengths : tuple of 2 float
        Range (mm) the wavelengths are drawn from, uniformly.
    n_waves : int
        Number of waves.

    Returns
    -------
    numpy.ndarray
        ``(n_waves, 4)``: the frequency vector (cycles/mm) and the phase (radians) of each.
    """
    directions = rng.standard_normal((n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = 1.0 / rng.uniform(*wavelengths, size=(n_waves, 1))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_waves, 1))
    return np.hstack([directions * frequencies, phases])


def field(waves: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sum the plane waves at world ``points``.

    Parameters
    ----------
    waves : numpy.ndarray
        ``(n_waves, 4)`` from :func:`plane_waves`.
    points : numpy.ndarray
        ``(n, 3)`` world coordinates (mm).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` field values.
    """
    return np.cos(2.0 * np.pi * points @ waves[:, :3].T + waves[:, 3]).sum(axis=1)
