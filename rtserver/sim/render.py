"""The noise-free image of each volume: anatomy plus activation, moved with the head.

Block boxcars convolved with the canonical HRF (:func:`rtserver.core.hrf.condition_regressors`)
scale each condition's planted map (:mod:`rtserver.sim.activation`); the head is then moved
by the run's trajectory (:mod:`rtserver.sim.motion`). Activation and motion are taken at
the volume's acquisition start, ``index * TR``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from rtserver.rigid import params_to_matrix, voxel_mapping
from rtserver.sim.activation import Activation
from rtserver.sim.phantom import Phantom, padded_phantom


class Renderer:
    """The noise-free image of each volume: anatomy plus activation, moved with the head.

    Volume k's image before motion is ``baseline * (1 + sum_c r_c(k) a_c roi / 100)``.
    Resampling is linear, so its spline coefficients are the same combination of
    per-condition coefficients, which are computed once. They are computed on a grid grown
    past the field of view, so that anatomy moving into view is the template's, not an
    extrapolation. Only the box the moved brain can reach is resampled (0 outside it).

    Parameters
    ----------
    phantom : Phantom
        The run's anatomy.
    regressors : dict
        ``trial_type`` -> HRF-convolved regressor sampled at each volume's onset;
        conditions without a planted response are ignored.
    activation : Activation
        The subject's planted responses.
    params : numpy.ndarray
        ``(n_volumes, 6)`` rigid motion of each volume (:func:`~rtserver.sim.motion.motion_trajectory`).
    centre : numpy.ndarray
        World centre (mm) the rotations are about.

    Attributes
    ----------
    pad : int
        Voxels the padded grid adds on every side: enough for the run's largest motion.
    """

    def __init__(self, phantom: Phantom, regressors: dict[str, np.ndarray],
                 activation: Activation, params: np.ndarray,
                 centre: np.ndarray) -> None:
        self.phantom = phantom
        self.regressors = {c: r for c, r in regressors.items()
                           if any(c in table for table in activation.amplitudes.values())}
        self.params = params
        self.centre = centre
        self.responses = _responses(phantom, activation.maps(phantom), self.regressors)
        voxel_size = float(phantom.affine[0, 0])
        self.pad = 4 + math.ceil(_largest_displacement(params, centre, phantom) / voxel_size)
        padded = padded_phantom(phantom.shape, voxel_size, self.pad)
        self.baseline_coefficients = _spline(padded.baseline)
        padded_maps = activation.maps(padded, reference=phantom)
        self.coefficients = {c: _spline(image) for c, image in
                             _responses(padded, padded_maps, self.regressors).items()}
        support = np.argwhere(padded.baseline > 0) - self.pad  # field-of-view voxels
        self.support = (support.min(axis=0), support.max(axis=0))

    def render(self, k: int) -> np.ndarray:
        """Return volume ``k``'s noise-free image (float64, a new array).

        Parameters
        ----------
        k : int
            Volume index.

        Returns
        -------
        numpy.ndarray
            The image on the phantom's grid.
        """
        if not np.any(self.params[k]):
            image = self.phantom.baseline.copy()
            for condition, response in self.responses.items():
                image += self.regressors[condition][k] * response
            return image
        coefficients = self.baseline_coefficients.copy()
        for condition, coefficient in self.coefficients.items():
            coefficients += self.regressors[condition][k] * coefficient
        matrix = params_to_matrix(self.params[k], self.centre)
        mapping = voxel_mapping(matrix, self.phantom.affine)  # reference -> moved voxels
        low, high = _moved_box(*self.support, mapping, self.phantom.shape)
        image = np.zeros(self.phantom.shape)
        if np.all(high > low):
            # Moved voxel (low + o) shows reference voxel inv(mapping) @ (low + o), which is
            # voxel (that + pad) of the padded grid.
            into_box, into_padding = np.eye(4), np.eye(4)
            into_box[:3, 3] = low
            into_padding[:3, 3] = self.pad
            sampling = into_padding @ np.linalg.inv(mapping) @ into_box
            image[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = ndimage.affine_transform(
                coefficients, sampling, output_shape=tuple(high - low), order=3,
                mode="mirror", prefilter=False)
        return image


def _responses(phantom: Phantom, maps: dict[str, np.ndarray],
               conditions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return, per condition, the image added per unit of its regressor (ROI voxels only)."""
    return {c: phantom.baseline * (maps[c] / 100.0) for c in conditions}


def _largest_displacement(params: np.ndarray, centre: np.ndarray, phantom: Phantom) -> float:
    """Return the farthest any corner of the field of view moves over the run (mm)."""
    high = np.asarray(phantom.shape) - 1.0
    corners = np.array([[x, y, z, 1.0] for x in (0, high[0]) for y in (0, high[1])
                        for z in (0, high[2])]).T
    world = phantom.affine @ corners
    largest = 0.0
    for row in params:
        moved = params_to_matrix(row, centre) @ world
        largest = max(largest, float(np.linalg.norm(moved - world, axis=0).max()))
    return largest


def _moved_box(low: np.ndarray, high: np.ndarray, mapping: np.ndarray,
               shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return the voxel box (start, stop) holding the moved image of the box ``low..high``."""
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0])
                        for y in (low[1], high[1]) for z in (low[2], high[2])])
    moved = (mapping @ corners.T)[:3]
    start = np.maximum(np.floor(moved.min(axis=1)).astype(int) - 2, 0)
    stop = np.minimum(np.ceil(moved.max(axis=1)).astype(int) + 3, shape)
    return start, stop


def _spline(image: np.ndarray) -> np.ndarray:
    """Return the cubic spline coefficients of an image (mirrored past its edges)."""
    return ndimage.spline_filter(image, order=3, mode="mirror")
