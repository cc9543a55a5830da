"""The scanner's share of each volume: slow drift, physiological and thermal noise.

A slow multiplicative drift (linear plus half-cosine, :class:`Drift`), AR(1) physiological
noise proportional to the signal, cardiac and respiratory fluctuations
(:mod:`rtserver.sim.physiology`) whose voxel coefficients are smooth random fields, larger
in CSF and at the brain's edge, and white thermal noise taken into the magnitude (Rician)
domain (:class:`NoiseModel`). Together they give the requested temporal SNR at the median
brain intensity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtserver.sim.fields import field, plane_waves
from rtserver.sim.phantom import Phantom
from rtserver.sim.physiology import Physiology

#: Temporal SNR at the median brain intensity (thermal and physiological noise together).
DEFAULT_TSNR = 60.0
#: Lag-1 autocorrelation of the slow physiological noise (an AR(1) process).
DEFAULT_AR_RHO = 0.3
#: Shares of the noise variance at the median brain intensity: the slow AR(1)
#: physiological noise, the cardiac and the respiratory cycles (RETROICOR-like, larger near
#: CSF and the brain's edge); the rest (0.5) is thermal (white, Rician).
AR_VARIANCE_FRACTION = 0.4
CARDIAC_VARIANCE_FRACTION = 0.05
RESPIRATORY_VARIANCE_FRACTION = 0.05
#: Share of the physiological noise variance that is AR(1) or cyclic, together.
PHYSIOLOGICAL_VARIANCE_FRACTION = (AR_VARIANCE_FRACTION + CARDIAC_VARIANCE_FRACTION
                                   + RESPIRATORY_VARIANCE_FRACTION)
#: Extra noise sd, relative to grey matter, in CSF and at the brain's edge (cardiac pulsation
#: near vessels and ventricles; respiratory field changes at the edge).
CARDIAC_CSF_GAIN, CARDIAC_EDGE_GAIN = 2.0, 1.0
RESPIRATORY_EDGE_GAIN = 2.0
#: Wavelengths (mm) and number of the random plane waves of the smooth random fields that
#: give each cycle's coefficients.
PHYSIOLOGICAL_WAVELENGTH_MM = (12.0, 40.0)
PHYSIOLOGICAL_WAVES = 24
#: Largest scanner drift, percent of the signal, for the linear and the cosine term.
DRIFT_MAX_PERCENT = (1.0, 0.5)


@dataclass(frozen=True)
class Drift:
    """Scanner drift in percent of the signal: a linear ramp plus a half cosine.

    Attributes
    ----------
    linear, cosine : float
        Percent signal change of each term.
    percent : numpy.ndarray
        The drift of each volume (percent).
    """

    linear: float
    cosine: float
    percent: np.ndarray

    @classmethod
    def draw(cls, n_volumes: int, rng: np.random.Generator) -> Drift:
        """Draw a run's drift, each term uniform within :data:`DRIFT_MAX_PERCENT`.

        Parameters
        ----------
        n_volumes : int
            Length of the run.
        rng : numpy.random.Generator
            Source of the random draws.

        Returns
        -------
        Drift
            The run's drift.
        """
        u = np.linspace(0.0, 1.0, n_volumes)
        linear = float(rng.uniform(-1.0, 1.0) * DRIFT_MAX_PERCENT[0])
        cosine = float(rng.uniform(-1.0, 1.0) * DRIFT_MAX_PERCENT[1])
        return cls(linear, cosine, linear * u + cosine * np.cos(np.pi * u))


class NoiseModel:
    """Rician thermal noise plus physiological noise proportional to the signal.

    The physiological part is an AR(1) process (white in space) plus cardiac and
    respiratory fluctuations: at voxel x and slice time t, ``sum_j c_j(x) b_j(t)`` with the
    regressors ``b_j`` of :meth:`Physiology.basis` and coefficients ``c_j`` smooth random
    fields scaled by a map that is 1 in grey matter and larger in CSF and at the brain's
    edge. At the median brain intensity the parts have the variance shares of
    :data:`AR_VARIANCE_FRACTION`, :data:`CARDIAC_VARIANCE_FRACTION` and
    :data:`RESPIRATORY_VARIANCE_FRACTION` (the rest is thermal), and together give a
    temporal SNR of ``tsnr``.

    Parameters
    ----------
    phantom : Phantom
        The run's anatomy (its grid, brain mask and intensities).
    tsnr : float
        Temporal SNR at the median brain intensity.
    rho : float
        Lag-1 autocorrelation of the AR(1) part.
    tr : float
        Repetition time (s); slices are acquired ascending, evenly over it.
    physiology : Physiology
        The run's heartbeat and breathing.
    rng : numpy.random.Generator
        Source of the random draws: the coefficient fields now, the noise of each volume
        at :meth:`add`.
    """

    def __init__(self, phantom: Phantom, tsnr: float, rho: float, tr: float,
                 physiology: Physiology, rng: np.random.Generator) -> None:
        self.tsnr = tsnr
        self.rho = rho
        self.rng = rng
        self.physiology = physiology
        self.reference_intensity = float(np.median(phantom.baseline[phantom.brain_mask]))
        total_sd = self.reference_intensity / tsnr
        self.thermal_sd = total_sd * math.sqrt(1.0 - PHYSIOLOGICAL_VARIANCE_FRACTION)
        relative_sd = total_sd / self.reference_intensity
        # Standard deviations as fractions of the local signal.
        self.physiological_fraction = relative_sd * math.sqrt(AR_VARIANCE_FRACTION)
        self.cardiac_fraction = relative_sd * math.sqrt(CARDIAC_VARIANCE_FRACTION)
        self.respiratory_fraction = relative_sd * math.sqrt(RESPIRATORY_VARIANCE_FRACTION)
        n_slices = phantom.shape[2]
        self.slice_timing = np.arange(n_slices) * (tr / n_slices)  # ascending sequential
        self.tr = tr
        self.coefficients = self._coefficient_maps(phantom, rng)
        self._state: np.ndarray | None = None
        self._index = 0

    def _coefficient_maps(self, phantom: Phantom, rng: np.random.Generator) -> np.ndarray:
        """Draw the (8, x, y, z) float32 coefficients of the cardiac and respiratory regressors."""
        inside = phantom.brain_mask
        baseline = phantom.baseline
        reference = self.reference_intensity
        csf = ndimage.gaussian_filter((baseline > 1.15 * reference).astype(float), 1.0)
        edge = ndimage.gaussian_filter(
            (inside & ~ndimage.binary_erosion(inside, iterations=2)).astype(float), 1.0)
        grey = inside & (np.abs(baseline - reference) < 0.03 * reference)
        points = phantom.world_points(inside)
        maps = np.zeros((8, *phantom.shape), dtype=np.float32)
        for source, (weight, fraction) in enumerate((
                (1.0 + CARDIAC_CSF_GAIN * csf + CARDIAC_EDGE_GAIN * edge, self.cardiac_fraction),
                (1.0 + RESPIRATORY_EDGE_GAIN * edge, self.respiratory_fraction))):
            # Mean square 1 over grey-matter voxels, where the tSNR is defined.
            weight = weight / math.sqrt(float(np.mean(weight[grey] ** 2)))
            for column in range(4):
                values = field(plane_waves(rng, PHYSIOLOGICAL_WAVELENGTH_MM,
                                           PHYSIOLOGICAL_WAVES), points)
                values = (values - values.mean()) / values.std()
                maps[4 * source + column][inside] = fraction * weight[inside] * values
        return maps

    def add(self, image: np.ndarray) -> np.ndarray:
        """Return the run's next volume: ``image`` (noise-free) with noise, float32.

        Volumes must be passed in order: the AR(1) state and the slice times advance by
        one volume per call.

        Parameters
        ----------
        image : numpy.ndarray
            The volume's noise-free image.

        Returns
        -------
        numpy.ndarray
            float32 magnitude image of the same shape.
        """
        shape = image.shape
        innovation = self.rng.standard_normal(shape, dtype=np.float32)
        if self._state is None:
            self._state = innovation
        else:
            self._state *= np.float32(self.rho)
            self._state += np.float32(math.sqrt(1.0 - self.rho**2)) * innovation
        regressors = self.physiology.basis(self._index * self.tr + self.slice_timing)
        self._index += 1
        cyclic = np.einsum("jxyz,zj->xyz", self.coefficients,
                           regressors.astype(np.float32), optimize=True)
        signal = image.astype(np.float32)
        modulation = np.float32(self.physiological_fraction) * self._state
        modulation += cyclic
        modulation += np.float32(1.0)
        signal *= modulation
        thermal_sd = np.float32(self.thermal_sd)
        signal += thermal_sd * self.rng.standard_normal(shape, dtype=np.float32)
        imaginary = thermal_sd * self.rng.standard_normal(shape, dtype=np.float32)
        return np.hypot(signal, imaginary, out=signal)
