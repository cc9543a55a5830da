"""The simulated heartbeat and breathing of one run.

Each run draws a heart rate and a breathing rate that drift slowly (:class:`Physiology`).
Their phases, at each slice's acquisition time, give RETROICOR-like regressors
(:meth:`Physiology.basis`, two harmonics per cycle) that drive the cyclic part of the noise
(:mod:`rtserver.sim.noise`); :meth:`Physiology.recording` gives the waves a pulse oximeter
and a breathing belt would record, written as the run's BIDS ``_physio.tsv.gz``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Cardiac and respiratory rates (Hz), drawn per run; each varies slowly within the run
#: by the given relative sd, and the breathing depth by RESPIRATORY_DEPTH_SD.
CARDIAC_RATE_HZ = (1.0, 1.3)
RESPIRATORY_RATE_HZ = (0.2, 0.3)
CARDIAC_RATE_SD = 0.04
RESPIRATORY_RATE_SD = 0.08
RESPIRATORY_DEPTH_SD = 0.2
#: Share of a cycle's noise variance in its first and second harmonic.
HARMONIC_POWER = (0.75, 0.25)
#: Sampling rate of the written cardiac and respiratory recordings (BIDS ``_physio``).
PHYSIO_SAMPLING_HZ = 50.0


@dataclass(frozen=True)
class Physiology:
    """One run's heartbeat and breathing, sampled at :data:`PHYSIO_SAMPLING_HZ`.

    Attributes
    ----------
    times : numpy.ndarray
        Sample times (s) from the run's first volume.
    cardiac_phase, respiratory_phase : numpy.ndarray
        Unwrapped phases (radians) of the two cycles at ``times``.
    respiratory_depth : numpy.ndarray
        Relative breathing depth (mean 1) at ``times``.
    cardiac_rate, respiratory_rate : float
        The run's mean rates (Hz).
    """

    times: np.ndarray
    cardiac_phase: np.ndarray
    respiratory_phase: np.ndarray
    respiratory_depth: np.ndarray
    cardiac_rate: float
    respiratory_rate: float

    @classmethod
    def draw(cls, duration: float, rng: np.random.Generator) -> Physiology:
        """Draw rates and their slow variation for a run of ``duration`` seconds.

        Parameters
        ----------
        duration : float
            Length of the recording (s).
        rng : numpy.random.Generator
            Source of the random draws.

        Returns
        -------
        Physiology
            The run's cycles.
        """
        step = 1.0 / PHYSIO_SAMPLING_HZ
        times = np.arange(0.0, duration + step / 2, step)
        cardiac_rate = float(rng.uniform(*CARDIAC_RATE_HZ))
        respiratory_rate = float(rng.uniform(*RESPIRATORY_RATE_HZ))

        def slow(sd: float) -> np.ndarray:  # smooth, ~10 s time scale, the given sd
            walk = ndimage.gaussian_filter1d(rng.standard_normal(times.size),
                                             5.0 * PHYSIO_SAMPLING_HZ, mode="reflect")
            return sd * (walk - walk.mean()) / walk.std()

        cardiac = cardiac_rate * (1.0 + slow(CARDIAC_RATE_SD))
        respiratory = respiratory_rate * (1.0 + slow(RESPIRATORY_RATE_SD))
        start = rng.uniform(0.0, 2.0 * np.pi, size=2)
        return cls(times=times,
                   cardiac_phase=start[0] + 2.0 * np.pi * np.cumsum(cardiac) * step,
                   respiratory_phase=start[1] + 2.0 * np.pi * np.cumsum(respiratory) * step,
                   respiratory_depth=np.clip(1.0 + slow(RESPIRATORY_DEPTH_SD), 0.2, None),
                   cardiac_rate=cardiac_rate, respiratory_rate=respiratory_rate)

    def basis(self, times: np.ndarray) -> np.ndarray:
        """Return the RETROICOR-like regressors at ``times``: an (..., 8) array.

        Columns: cardiac cos/sin of the phase and of twice the phase, then respiratory
        likewise (times the breathing depth), each harmonic scaled by the square root of
        its share of the power (:data:`HARMONIC_POWER`).

        Parameters
        ----------
        times : numpy.ndarray
            Times (s) from the run's first volume, any shape.

        Returns
        -------
        numpy.ndarray
            ``times.shape + (8,)``.
        """
        cardiac = np.interp(times, self.times, self.cardiac_phase)
        respiratory = np.interp(times, self.times, self.respiratory_phase)
        depth = np.interp(times, self.times, self.respiratory_depth)
        columns = []
        for phase, gain in ((cardiac, 1.0), (respiratory, depth)):
            for harmonic, power in enumerate(HARMONIC_POWER, start=1):
                weight = gain * math.sqrt(power)
                columns += [weight * np.cos(harmonic * phase),
                            weight * np.sin(harmonic * phase)]
        return np.stack(columns, axis=-1)

    def recording(self) -> np.ndarray:
        """Return the cardiac and respiratory waves as a pulse oximeter and a belt record them.

        The cardiac wave is a sharp systolic peak with a dicrotic bump; the belt signal is
        the breathing depth times the cosine of the respiratory phase.

        Returns
        -------
        numpy.ndarray
            ``(n, 2)``: cardiac, respiratory, at :attr:`times`.
        """
        phase = self.cardiac_phase
        cardiac = np.cos(phase) + 0.45 * np.cos(2.0 * phase - 0.6) + 0.15 * np.cos(3.0 * phase)
        respiratory = self.respiratory_depth * np.cos(self.respiratory_phase)
        return np.column_stack([cardiac, respiratory])
