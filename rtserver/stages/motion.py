"""Incremental rigid motion correction (6 parameters, Gauss-Newton, inverse compositional).

Each volume is registered to a reference volume by least squares on intensity differences.
The reference side (smoothed image, sample points, steepest-descent images, the inverse of
the Gauss-Newton Hessian) is computed once in :meth:`MotionCorrector.fit`; each volume then
costs one smoothing pass and a few iterations of trilinear sampling at a fixed, subsampled
set of brain voxels, warm-started from the previous volume's estimate. Work per volume does
not grow with the length of the run.

The transform convention is :mod:`rtserver.rigid`'s: the estimated matrix ``M`` maps
reference world coordinates to the volume's world coordinates (``V(M x) = reference(x)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtserver.errors import InputError
from rtserver.rigid import (
    framewise_displacement,
    grid_centre,
    matrix_to_params,
    params_to_matrix,
    voxel_mapping,
)
from rtserver.stages._base import check_is_fitted
from rtserver.volume import Volume

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


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
        Gauss-Newton iterations used.
    """

    params: np.ndarray
    matrix: np.ndarray
    fd: float
    censored: bool
    n_iterations: int


class MotionCorrector:
    """Estimate each volume's rigid motion relative to a reference volume.

    Parameters
    ----------
    smoothing_fwhm : float
        Gaussian smoothing (mm FWHM) of both images before matching.
    subsample : int
        Use every ``subsample``-th voxel along each axis as a sample point.
    max_iterations : int
        Upper bound on Gauss-Newton iterations per volume.
    tolerance : float
        Stop when an update moves the head by less than this (mm, FD-style).
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored.
    """

    def __init__(self, smoothing_fwhm: float = 5.0, subsample: int = 2,
                 max_iterations: int = 12, tolerance: float = 0.001,
                 fd_threshold: float = 0.5) -> None:
        self.smoothing_fwhm = smoothing_fwhm
        self.subsample = subsample
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.fd_threshold = fd_threshold

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
        """
        affine = reference.affine
        self.shape_ = reference.shape
        self.affine_ = affine
        self.centre_ = grid_centre(self.shape_, affine)
        self.sigma_ = self.smoothing_fwhm * FWHM_TO_SIGMA / reference.zooms
        smoothed = self._smooth(reference.data)
        self.mask_ = self._sample_mask(smoothed)
        ijk = np.argwhere(self.mask_).astype(np.float64)
        if len(ijk) < 50:
            raise InputError(
                f"Reference volume has too little signal to register to: {len(ijk)} sample "
                "voxels above the intensity threshold (expected >= 50)."
            )
        self.sample_ijk_ = np.vstack([ijk.T, np.ones(len(ijk))])  # (4, n)
        world = (affine @ self.sample_ijk_)[:3].T  # (n, 3)
        gradients = np.stack(np.gradient(smoothed), axis=-1)[self.mask_]  # d/di, d/dj, d/dk
        world_gradients = gradients @ np.linalg.inv(affine[:3, :3])  # d/dx, d/dy, d/dz
        offsets = world - self.centre_
        steepest = np.hstack([world_gradients, np.cross(offsets, world_gradients)])
        self.steepest_descent_ = steepest
        self.hessian_ = steepest.T @ steepest
        self.solver_ = np.linalg.solve(self.hessian_, steepest.T)  # (6, n)
        self.reference_values_ = smoothed[self.mask_].astype(np.float64)
        self.params_ = np.zeros(6)
        self.n_seen_ = 0
        return self

    def _smooth(self, data: np.ndarray) -> np.ndarray:
        image = np.asarray(data, dtype=np.float32)
        if self.smoothing_fwhm <= 0:
            return image
        return ndimage.gaussian_filter(image, self.sigma_, mode="nearest", truncate=3.0)

    def _sample_mask(self, smoothed: np.ndarray) -> np.ndarray:
        threshold = 0.5 * smoothed[smoothed > smoothed.mean()].mean()
        mask = smoothed > threshold
        grid = np.zeros_like(mask)
        step = self.subsample
        grid[1:-1:step, 1:-1:step, 1:-1:step] = True
        if min(self.shape_) < 3:  # a single-slice or thin volume: keep the edges
            grid[::step, ::step, ::step] = True
        return mask & grid

    # ------------------------------------------------------------------ per volume
    def partial_fit(self, volume: Volume) -> MotionCorrector:
        """Estimate one volume's motion; the result is in ``estimate_``.

        Parameters
        ----------
        volume : Volume
            A volume on the reference's grid.

        Returns
        -------
        self
        """
        check_is_fitted(self, "solver_")
        if volume.shape != self.shape_:
            raise InputError(
                f"Volume {volume.index} has the wrong shape for this run.\n"
                f"Expected {self.shape_}.\nGot {volume.shape}."
            )
        moving = self._smooth(volume.data)
        matrix = params_to_matrix(self.params_, self.centre_)
        n_iterations = 0
        for n_iterations in range(1, self.max_iterations + 1):  # noqa: B007
            step = self._gauss_newton_step(moving, matrix)
            matrix = matrix @ np.linalg.inv(params_to_matrix(step, self.centre_))
            if framewise_displacement(np.zeros(6), step) < self.tolerance:
                break
        params = matrix_to_params(matrix, self.centre_)
        fd = framewise_displacement(self.params_, params) if self.n_seen_ else 0.0
        self.params_ = params
        self.n_seen_ += 1
        self.estimate_ = MotionEstimate(
            params=params, matrix=matrix, fd=fd, censored=fd > self.fd_threshold,
            n_iterations=n_iterations,
        )
        return self

    def _gauss_newton_step(self, moving: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        coords = (voxel_mapping(matrix, self.affine_) @ self.sample_ijk_)[:3]
        values = ndimage.map_coordinates(moving, coords, order=1, mode="nearest",
                                         prefilter=False)
        residual = values - self.reference_values_
        upper = np.asarray(self.shape_, dtype=np.float64)[:, None] - 1.0
        inside = np.all((coords >= 0.0) & (coords <= upper), axis=0)
        if inside.all():
            return self.solver_ @ residual
        # Part of the head left the field of view: solve on the samples still inside.
        steepest = self.steepest_descent_[inside]
        return np.linalg.lstsq(steepest, residual[inside], rcond=None)[0]
