"""The haemodynamic response: SPM's canonical HRF and the regressors built from it.

Shared by the online signal model (its task regressor), decoder training (the HRF-lagged
labels) and the simulator (which plants responses with the same kernel).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from rtserver.paradigm import Paradigm

#: Time steps per TR for the convolutions.
OVERSAMPLING = 16


def canonical_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``dt`` seconds, summing to 1.

    Peak gamma of shape 6 (mode 5 s), undershoot gamma of shape 16 (mode 15 s), undershoot
    ratio 1/6. Summing to 1 makes a long block's plateau equal to the block's amplitude.

    Parameters
    ----------
    dt : float
        Sampling interval (s).
    length : float
        Duration of the kernel (s).

    Returns
    -------
    numpy.ndarray
    """
    t = np.arange(0.0, length, dt)
    hrf = stats.gamma.pdf(t, 6.0) - stats.gamma.pdf(t, 16.0) / 6.0
    return hrf / hrf.sum()


def condition_regressors(paradigm: Paradigm,
                         oversampling: int = OVERSAMPLING) -> dict[str, np.ndarray]:
    """HRF-convolved block regressors, one per ``trial_type``, sampled at each volume.

    Parameters
    ----------
    paradigm : Paradigm
        The run.
    oversampling : int
        Time steps per TR for the convolution.

    Returns
    -------
    dict
        ``trial_type`` -> array of ``paradigm.n_volumes`` values (1 on a long block's plateau).
    """
    dt = paradigm.tr / oversampling
    n_fine = paradigm.n_volumes * oversampling
    hrf = canonical_hrf(dt)
    boxcars: dict[str, np.ndarray] = {}
    for event in paradigm.events():
        start = round(event["onset"] / dt)
        stop = round((event["onset"] + event["duration"]) / dt)
        boxcar = boxcars.setdefault(event["trial_type"], np.zeros(n_fine))
        boxcar[start:stop] = 1.0
    return {
        trial_type: np.convolve(boxcar, hrf)[:n_fine:oversampling]
        for trial_type, boxcar in boxcars.items()
    }


def task_regressor(events: list[dict], tr: float, n_volumes: int) -> np.ndarray:
    """All cue blocks (every event) as one boxcar convolved with the canonical HRF.

    Parameters
    ----------
    events : list of dict
        BIDS events (``onset``, ``duration``, ``trial_type``); fixation is not an event.
    tr : float
        Repetition time (s).
    n_volumes : int
        Length of the regressor.

    Returns
    -------
    numpy.ndarray
        One value per volume, sampled at each volume's onset (1 on a long block's plateau).
    """
    dt = tr / OVERSAMPLING
    n_fine = n_volumes * OVERSAMPLING
    boxcar = np.zeros(n_fine)
    for event in events:
        start = max(0, round(float(event["onset"]) / dt))
        stop = min(n_fine, round((float(event["onset"]) + float(event["duration"])) / dt))
        boxcar[start:stop] = 1.0
    return np.convolve(boxcar, canonical_hrf(dt))[:n_fine:OVERSAMPLING]


def paradigm_task_regressor(paradigm: Paradigm, n_volumes: int | None = None) -> np.ndarray:
    """:func:`task_regressor` of a paradigm's cue blocks (``n_volumes`` default: the run's)."""
    n = paradigm.n_volumes if n_volumes is None else n_volumes
    return task_regressor(paradigm.events(), paradigm.tr, n)
