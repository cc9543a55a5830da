"""Cortico-striatal ROIs in a run's EPI space: the MNI atlases registered to a reference volume.

At session setup (once, not per volume) the MNI152 template shipped in ``rtserver/data`` is
registered to the run's reference EPI volume by a 12-parameter affine transform, and the
Schaefer-200 + Tian S2 atlas regions of :data:`rtserver.core.atlas.ROI_DEFINITIONS` are carried
into the EPI grid through it (nearest neighbour, then restricted to the EPI's brain).

How (numpy/scipy; registration libraries are not dependencies of this project)
    1. Brain masks: the template's (shipped) and the EPI's (intensity above half the mean
       of the brighter voxels, largest connected component, holes filled).
    2. Start: the two masks' centres of mass aligned, no rotation or scaling.
    3. Mask fit: the 12 affine parameters minimise the squared difference between the
       smoothed masks (8 mm, then 4 mm), sampled on the EPI grid (Powell's method). Masks are
       contrast-free, so this stage does not care how the EPI's intensities look.
    4. Intensity refinement: the normalised cross-correlation between the EPI and the
       template remapped to an EPI-like contrast (CSF bright, grey above white matter) is
       maximised inside the EPI's brain, starting from the mask fit.

Quality (:class:`RegistrationQuality`): the Dice overlap of the registered template brain mask
with the EPI's own brain mask, the intensity correlation after registration, and the volume
scaling of the transform. A registration whose Dice is below ``min_dice`` (default 0.80),
whose correlation is below :data:`MIN_CORRELATION`, or whose scaling is implausible for a
human head is refused with an :class:`~rtserver.errors.InputError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage, optimize

from rtserver.core.atlas import Atlas, Template, label_rois
from rtserver.core.stages.roi import RoiSet
from rtserver.errors import InputError
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: Lowest intensity correlation (template in EPI contrast vs the EPI, inside the brain).
MIN_CORRELATION = 0.3
#: Range of the transform's volume scaling (template brain volume -> EPI brain volume).
SCALE_RANGE = (0.6, 1.6)
#: Length (mm) that makes a unit change of a linear-part parameter move the head edge ~1 mm.
_LEVER_MM = 60.0


@dataclass(frozen=True)
class RegistrationQuality:
    """How well the MNI template fits the reference EPI volume.

    Attributes
    ----------
    dice : float
        Overlap of the registered template brain mask and the EPI's brain mask.
    correlation : float
        Intensity correlation (template in EPI contrast vs EPI) inside the EPI's brain.
    scale : float
        Determinant of the transform's linear part (template -> EPI volume ratio).
    seconds : float
        Time the registration took.
    min_dice : float
        The threshold it was held to.
    """

    dice: float
    correlation: float
    scale: float
    seconds: float
    min_dice: float

    def to_dict(self, timing: bool = True) -> dict:
        """Rounded values for JSON.

        The session file keeps the timing; the model card leaves it out, so that retraining
        writes the same card.
        """
        return {k: round(v, 4) for k, v in asdict(self).items() if timing or k != "seconds"}


def epi_brain_mask(data: np.ndarray) -> np.ndarray:
    """An intensity-based brain mask of an EPI volume.

    Voxels above half the mean of the voxels brighter than the volume's mean; the largest
    connected component, with holes filled (slice by slice too).
    """
    data = np.asarray(data, dtype=np.float64)
    bright = data[data > data.mean()]
    if bright.size == 0:
        return np.zeros(data.shape, dtype=bool)
    mask = data > 0.5 * bright.mean()
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def _template_images(template: Template) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template in EPI-like contrast, its brain mask (float), and its affine."""
    return template.epi_contrast(), template.brain_mask.astype(np.float64), template.affine


def _params_to_matrix(params: np.ndarray, start: np.ndarray) -> np.ndarray:
    """EPI world -> template world: ``start`` changed by 12 scaled parameters."""
    matrix = start.copy()
    matrix[:3, :3] += params[:9].reshape(3, 3) / _LEVER_MM
    matrix[:3, 3] += params[9:]
    return matrix


class _Sampler:
    """Samples a template image (smoothed) at EPI grid points for a given transform."""

    def __init__(self, image: np.ndarray, template_affine: np.ndarray, sigma_mm: float,
                 points_world: np.ndarray) -> None:
        zoom = float(np.mean(np.sqrt((template_affine[:3, :3] ** 2).sum(axis=0))))
        self.image = ndimage.gaussian_filter(image, sigma_mm / zoom) if sigma_mm else image
        self.to_voxels = np.linalg.inv(template_affine)
        self.points = np.vstack([points_world.T, np.ones(len(points_world))])

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        coords = (self.to_voxels @ matrix @ self.points)[:3]
        return ndimage.map_coordinates(self.image, coords, order=1, mode="constant", cval=0.0)


def register_template(reference: Volume, template: Template) -> tuple[np.ndarray, np.ndarray]:
    """Affine transform from the reference EPI's world space to the MNI template's.

    Parameters
    ----------
    reference : Volume
        The reference EPI volume.
    template : Template
        The MNI template (:func:`rtserver.resources.load_template`).

    Returns
    -------
    matrix : numpy.ndarray
        4x4, EPI world (mm) -> template world (mm).
    epi_mask : numpy.ndarray
        The EPI's brain mask used.
    """
    contrast, template_mask, template_affine = _template_images(template)
    data = np.asarray(reference.data, dtype=np.float64)
    epi_mask = epi_brain_mask(data)
    if epi_mask.sum() < 100:
        raise InputError(f"The reference volume has no brain to register to: its intensity "
                         f"mask holds {int(epi_mask.sum())} voxels (expected >= 100).")
    affine = reference.affine
    ijk = np.indices(data.shape).reshape(3, -1).T.astype(np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    epi_centre = world[epi_mask.ravel()].mean(axis=0)
    template_ijk = np.argwhere(template_mask > 0.5).astype(np.float64)
    template_centre = (template_ijk @ template_affine[:3, :3].T + template_affine[:3, 3]).mean(0)
    start = np.eye(4)
    start[:3, 3] = template_centre - epi_centre
    params = np.zeros(12)
    rng = np.random.default_rng(0)
    # Mask fit on every second voxel (coarse), smoothed masks.
    step = max(1, int(round(6.0 / float(np.min(reference.zooms)))))
    coarse = np.zeros(data.shape, dtype=bool)
    coarse[::step, ::step, ::step] = True
    points = world[coarse.ravel()]
    for sigma in (8.0, 4.0):
        sampler = _Sampler(template_mask, template_affine, sigma, points)
        target = ndimage.gaussian_filter(epi_mask.astype(np.float64),
                                         sigma / reference.zooms)[coarse]

        def mask_cost(p, sampler=sampler, target=target):
            return float(np.mean((sampler(_params_to_matrix(p, start)) - target) ** 2))

        params = optimize.minimize(mask_cost, params, method="Powell",
                                   options={"xtol": 1e-2, "ftol": 1e-6, "maxfev": 4000}).x
    # Intensity refinement inside the EPI brain.
    inside = epi_mask.ravel()
    chosen = np.flatnonzero(inside)
    if chosen.size > 8000:
        chosen = np.sort(rng.choice(chosen, 8000, replace=False))
    sampler = _Sampler(contrast, template_affine, 3.0, world[chosen])
    target = ndimage.gaussian_filter(data, 3.0 / reference.zooms).ravel()[chosen]
    target = (target - target.mean()) / (target.std() or 1.0)

    def intensity_cost(p):
        values = sampler(_params_to_matrix(p, start))
        sd = values.std()
        return 1.0 if sd == 0 else -float(np.mean((values - values.mean()) / sd * target))

    refined = optimize.minimize(intensity_cost, params, method="Powell",
                                options={"xtol": 1e-2, "ftol": 1e-5, "maxfev": 3000}).x
    return _params_to_matrix(refined, start), epi_mask


def atlas_rois(reference: Volume, template: Template, atlas: Atlas,
               min_dice: float = 0.8) -> tuple[RoiSet, RegistrationQuality]:
    """The cortico-striatal ROIs on the reference EPI grid, via the template registration.

    Parameters
    ----------
    reference : Volume
        The run's (or session's) reference volume.
    template : Template
        The MNI template (:func:`rtserver.resources.load_template`).
    atlas : Atlas
        The atlas whose regions make the ROIs (:func:`rtserver.resources.load_atlas`).
    min_dice : float
        Refuse a registration whose brain-mask Dice is below this.

    Returns
    -------
    rois : RoiSet
        Labels of :data:`rtserver.core.atlas.ROI_DEFINITIONS` on the reference grid.
    quality : RegistrationQuality

    Raises
    ------
    InputError
        If the registration is refused (the message gives the numbers), or an ROI ends up
        with no voxel.
    """
    started = time.perf_counter()
    matrix, epi_mask = register_template(reference, template)
    contrast, template_mask, template_affine = _template_images(template)
    shape = reference.shape
    ijk = np.indices(shape).reshape(3, -1).T.astype(np.float64)
    world = ijk @ reference.affine[:3, :3].T + reference.affine[:3, 3]
    registered_mask = _Sampler(template_mask, template_affine, 0.0, world)(matrix) > 0.5
    registered_mask = registered_mask.reshape(shape)
    dice = float(2.0 * np.sum(registered_mask & epi_mask)
                 / max(1, registered_mask.sum() + epi_mask.sum()))
    values = _Sampler(contrast, template_affine, 0.0, world[epi_mask.ravel()])(matrix)
    epi_values = np.asarray(reference.data, dtype=np.float64)[epi_mask]
    correlation = float(np.corrcoef(values, epi_values)[0, 1]) if values.std() > 0 else 0.0
    scale = float(1.0 / abs(np.linalg.det(matrix[:3, :3])))
    quality = RegistrationQuality(dice=dice, correlation=correlation, scale=scale,
                                  seconds=time.perf_counter() - started, min_dice=min_dice)
    log.info("MNI template -> reference EPI: Dice %.3f, correlation %.3f, scale %.2f (%.1f s)",
             dice, correlation, scale, quality.seconds)
    problems = []
    if not dice >= min_dice:
        problems.append(f"brain-mask Dice {dice:.3f} < {min_dice:.2f}")
    if not correlation >= MIN_CORRELATION:
        problems.append(f"intensity correlation {correlation:.3f} < {MIN_CORRELATION:.2f}")
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        problems.append(f"volume scaling {scale:.2f} outside {SCALE_RANGE}")
    if problems:
        raise InputError("Atlas registration to the reference volume refused ("
                         + "; ".join(problems) + "): is it a brain EPI? Give ROI masks in "
                         "EPI space instead.", setting="roi.mask")
    coords = (np.linalg.inv(atlas.affine) @ matrix @ np.vstack([world.T, np.ones(len(world))]))
    sampled = ndimage.map_coordinates(atlas.labels, coords[:3], order=0, mode="constant", cval=0)
    labels, names = label_rois(sampled.reshape(shape), atlas)
    labels[~epi_mask] = 0
    empty = [name for value, name in names.items() if not np.any(labels == value)]
    if empty:
        raise InputError(f"After atlas registration the ROIs {empty} have no voxel in the "
                         "reference volume's field of view; give ROI masks in EPI space "
                         "instead.", setting="roi.mask")
    return RoiSet(labels=labels, affine=reference.affine, names=names), quality
