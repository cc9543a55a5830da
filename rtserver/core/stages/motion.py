"""Incremental rigid motion correction: 6 parameters, Gauss-Newton, inverse compositional.

Each volume is registered to a reference volume by least squares on intensity differences,
as SPM realign and AFNI 3dvolreg do. The numerical core is written here on top of numpy and
``scipy.ndimage`` (no registration library does one volume in a few milliseconds; ANTs and
nitransforms resample whole volumes, and their per-call overhead alone exceeds the budget).

How a volume is registered
--------------------------
* Each image is modelled as a continuous B-spline whose coefficients are its voxels (degree
  ``interpolation_order``, cubic by default, without the interpolating prefilter). Such a
  model is a smoothing of the image by the spline's own kernel, and it is almost
  shift-invariant: there is none of the bias towards whole-voxel shifts that trilinear
  sampling gives (about 0.1 mm here), and no whole-volume prefilter to pay for.
* Together with a Gaussian pre-smoothing the images are smoothed to ``smoothing_fwhm``
  (5 mm, as in SPM realign). The Gaussian adds only what the spline kernel lacks, so at
  3.5 mm voxels the cubic model alone gives the 5 mm (4.8 mm) and no smoothing pass is run.
* The reference side is computed once in :meth:`MotionCorrector.fit`: the sample points
  (brain voxels on a regular grid, away from the edge of the field of view, at most
  ``max_samples`` of them, keeping those with the highest leverage on the parameters),
  their values and gradients in the model, the steepest-descent images and the
  Gauss-Newton solver.
* Per volume: the smoothing pass if any, then Gauss-Newton iterations that each sample the volume
  at the fixed points, solve a 6x6 system and compose the update (inverse compositional).
  The first guess is the previous volume's estimate; steps that would increase the cost are
  halved; iterations stop when an update moves the head by less than ``tolerance`` (mm, FD
  style). Work per volume is fixed: nothing grows with the length of the run.
* Large, sudden motion: if the result fits much worse than recent volumes did (relative
  cost above ``restart_factor`` times their median) or did not converge, the volume is
  registered again from the previous estimate and from no motion, first on a heavily
  smoothed image (``restart_fwhm``) to widen the capture range, and the best fit is kept.

Conventions (:mod:`rtserver.rigid`): parameters ``trans_x, trans_y, trans_z`` (mm, RAS) and
``rot_x, rot_y, rot_z`` (radians), ``M = T(c + t) Rz Ry Rx T(-c)`` about the centre ``c`` of
the reference grid; ``M`` maps reference world coordinates to the volume's world
coordinates (``V(M x) = reference(x)``).
"""

from __future__ import annotations

import numbers
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtserver.core.stages._base import Stage, check_is_fitted, check_number
from rtserver.errors import InputError, StateError
from rtserver.rigid import framewise_displacement, grid_centre, matrix_to_params, params_to_matrix
from rtserver.volume import Volume

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Fewer sample points than this and the registration is refused as meaningless.
MIN_SAMPLES = 50
#: Gaussian sigmas (voxels) below this are left out: the B-spline model smooths enough.
MIN_SIGMA = 0.3
#: Step used to differentiate the B-spline model at the sample points (voxels).
_GRADIENT_STEP = 1e-3


@dataclass(frozen=True)
class MotionEstimate:
    """The motion of one volume relative to the reference.

    Attributes
    ----------
    params : numpy.ndarray
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (radians).
    matrix : numpy.ndarray
        4x4 world (RAS, mm) matrix, reference -> volume.
    fd : float
        Framewise displacement to the previous volume (mm); 0 for the first.
    censored : bool
        ``fd`` above the threshold.
    n_iterations : int
        Gauss-Newton iterations of the accepted fit.
    cost : float
        Mean squared intensity difference after registration, relative to the variance of
        the reference samples (0 is a perfect match).
    restarted : bool
        The volume moved so much that it was registered again from other starting points.
    """

    params: np.ndarray
    matrix: np.ndarray
    fd: float
    censored: bool
    n_iterations: int
    cost: float = 0.0
    restarted: bool = False


def smoothing_sigma(fwhm: float, affine: np.ndarray, order: int = 0) -> np.ndarray:
    """Gaussian sigma in voxels, per axis, that smooths a grid to ``fwhm`` (mm) in all.

    A B-spline model of degree ``order`` whose coefficients are the voxels already smooths
    by its own kernel (variance ``(order + 1) / 12`` voxel**2); the Gaussian supplies only
    the rest. Axes that need less than ``MIN_SIGMA`` voxels are not filtered at all: a
    cubic model of 3.5 mm voxels is itself a 4.8 mm FWHM smoothing.
    """
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    target = (fwhm * FWHM_TO_SIGMA / zooms) ** 2
    spline = (order + 1) / 12.0 if order > 0 else 0.0
    sigma = np.sqrt(np.maximum(target - spline, 0.0))
    return np.where(sigma < MIN_SIGMA, 0.0, sigma)


def smooth(data: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian smoothing in float32 over the first three axes (a 4D run works too)."""
    image = np.asarray(data, dtype=np.float32)
    if not np.any(sigma > 0):
        return image
    sigma = list(sigma) + [0.0] * (image.ndim - 3)
    return ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)


class _Level:
    """The reference side of the registration at one smoothing and interpolation order."""

    def __init__(self, reference: Volume, fwhm: float, order: int, subsample: int,
                 max_samples: int) -> None:
        self.fwhm = fwhm
        self.order = order
        self.affine = np.asarray(reference.affine, dtype=np.float64)
        self.centre = grid_centre(reference.shape, self.affine)
        smoothed = self.smooth(reference.data, self.affine)
        ijk = self._sample_points(smoothed, subsample, max_samples)
        if ijk.shape[1] < MIN_SAMPLES:
            raise InputError(
                f"Reference volume has too little signal to register to: {ijk.shape[1]} sample "
                f"voxels above the intensity threshold (expected >= {MIN_SAMPLES})."
            )
        values = self._sample(smoothed, ijk)
        gradients = np.empty((ijk.shape[1], 3))
        for axis in range(3):
            step = np.zeros((3, 1))
            step[axis] = _GRADIENT_STEP
            gradients[:, axis] = (self._sample(smoothed, ijk + step)
                                  - self._sample(smoothed, ijk - step)) / (2 * _GRADIENT_STEP)
        world_gradients = gradients @ np.linalg.inv(self.affine[:3, :3])  # d/dx, d/dy, d/dz
        world = (self.affine[:3, :3] @ ijk + self.affine[:3, 3:]).T
        steepest = np.hstack([world_gradients, np.cross(world - self.centre, world_gradients)])
        if len(steepest) > max_samples:
            # Keep the points that carry most information on the six parameters.
            leverage = np.einsum("ij,jk,ik->i", steepest,
                                 np.linalg.inv(steepest.T @ steepest), steepest)
            keep = np.sort(np.argsort(-leverage, kind="stable")[:max_samples])
            ijk, values, steepest = ijk[:, keep], values[keep], steepest[keep]
        self.ijk = ijk
        self.values = values
        self.steepest = steepest
        self.solver = np.linalg.solve(steepest.T @ steepest, steepest.T)  # (6, n)
        self.scale = float(values.var()) or 1.0

    @staticmethod
    def _sample_points(smoothed: np.ndarray, subsample: int, max_samples: int) -> np.ndarray:
        """Brain voxels on a sparse grid, one voxel away from the edges of long axes.

        ``subsample`` 0 picks the densest grid that gives at most ``4 * max_samples``
        candidates, so small or thin volumes keep every brain voxel.
        """
        bright = smoothed[smoothed > smoothed.mean()]
        if bright.size == 0:  # a constant image: nothing to register on
            return np.empty((3, 0))
        brain = smoothed > 0.5 * bright.mean()
        inner = tuple(slice(1, n - 1) if n >= 16 else slice(0, n) for n in smoothed.shape)
        steps = [subsample] if subsample > 0 else range(1, max(smoothed.shape) + 1)
        for step in steps:
            grid = np.zeros(smoothed.shape, dtype=bool)
            grid[tuple(slice(axis.start, axis.stop, step) for axis in inner)] = True
            points = np.argwhere(grid & brain)
            if len(points) <= 4 * max_samples:
                break
        return points.T.astype(np.float64)  # (3, n)

    def _sample(self, image: np.ndarray, coords: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(image, coords, order=self.order, mode="nearest",
                                       prefilter=False).astype(np.float64)

    def smooth(self, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Smooth a volume as this level needs it."""
        return smooth(data, smoothing_sigma(self.fwhm, affine, self.order))

    def residual(self, smoothed: np.ndarray, to_voxels: np.ndarray,
                 matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Residuals, the mask of samples inside the volume, and the relative cost."""
        mapping = to_voxels @ matrix @ self.affine
        coords = mapping[:3, :3] @ self.ijk + mapping[:3, 3:]
        values = self._sample(smoothed, coords)
        upper = np.asarray(smoothed.shape[:3], dtype=np.float64)[:, None] - 1.0
        inside = np.all((coords >= 0.0) & (coords <= upper), axis=0)
        n_inside = np.count_nonzero(inside)
        if n_inside < max(MIN_SAMPLES, len(inside) // 2):
            return values - self.values, inside, np.inf
        # A global intensity gain, fitted in closed form (least squares), so that slow signal
        # changes (approach to steady state, scanner drift) are not taken for motion.
        inner = values[inside]
        gain = (inner @ self.values[inside]) / (inner @ inner) if inner.any() else 1.0
        residual = gain * values - self.values
        cost = float(residual[inside] @ residual[inside]) / n_inside / self.scale
        return residual, inside, cost

    def register(self, smoothed: np.ndarray, affine: np.ndarray, matrix: np.ndarray,
                 max_iterations: int, tolerance: float) -> tuple[np.ndarray, float, int]:
        """Gauss-Newton from ``matrix``; returns the matrix, its cost and the iterations."""
        to_voxels = np.linalg.inv(affine)
        residual, inside, cost = self.residual(smoothed, to_voxels, matrix)
        n_iterations = 0
        for n_iterations in range(1, max_iterations + 1):  # noqa: B007
            if not np.isfinite(cost):
                break
            if inside.all():
                step = self.solver @ residual
            else:  # part of the head left the field of view: solve on the samples inside
                step = np.linalg.lstsq(self.steepest[inside], residual[inside], rcond=None)[0]
            if framewise_displacement(np.zeros(6), step) < tolerance:
                # Converged: a step this small cannot make the fit worse; take it unchecked.
                matrix = matrix @ np.linalg.inv(params_to_matrix(step, self.centre))
                break
            for _ in range(5):  # halve a step that would make the fit worse
                trial = matrix @ np.linalg.inv(params_to_matrix(step, self.centre))
                trial_residual, trial_inside, trial_cost = self.residual(smoothed, to_voxels,
                                                                         trial)
                if trial_cost <= cost:
                    break
                step = step / 2.0
            else:
                break
            matrix, residual, inside, cost = trial, trial_residual, trial_inside, trial_cost
        return matrix, cost, n_iterations


class MotionCorrector(Stage):
    """Estimate each volume's rigid motion relative to a reference volume.

    Parameters
    ----------
    smoothing_fwhm : float
        Gaussian smoothing (mm FWHM) of both images before matching.
    interpolation_order : int
        Degree of the B-spline model of the smoothed images (1 = trilinear, 2, 3).
    subsample : int
        Sample points lie on a grid of every ``subsample``-th voxel along each axis; 0 (the
        default) picks the densest grid with at most ``4 * max_samples`` brain voxels.
    max_samples : int
        At most this many sample points (those with the highest leverage are kept).
    max_iterations : int
        Upper bound on Gauss-Newton iterations per volume.
    tolerance : float
        Stop when an update moves the head by less than this (mm, FD-style).
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored.
    restart_factor : float
        Register a volume again from other starting points when its fit is this many
        times worse than the median of recent volumes.
    restart_fwhm : float
        Smoothing (mm FWHM) of the wide-capture first pass of such a restart.

    Attributes
    ----------
    estimate_ : MotionEstimate or None
        The latest volume's estimate; ``None`` until :meth:`partial_fit` has seen a volume.
    matrix_, params_ : numpy.ndarray
        The latest volume's motion as a 4x4 matrix and as six parameters (the first guess
        for the next volume).
    n_seen_ : int
        Volumes estimated since :meth:`fit`.
    grid_ : tuple or None
        Shape and affine of the run's volumes (set by the first volume).
    """

    def __init__(self, smoothing_fwhm: float = 5.0, interpolation_order: int = 3,
                 subsample: int = 0, max_samples: int = 6000, max_iterations: int = 20,
                 tolerance: float = 0.001, fd_threshold: float = 0.5,
                 restart_factor: float = 4.0, restart_fwhm: float = 12.0) -> None:
        self.smoothing_fwhm = smoothing_fwhm
        self.interpolation_order = interpolation_order
        self.subsample = subsample
        self.max_samples = max_samples
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.fd_threshold = fd_threshold
        self.restart_factor = restart_factor
        self.restart_fwhm = restart_fwhm

    # ------------------------------------------------------------------ fit
    def fit(self, reference: Volume) -> MotionCorrector:
        """Precompute everything the reference side of the registration needs.

        Parameters
        ----------
        reference : Volume
            The volume every later one is registered to.

        Returns
        -------
        self

        Raises
        ------
        InputError
            If a parameter is out of range, or the reference has too little signal.
        """
        self._check_params()
        self.level_ = _Level(reference, self.smoothing_fwhm, self.interpolation_order,
                             self.subsample, self.max_samples)
        self.restart_level_ = _Level(reference, self.restart_fwhm, 1, self.subsample,
                                     self.max_samples)
        self.reference_shape_ = reference.shape
        self.reference_affine_ = np.asarray(reference.affine, dtype=np.float64)
        self.centre_ = self.level_.centre
        self.n_samples_ = len(self.level_.values)
        self.grid_: tuple[tuple[int, ...], np.ndarray] | None = None
        self.matrix_ = np.eye(4)
        self.params_ = np.zeros(6)
        self.recent_costs_: deque[float] = deque(maxlen=16)
        self.n_seen_ = 0
        self.estimate_: MotionEstimate | None = None
        return self

    def _check_params(self) -> None:
        """Refuse parameters the registration cannot work with."""
        order = self.interpolation_order
        if (not isinstance(order, numbers.Integral) or isinstance(order, bool)
                or order not in (1, 2, 3)):
            raise InputError(f"interpolation_order should be 1, 2 or 3. Got {order!r}.")
        check_number(self, "smoothing_fwhm", low=0)
        check_number(self, "subsample", low=0, integer=True)
        check_number(self, "max_samples", low=MIN_SAMPLES, integer=True)
        check_number(self, "max_iterations", low=1, integer=True)
        check_number(self, "tolerance", low=0, above=True)
        check_number(self, "fd_threshold", low=0)
        check_number(self, "restart_factor", low=0, above=True)
        check_number(self, "restart_fwhm", low=0)

    # ------------------------------------------------------------------ per volume
    def partial_fit(self, volume: Volume) -> MotionCorrector:
        """Estimate one volume's motion; the result is in ``estimate_``.

        Parameters
        ----------
        volume : Volume
            A volume of the run. All volumes of a run share one grid; it may differ from the
            reference's (e.g. a reference from an earlier run of the session).

        Returns
        -------
        self

        Raises
        ------
        InputError
            If the volume is not on the run's grid.
        """
        check_is_fitted(self, "level_")
        self._check_grid(volume.shape, volume.affine, volume.index)
        smoothed = self.level_.smooth(volume.data, volume.affine)
        self.estimate_ = self._register(volume.data, smoothed, volume.affine)
        return self

    def estimate_run(self, data: np.ndarray, affine: np.ndarray) -> list[MotionEstimate]:
        """Estimate the motion of every volume of a whole 4D run at once.

        The run is smoothed in one pass; each volume then goes through the same
        registration as :meth:`partial_fit`, in order, so the results equal those of
        feeding the volumes one at a time. The corrector must be fitted first.

        Parameters
        ----------
        data : numpy.ndarray
            ``(x, y, z, t)`` run.
        affine : numpy.ndarray
            Its 4x4 voxel-to-world (RAS, mm) matrix.

        Returns
        -------
        list of MotionEstimate
            One per volume.
        """
        check_is_fitted(self, "level_")
        data = np.asarray(data)
        if data.ndim != 4:
            raise InputError("estimate_run needs a 4D run: expected shape (x, y, z, t). "
                             f"Got shape {data.shape}.")
        smoothed = smooth(data, smoothing_sigma(self.smoothing_fwhm, affine,
                                                self.interpolation_order))
        estimates = []
        for index in range(data.shape[3]):
            self._check_grid(data.shape[:3], affine, index)
            estimates.append(self._register(data[..., index], smoothed[..., index], affine))
        self.estimate_ = estimates[-1]
        return estimates

    def _check_grid(self, shape: tuple[int, ...], affine: np.ndarray, index: int) -> None:
        if self.grid_ is None:
            self.grid_ = (tuple(shape), np.asarray(affine, dtype=np.float64))
            return
        if tuple(shape) != self.grid_[0]:
            raise InputError(
                f"Volume {index} has the wrong shape for this run.\n"
                f"Expected {self.grid_[0]}.\nGot {tuple(shape)}."
            )
        if not np.allclose(affine, self.grid_[1], atol=1e-3):
            raise InputError(
                f"Volume {index} is not on the run's grid: its affine differs from the "
                "first volume's by more than 1e-3 mm."
            )

    def _register(self, data: np.ndarray, smoothed: np.ndarray,
                  affine: np.ndarray) -> MotionEstimate:
        level = self.level_
        matrix, cost, n_iterations = level.register(
            smoothed, affine, self.matrix_, self.max_iterations, self.tolerance)
        typical = float(np.median(self.recent_costs_)) if self.recent_costs_ else None
        restarted = (n_iterations == self.max_iterations or not np.isfinite(cost)
                     or (typical is not None and cost > self.restart_factor * typical))
        if restarted:
            wide = self.restart_level_.smooth(data, affine)
            for start in (self.matrix_, np.eye(4)):
                coarse, _, _ = self.restart_level_.register(
                    wide, affine, start, 2 * self.max_iterations, 10 * self.tolerance)
                candidate, candidate_cost, candidate_iterations = level.register(
                    smoothed, affine, coarse, self.max_iterations, self.tolerance)
                if candidate_cost < cost:
                    matrix, cost, n_iterations = candidate, candidate_cost, candidate_iterations
        if not np.isfinite(cost):
            # No candidate keeps half the sample points inside the volume (the start from
            # rest always does, so this is defensive): keep the last position, censor.
            matrix, n_iterations = self.matrix_, 0
        if (self.n_seen_ and np.isfinite(cost)
                and (typical is None or cost <= self.restart_factor * typical)):
            self.recent_costs_.append(cost)
        params = matrix_to_params(matrix, self.centre_)
        fd = framewise_displacement(self.params_, params) if self.n_seen_ else 0.0
        self.matrix_ = matrix
        self.params_ = params
        self.n_seen_ += 1
        return MotionEstimate(params=params, matrix=matrix, fd=fd,
                              censored=fd > self.fd_threshold or not np.isfinite(cost),
                              n_iterations=n_iterations,
                              cost=cost, restarted=restarted)

    # ------------------------------------------------------------------ outputs
    def reslice(self, volume: Volume, matrix: np.ndarray | None = None,
                order: int = 3) -> Volume:
        """Resample the volume onto the reference grid with its motion undone.

        Only needed when a full realigned volume is asked for; the ROI stage samples just
        the ROI voxels.

        Parameters
        ----------
        volume : Volume
            A volume of the run.
        matrix : numpy.ndarray or None
            Its motion (reference -> volume); ``None`` uses the latest estimate.
        order : int
            Spline order of the resampling (3: cubic, with prefilter).

        Returns
        -------
        Volume
            On the reference grid; voxels that fall outside the volume are 0.

        Raises
        ------
        StateError
            If ``matrix`` is ``None`` and no volume has been estimated since :meth:`fit`.
        """
        check_is_fitted(self, "level_")
        if matrix is None:
            if self.estimate_ is None:
                raise StateError("reslice needs a motion estimate: expected a matrix or a "
                                 "volume estimated by partial_fit first. Got neither.")
            matrix = self.estimate_.matrix
        mapping = np.linalg.inv(volume.affine) @ matrix @ self.reference_affine_
        data = ndimage.affine_transform(np.asarray(volume.data, dtype=np.float32), mapping,
                                        output_shape=self.reference_shape_, order=order,
                                        mode="constant", cval=0.0)
        return Volume(data, self.reference_affine_, index=volume.index, tr=volume.tr,
                      t_file_complete=volume.t_file_complete, meta=volume.meta)
