"""The anatomy: a brain-shaped EPI phantom and its ROIs on an EPI grid.

The MNI152 T1 template (read by :mod:`rtserver.resources`) is remapped to an EPI-like
(T2*-weighted) contrast by :mod:`rtserver.core.atlas` (CSF brightest, grey matter brighter
than white matter), smoothed to anti-alias it, and resampled (trilinear) onto an EPI grid
centred on the template's brain, about :data:`BRAIN_INTENSITY` in brain and 0 outside. The
Schaefer-200 + Tian S2 atlas, resampled to the same grid (nearest neighbour), gives the
cortico-striatal ROIs of :data:`~rtserver.core.atlas.ROI_DEFINITIONS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from rtserver.core.atlas import label_rois
from rtserver.errors import InputError
from rtserver.resources import load_atlas, load_template
from rtserver.sim.checks import check_positive, check_shape

#: A grid holding fewer voxels of an ROI than this is refused.
MIN_ROI_VOXELS = 3
#: Mean brain intensity the EPI contrast is scaled to.
BRAIN_INTENSITY = 1000.0


@dataclass(frozen=True)
class Phantom:
    """A brain-shaped EPI phantom on one grid.

    Attributes
    ----------
    baseline : numpy.ndarray
        Noise-free EPI intensities (float64), about 1000 in brain, 0 outside.
    brain_mask : numpy.ndarray
        Boolean brain mask.
    labels : numpy.ndarray
        int16 ROI labels (0 background), indices of
        :data:`~rtserver.core.atlas.ROI_DEFINITIONS`.
    roi_names : Mapping
        Label index -> ROI name.
    affine : numpy.ndarray
        4x4 voxel-to-world matrix (RAS+, mm), diagonal.
    """

    baseline: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    roi_names: Mapping[int, str]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid's shape."""
        return self.baseline.shape

    def world_points(self, inside: np.ndarray) -> np.ndarray:
        """Return the world coordinates (mm) of the voxels selected by a mask.

        Parameters
        ----------
        inside : numpy.ndarray
            Boolean mask of the grid's shape.

        Returns
        -------
        numpy.ndarray
            ``(n, 3)``, in the order of :func:`numpy.argwhere`.
        """
        ijk = np.argwhere(inside).astype(np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def build_phantom(shape: Sequence[int], voxel_size: float) -> Phantom:
    """Build the brain-shaped EPI phantom and its ROIs on an EPI grid.

    The grid's axes are RAS+, its voxels isotropic, and its centre is the centre of mass of
    the template's brain mask. Results are cached per ``(shape, voxel_size)`` and read-only.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid shape.
    voxel_size : float
        Isotropic voxel size (mm).

    Returns
    -------
    Phantom
        The phantom, its arrays read-only.

    Raises
    ------
    InputError
        If an argument is invalid, or the grid holds fewer than :data:`MIN_ROI_VOXELS`
        voxels of an ROI.
    """
    return _build_phantom(check_shape(shape), check_positive("voxel_size", voxel_size))


def _build_phantom(shape: tuple[int, int, int], voxel_size: float) -> Phantom:
    """Build the unpadded phantom and refuse a grid that misses an ROI."""
    phantom = padded_phantom(shape, voxel_size, 0)
    for index, name in phantom.roi_names.items():
        count = int(np.count_nonzero(phantom.labels == index))
        if count < MIN_ROI_VOXELS:
            raise InputError(
                f"The EPI grid {shape} at {voxel_size} mm holds {count} voxels of ROI "
                f"{name!r}; expected at least {MIN_ROI_VOXELS}. Use a larger shape or "
                "smaller voxels."
            )
    return phantom


@functools.lru_cache(maxsize=16)
def padded_phantom(shape: tuple[int, int, int], voxel_size: float, pad: int) -> Phantom:
    """Build the phantom of ``shape`` on a grid grown by ``pad`` voxels on every side.

    The anatomy that moves into the field of view comes from the padding. Cropping the
    padding gives the unpadded phantom (intensities are scaled on the inner grid). Results
    are cached and read-only; the arguments are not checked.

    Parameters
    ----------
    shape : tuple of 3 int
        The unpadded grid's shape.
    voxel_size : float
        Isotropic voxel size (mm).
    pad : int
        Voxels added on every side (0 for the unpadded phantom).

    Returns
    -------
    Phantom
        On the padded grid, whose affine places the inner grid where the unpadded one is.
    """
    template = load_template()
    epi_contrast, soft_mask, centre = _template_in_epi_contrast(voxel_size)
    padded_shape = tuple(n + 2 * pad for n in shape)
    affine = _epi_affine(shape, voxel_size, centre)
    affine[:3, 3] -= pad * voxel_size
    to_template = np.linalg.inv(template.affine) @ affine
    intensity = _resample(epi_contrast, to_template, padded_shape, order=1)
    mask_fraction = _resample(soft_mask, to_template, padded_shape, order=1)
    baseline = np.clip(intensity * mask_fraction, 0.0, None)
    brain_mask = mask_fraction > 0.5
    inner = tuple(slice(pad, pad + n) for n in shape)
    baseline *= BRAIN_INTENSITY / baseline[inner][brain_mask[inner]].mean()

    labels, roi_names = _roi_labels(padded_shape, affine)
    labels[~brain_mask] = 0
    for array in (baseline, brain_mask, labels, affine):
        array.setflags(write=False)
    return Phantom(baseline=baseline, brain_mask=brain_mask, labels=labels,
                   roi_names=MappingProxyType(roi_names), affine=affine)


@functools.lru_cache(maxsize=4)
def _template_in_epi_contrast(voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the template's EPI-like contrast and brain mask (a fraction), and the brain's centre.

    The images, on the template's grid, are smoothed to anti-alias them for sampling at
    ``voxel_size``; the centre (world, mm) is the centre of mass of the brain mask.
    """
    template = load_template()
    template_mask = template.brain_mask
    epi_contrast = template.epi_contrast()
    soft_mask = template_mask.astype(np.float64)
    template_zoom = template.zoom
    fwhm = math.sqrt(max(voxel_size**2 - template_zoom**2, 0.0))
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / template_zoom
    if sigma > 0:
        epi_contrast = ndimage.gaussian_filter(epi_contrast, sigma)
        soft_mask = ndimage.gaussian_filter(soft_mask, sigma)
    return epi_contrast, soft_mask, _mask_centre(template_mask, template.affine)


def _mask_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Return the centre of mass of a mask, in world coordinates (mm)."""
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _epi_affine(shape: tuple[int, int, int], voxel_size: float,
                centre: np.ndarray) -> np.ndarray:
    """Return a diagonal RAS+ affine whose grid centre is ``centre`` (rounded to 0.5 mm)."""
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    half_extent = voxel_size * (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.round(centre * 2.0) / 2.0 - half_extent
    return affine


def _resample(image: np.ndarray, to_source: np.ndarray, shape: tuple[int, int, int], *,
              order: int) -> np.ndarray:
    """Sample ``image`` at ``to_source @ ijk`` for every voxel ``ijk`` of ``shape``."""
    return ndimage.affine_transform(image, to_source, output_shape=shape, order=order,
                                    mode="constant", cval=0.0)


def _roi_labels(shape: tuple[int, int, int],
                affine: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Label the ROIs on a grid: the atlas sampled by nearest neighbour, regions by name."""
    atlas = load_atlas()
    to_atlas = np.linalg.inv(atlas.affine) @ affine
    resampled = _resample(atlas.labels.astype(np.int16), to_atlas, shape, order=0)
    labels, roi_names = label_rois(resampled, atlas)
    return labels.astype(np.int16), roi_names
