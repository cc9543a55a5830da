"""Online signal model: nuisance regression, despiking and percent signal change per volume.

Every feature (an ROI voxel or an ROI mean) is modelled, causally, as

    y(t) = b0 + sum_k b_k (t / T)^k + sum_m c_m motion_m(t) + d task(t) + e(t)

with ``t`` the volume's acquisition time, ``T`` a fixed time scale (``drift_timescale``), the
six rigid-motion parameters (rotations as arc length on a 50 mm sphere, so all six are in mm,
as in framewise displacement) and, when the paradigm is known, one task regressor: every cue
block convolved with the canonical HRF. The task term is *fitted but not removed*: it keeps the
drift and motion terms from absorbing the cue responses, which are the signal. The output of a
volume is its cleaned value as percent signal change against the baseline ``b0`` (the
fixation level when the task term is in the model):

    psc(t) = 100 * (y(t) - drift(t) - motion(t) - b0) / b0

Despiking: before a volume enters the fit, each feature is clipped to the prediction of the
model fitted so far +- ``despike`` residual standard deviations of that model (so a spike
neither enters the fit nor inflates the SD it is judged by).

The coefficients are re-estimated at every volume from the volumes seen so far, by
accumulating ``X'X`` and ``X'y`` (the normal equations of recursive least squares, with a
ridge on every column but the constant). The ridge makes the first volumes well posed and
keeps the drift and motion coefficients small until the data insist: fitted almost freely
(ridge 1) on a few dozen volumes, the drift polynomials and the motion parameters, which
are nearly collinear early in a run, took up noise and the current block's response at the
run's edge, and one simulated subject's decoding after a motion spike fell from AUC 1.00 to
0.92. The drift and task columns get ``ridge`` (default 10), the six motion columns
``motion_ridge`` (mm^2, default 30); with them that subject decodes at 1.00 (30 on drift
alone: 0.98; 30 on motion alone: 0.93). The price is slower drift removal early in a run: of
a linear drift, 64 % is removed over volumes 60-100, 82 % over 100-150, 95 % after 200.
Work per volume is O(p^2 n_features) with p the number of regressors (at most 10),
independent of the run's length. The products are written with ``numpy.einsum``, which does
not hand them to a multithreaded BLAS: on a loaded 2-core machine BLAS threads fighting for
the cores made this stage 10-40 times slower (median 9-37 ms instead of 0.7 ms).
Censored (high-motion) volumes are left out of the fit, as scrubbing does.
:func:`batch_signal` recomputes the same numbers from the whole design matrix with a
least-squares solver; the online output equals it.
"""

from __future__ import annotations

import numbers

import numpy as np

from rtserver.core.stages._base import Stage, check_is_fitted, check_number, check_shape
from rtserver.errors import InputError

#: Radius (mm) that turns rotations (radians) into displacements, as framewise displacement.
HEAD_RADIUS_MM = 50.0


def design_row(index: int, tr: float, motion_params: np.ndarray, task: float | None,
               drift_order: int, drift_timescale: float) -> np.ndarray:
    """One volume's row of the design matrix.

    Columns: constant, ``drift_order`` powers of ``t / drift_timescale``, six motion
    parameters (mm; rotations times :data:`HEAD_RADIUS_MM`), then the task regressor if any.
    """
    u = index * tr / drift_timescale
    motion = np.asarray(motion_params, dtype=np.float64).copy()
    motion[3:] *= HEAD_RADIUS_MM
    row = [1.0, *(u ** k for k in range(1, drift_order + 1)), *motion]
    if task is not None:
        row.append(float(task))
    return np.asarray(row, dtype=np.float64)


class SignalModel(Stage):
    """Online nuisance regression, despiking and percent signal change of many features.

    Parameters
    ----------
    drift_order : int
        Degree of the polynomial drift (0: constant only).
    drift_timescale : float
        Seconds that scale time in the drift polynomials (fixed, so the model is causal).
    despike : float
        Clip the output at this many residual standard deviations; 0 disables despiking.
    ridge : float
        Ridge added to the diagonal of ``X'X`` for the drift and task columns.
    motion_ridge : float
        Ridge added to the diagonal of ``X'X`` for the six motion columns (mm^2).
    task : numpy.ndarray or None
        Task regressor per volume index (:func:`rtserver.core.hrf.task_regressor`); ``None`` leaves it out.
        Volumes past its end get 0.

    Attributes
    ----------
    psc_ : numpy.ndarray
        The latest volume's percent signal change, one per feature.
    xtx_, xty_, yty_ : numpy.ndarray
        The accumulated normal equations (``X'X``, ``X'y``, ``y'y`` of the centred features).
    beta_, sd_ : numpy.ndarray or None
        Coefficients and residual SDs of the current fit (``None`` until enough volumes).
    offset_ : numpy.ndarray or None
        The first volume's features, subtracted from every volume (``None`` before it).
    n_fitted_ : int
        Uncensored volumes in the fit.
    """

    def __init__(self, drift_order: int = 2, drift_timescale: float = 300.0,
                 despike: float = 3.0, ridge: float = 10.0, motion_ridge: float = 30.0,
                 task: np.ndarray | None = None) -> None:
        self.drift_order = drift_order
        self.drift_timescale = drift_timescale
        self.despike = despike
        self.ridge = ridge
        self.motion_ridge = motion_ridge
        self.task = task

    @property
    def n_regressors(self) -> int:
        """Columns of the design matrix."""
        return 1 + self.drift_order + 6 + (self.task is not None)

    def fit(self, n_features: int) -> SignalModel:
        """Start an empty model for ``n_features`` features.

        Parameters
        ----------
        n_features : int
            Values per volume (ROI voxels and ROI means).

        Returns
        -------
        self

        Raises
        ------
        InputError
            If a parameter is out of range, or ``n_features`` is not a positive integer.
        """
        self._check_params()
        if (not isinstance(n_features, numbers.Integral) or isinstance(n_features, bool)
                or n_features < 1):
            raise InputError("SignalModel.fit: expected a number of features >= 1. "
                             f"Got {n_features!r}.")
        p = self.n_regressors
        self.penalty_ = ridge_penalty(p, self.drift_order, self.ridge, self.motion_ridge)
        self.xtx_ = np.zeros((p, p))
        self.xty_ = np.zeros((p, n_features))
        self.yty_ = np.zeros(n_features)
        self.offset_: np.ndarray | None = None
        self.n_fitted_ = 0
        self.n_features_ = n_features
        self.beta_: np.ndarray | None = None
        self.sd_: np.ndarray | None = None
        self.psc_ = np.zeros(n_features)
        return self

    def _check_params(self) -> None:
        """Refuse settings the model cannot be fitted with."""
        check_number(self, "drift_order", low=0, integer=True)
        check_number(self, "drift_timescale", low=0, above=True)
        check_number(self, "despike", low=0)
        check_number(self, "ridge", low=0)
        check_number(self, "motion_ridge", low=0)
        if self.task is not None and (np.ndim(self.task) != 1
                                      or not np.all(np.isfinite(self.task))):
            raise InputError("SignalModel: task should be None or one finite value per "
                             f"volume (1D). Got shape {np.shape(self.task)}.")

    def row(self, index: int, tr: float, motion_params: np.ndarray) -> np.ndarray:
        """Return the design row of volume ``index``."""
        task = None
        if self.task is not None:
            task = float(self.task[index]) if index < len(self.task) else 0.0
        return design_row(index, tr, motion_params, task, self.drift_order,
                          self.drift_timescale)

    def partial_fit(self, index: int, tr: float, features: np.ndarray,
                    motion_params: np.ndarray, censored: bool = False) -> SignalModel:
        """Take one volume's features; its percent signal change is then in ``psc_``.

        Parameters
        ----------
        index : int
            Volume index in the run (sets its time).
        tr : float
            Repetition time (s).
        features : numpy.ndarray
            ``(n_features,)`` raw values (ROI voxels, ROI means).
        motion_params : numpy.ndarray
            The volume's six rigid-motion parameters (mm, radians).
        censored : bool
            Leave the volume out of the fit (its output is still computed).

        Returns
        -------
        self
        """
        check_is_fitted(self, "xtx_")
        y = np.asarray(features, dtype=np.float64)
        if y.shape != (self.n_features_,):
            raise InputError(f"Signal model expected {self.n_features_} features. "
                             f"Got shape {y.shape}.")
        check_shape("Motion parameters", np.shape(motion_params), (6,))
        if self.offset_ is None:
            self.offset_ = y.copy()  # centring keeps y'y free of cancellation
        x = self.row(index, tr, motion_params)
        centred = _despike(y - self.offset_, x, self.beta_, self.sd_, self.despike)
        if not censored:
            self.xtx_ += np.outer(x, x)
            self.xty_ += x[:, None] * centred[None, :]
            self.yty_ += centred * centred
            self.n_fitted_ += 1
            inverse = np.linalg.inv(self.xtx_ + np.diag(self.penalty_))  # p x p, tiny
            self.beta_ = np.einsum("ij,jf->if", inverse, self.xty_)
            self.sd_ = self._residual_sd(self.beta_)
        if self.beta_ is None:
            self.psc_ = np.zeros(self.n_features_)
            return self
        self.psc_ = _clean(x, centred, self.beta_, self.offset_, self.task is not None)
        return self

    def _residual_sd(self, beta: np.ndarray) -> np.ndarray | None:
        dof = self.n_fitted_ - self.n_regressors
        if dof < 1:
            return None
        rss = (self.yty_ - 2.0 * np.einsum("pf,pf->f", beta, self.xty_)
               + np.einsum("pf,pf->f", beta, np.einsum("ij,jf->if", self.xtx_, beta)))
        return np.sqrt(np.maximum(rss, 0.0) / dof)


def _despike(centred: np.ndarray, x: np.ndarray, beta: np.ndarray | None,
             sd: np.ndarray | None, despike: float) -> np.ndarray:
    """Clip a new sample to the model's prediction +- ``despike`` residual SDs.

    The model is the one fitted before the sample arrives, so a spike neither enters the fit
    nor inflates the SD it is judged by.
    """
    if despike <= 0 or beta is None or sd is None:
        return centred
    predicted = np.einsum("p,pf->f", x, beta)
    return np.clip(centred, predicted - despike * sd, predicted + despike * sd)


def _clean(x: np.ndarray, centred: np.ndarray, beta: np.ndarray, offset: np.ndarray,
           has_task: bool) -> np.ndarray:
    """Percent signal change of one volume after removing drift and motion (not the task)."""
    stop = -1 if has_task else len(x)
    removed = np.einsum("p,pf->f", x[1:stop], beta[1:stop])
    baseline = offset + beta[0]
    cleaned = centred - beta[0] - removed
    safe = np.where(np.abs(baseline) > 1e-6, baseline, np.inf)
    return 100.0 * cleaned / safe


def ridge_penalty(n_regressors: int, drift_order: int, ridge: float,
                  motion_ridge: float) -> np.ndarray:
    """Return the ridge on each design column.

    0 on the constant, ``motion_ridge`` on the six motion columns, ``ridge`` on the drift
    and task columns.
    """
    penalty = np.full(n_regressors, float(ridge))
    penalty[0] = 0.0
    penalty[1 + drift_order: 7 + drift_order] = float(motion_ridge)
    return penalty


def batch_signal(features: np.ndarray, design: np.ndarray, censored: np.ndarray,
                 ridge: float, despike: float, has_task: bool, drift_order: int = 2,
                 motion_ridge: float = 30.0) -> np.ndarray:
    """Recompute, volume by volume, what :class:`SignalModel` outputs online.

    An independent implementation for tests and offline use: for each volume ``t`` the
    sample is despiked against the fit of the volumes before it, then the model is refitted
    by least squares (``numpy.linalg.lstsq`` on the design rows of the uncensored volumes up
    to ``t``, ridge as extra rows) and volume ``t`` is cleaned with it.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n_volumes, n_features)`` raw values.
    design : numpy.ndarray
        ``(n_volumes, p)`` design matrix (:func:`design_row` rows).
    censored : numpy.ndarray
        ``(n_volumes,)`` booleans: volumes left out of the fit.
    ridge, despike, motion_ridge : float
        As for :class:`SignalModel`.
    drift_order : int
        Drift columns after the constant (the motion columns follow them).
    has_task : bool
        Whether the design's last column is the task regressor (fitted, not removed).

    Returns
    -------
    numpy.ndarray
        ``(n_volumes, n_features)`` percent signal change.
    """
    features = np.asarray(features, dtype=np.float64)
    censored = np.asarray(censored, dtype=bool)
    n_volumes, n_features = features.shape
    p = design.shape[1]
    offset = features[0]
    centred = features - offset
    penalty = np.sqrt(ridge_penalty(p, drift_order, ridge, motion_ridge))
    out = np.zeros_like(centred)
    beta = sd = None

    def fit(rows_used: np.ndarray, values: np.ndarray):
        rows = np.vstack([design[rows_used], np.diag(penalty)])
        targets = np.vstack([values[rows_used], np.zeros((p, n_features))])
        coef = np.linalg.lstsq(rows, targets, rcond=None)[0]
        spread = None
        if rows_used.size - p >= 1:
            residuals = values[rows_used] - design[rows_used] @ coef
            spread = np.sqrt((residuals ** 2).sum(axis=0) / (rows_used.size - p))
        return coef, spread

    for t in range(n_volumes):
        centred[t] = _despike(centred[t], design[t], beta, sd, despike)
        if not censored[t]:
            beta, sd = fit(np.flatnonzero(~censored[: t + 1]), centred)
        if beta is not None:
            out[t] = _clean(design[t], centred[t], beta, offset, has_task)
    return out
