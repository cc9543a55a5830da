"""Atlas-to-EPI registration: what it must give and the quality control it must pass.

The registration itself runs once at session setup in :mod:`rtserver.service.atlas_registration`
(ANTs, through ``antspyx``: it writes transform files, so it lives in the service layer). The
pure pieces are here, with no I/O:

- :func:`epi_brain_mask`: an EPI brain mask from intensities alone, independent of the
  registration, to check it against;
- :func:`dice`, :func:`intensity_correlation`: overlap and intensity agreement;
- :func:`roi_voxel_counts`, :func:`fov_fractions`: each ROI's size on the EPI grid and the
  share of the atlas region inside the EPI's field of view;
- :class:`RegistrationQuality`, :func:`check_registration` and :func:`check_coverage`: the
  numbers the session JSON and the model card keep, and the thresholds of a refusal;
- :data:`AtlasRegistrar`: the callable the pipeline is handed to map the atlas into a
  reference volume (the core calls it, the service provides it).

Thresholds (:func:`check_registration`): brain-mask Dice >= ``min_dice`` (``[roi] min_dice``,
default 0.80) after the nonlinear warp, >= :data:`MIN_AFFINE_DICE` of the affine alone, and
the affine's volume
scaling inside :data:`SCALE_RANGE`; (:func:`check_coverage`)
every ROI at least :data:`MIN_FOV_FRACTION` inside the field of view. The intensity correlation
is reported, not held to a threshold: the template's EPI-like contrast is a rough model, and
real EPIs from different scanners correlate with it from 0.06 to 0.44.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from rtserver.core.stages.roi import RoiSet
from rtserver.errors import InputError
from rtserver.volume import Volume

#: Range of the affine's volume scaling (template brain volume -> EPI brain volume). The
#: MNI152 brain is larger than most: real EPIs of this project's data give 0.61-0.79.
SCALE_RANGE = (0.4, 1.6)
#: Lowest brain-mask Dice of the affine alone (or ``min_dice`` when higher). Real EPIs of this
#: project's data give 0.87-0.95, the Philips phantom 0.79.
MIN_AFFINE_DICE = 0.85
#: Lowest share of an ROI's atlas region inside the EPI's field of view.
MIN_FOV_FRACTION = 0.5


@dataclass(frozen=True)
class RegistrationQuality:
    """How well the MNI template fits the reference EPI volume.

    Attributes
    ----------
    dice : float
        Overlap of the registered template brain mask and the EPI's own brain mask.
    correlation : float
        Intensity correlation (template in EPI contrast vs EPI) inside the EPI's brain.
    scale : float
        Volume ratio of the affine part (template -> EPI).
    seconds : float
        Time the registration took.
    min_dice : float
        The threshold it was held to.
    method : str
        How it was registered (``"ants-epi"``, ``"ants-t1w"``).
    roi_voxels : Mapping of str to int
        Each ROI's voxel count on the EPI grid.
    roi_fov_fraction : Mapping of str to float
        Each ROI's share of its atlas region inside the EPI's field of view.
    affine_dice : float or None
        The brain-mask Dice of the linear part alone (before the nonlinear warp).
    """

    dice: float
    correlation: float
    scale: float
    seconds: float
    min_dice: float
    method: str = "ants-epi"
    roi_voxels: Mapping[str, int] = field(default_factory=dict)
    roi_fov_fraction: Mapping[str, float] = field(default_factory=dict)
    affine_dice: float | None = None

    def to_dict(self, timing: bool = True) -> dict:
        """Rounded values for JSON.

        The session file keeps the timing; the model card leaves it out, so that retraining
        writes the same card.
        """
        out: dict = {k: round(float(getattr(self, k)), 4)
                     for k in ("dice", "correlation", "scale", "seconds", "min_dice")
                     if timing or k != "seconds"}
        out["affine_dice"] = None if self.affine_dice is None else round(self.affine_dice, 4)
        out["method"] = self.method
        out["roi_voxels"] = {k: int(v) for k, v in self.roi_voxels.items()}
        out["roi_fov_fraction"] = {k: round(float(v), 4)
                                   for k, v in self.roi_fov_fraction.items()}
        return out


#: Maps the atlas into a reference volume: ``registrar(reference) -> (rois, quality)``.
AtlasRegistrar = Callable[[Volume], tuple[RoiSet, RegistrationQuality]]


def epi_brain_mask(data: np.ndarray) -> np.ndarray:
    """An intensity-based brain mask of an EPI volume.

    Voxels above half the mean of the voxels brighter than the volume's mean; the largest
    connected component, with holes filled (slice by slice too).

    Parameters
    ----------
    data : numpy.ndarray
        3D EPI intensities.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape.
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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """The Dice overlap ``2|a & b| / (|a| + |b|)`` of two boolean masks (0 if both empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return float(2.0 * np.sum(a & b) / total) if total else 0.0


def intensity_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two intensity samples (0 when either is constant)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def roi_voxel_counts(labels: np.ndarray, names: Mapping[int, str]) -> dict[str, int]:
    """Each ROI's voxel count in a label image, by name."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(),
                         minlength=max(names, default=0) + 1)
    return {name: int(counts[value]) for value, name in sorted(names.items())}


def fov_fractions(atlas_rois: np.ndarray, names: Mapping[int, str],
                  fov: np.ndarray) -> dict[str, float]:
    """Each ROI's share of its atlas voxels inside the field of view.

    Parameters
    ----------
    atlas_rois : numpy.ndarray
        ROI labels on the atlas grid (:func:`rtserver.core.atlas.label_rois` of the atlas).
    names : Mapping of int to str
        ROI value -> name.
    fov : numpy.ndarray
        Boolean, on the atlas grid: the EPI's field of view carried into the atlas.

    Returns
    -------
    dict of str to float
        ROI name -> fraction in [0, 1] (0 for a region with no atlas voxel).
    """
    atlas_rois = np.asarray(atlas_rois)
    fov = np.asarray(fov, dtype=bool)
    out = {}
    for value, name in sorted(names.items()):
        inside = atlas_rois == value
        n = int(inside.sum())
        out[name] = float(np.sum(inside & fov) / n) if n else 0.0
    return out


def check_registration(quality: RegistrationQuality) -> None:
    """Refuse a registration under the thresholds, in one line that says what to do.

    The linear part alone must reach :data:`MIN_AFFINE_DICE` too: a nonlinear warp can fit
    the template's brain mask onto any blob (a phantom reached 0.85 after SyN), so it may
    refine a registration, never rescue one.

    Raises
    ------
    InputError
        With ``setting="roi.mask"`` if the brain-mask Dice (after the warp, or of the linear
        part alone) or the volume scaling fail (is it a brain EPI?).
    """
    problems = []
    if not quality.dice >= quality.min_dice:
        problems.append(f"brain-mask Dice {quality.dice:.3f} < {quality.min_dice:.2f}")
    elif quality.affine_dice is not None and not quality.affine_dice >= max(
            quality.min_dice, MIN_AFFINE_DICE):
        problems.append(f"brain-mask Dice of the affine alone {quality.affine_dice:.3f} < "
                        f"{max(quality.min_dice, MIN_AFFINE_DICE):.2f}")
    if not SCALE_RANGE[0] <= quality.scale <= SCALE_RANGE[1]:
        problems.append(f"volume scaling {quality.scale:.2f} outside {SCALE_RANGE}")
    if problems:
        raise InputError("Atlas registration to the reference volume refused ("
                         + "; ".join(problems) + "): is it a brain EPI? Give a T1-weighted "
                         "image of the session, or ROI masks in EPI space.", setting="roi.mask")


def check_coverage(quality: RegistrationQuality,
                   min_fov_fraction: float = MIN_FOV_FRACTION) -> None:
    """Refuse ROIs that lie mostly outside the field of view, naming them.

    Raises
    ------
    InputError
        With ``setting="roi.mask"`` if an ROI has no voxel on the EPI grid, or less than
        ``min_fov_fraction`` of its atlas region inside the field of view.
    """
    outside = {name: fraction for name, fraction in quality.roi_fov_fraction.items()
               if fraction < min_fov_fraction}
    empty = [name for name, n in quality.roi_voxels.items() if n == 0]
    if empty or outside:
        what = [f"{name} has no voxel" for name in empty] + [
            f"{name} {100 * f:.0f}% inside" for name, f in outside.items() if name not in empty]
        raise InputError("After atlas registration, ROIs lie mostly outside the reference "
                         f"volume's field of view ({'; '.join(what)}; at least "
                         f"{100 * min_fov_fraction:.0f}% needed): widen the slab, or give ROI "
                         "masks in EPI space.", setting="roi.mask")


#: Same head: lowest intensity correlation of the run's reference with the training reference
#: after an affine registration (same head 0.97-1.00; other heads and the phantom <= 0.35 in
#: this project's data).
SAME_HEAD_MIN_CORRELATION = 0.7
#: Same head: largest stretch of the affine (its singular values' distance from 1); the same
#: head gives <= 1 %, another head or the phantom 4.6-70 %.
SAME_HEAD_MAX_STRETCH = 0.03


def same_head_problems(correlation: float, linear: np.ndarray) -> list[str]:
    """What says two EPI references are not the same head (empty if nothing does).

    Parameters
    ----------
    correlation : float
        Intensity correlation after registering one to the other (affine).
    linear : numpy.ndarray
        The 3x3 linear part of that affine.

    Returns
    -------
    list of str
        Each failed criterion with its numbers.
    """
    problems = []
    if not correlation >= SAME_HEAD_MIN_CORRELATION:
        problems.append(f"intensity correlation {correlation:.2f} < "
                        f"{SAME_HEAD_MIN_CORRELATION:.2f}")
    stretch = float(np.max(np.abs(np.linalg.svd(np.asarray(linear, float))[1] - 1.0)))
    if not stretch <= SAME_HEAD_MAX_STRETCH:
        problems.append(f"size or shape differs by {100 * stretch:.0f}% > "
                        f"{100 * SAME_HEAD_MAX_STRETCH:.0f}%")
    return problems
