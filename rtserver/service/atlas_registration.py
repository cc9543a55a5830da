"""The MNI atlases mapped into a run's reference EPI with ANTs (``antspyx``), once per session.

From the EPI alone (no anatomical image):

1. The MNI152 template in an EPI-like contrast (:meth:`rtserver.core.atlas.Template.epi_contrast`)
   is registered affinely to the reference EPI (Mattes mutual information, metric restricted
   to the EPI's dilated brain mask).
2. The EPI's field of view is carried back into the template; the template is masked to it,
   so that a partial-coverage slab is matched by the part of the brain it holds.
3. A constrained SyN (few iterations, smooth update and total fields) refines the affine;
   it is kept only if it raises the overlap of the template's brain mask with the EPI's.
4. The atlas labels (2 mm) go through the composed transform into the EPI grid by nearest
   neighbour. (ANTs' ``genericLabel`` was tried: on the simulator's phantoms it gave ROI
   Dice 0.92-0.96 against the planted ROIs, nearest neighbour 0.92-1.00.)

Quality control (:mod:`rtserver.core.registration`): the Dice overlap of the warped template
brain mask with an independent intensity mask of the EPI, the intensity correlation, the
affine's volume scaling, and each ROI's voxel count and fraction inside the field of view.
What fails is refused in one line that names it and what to give instead.

ANTs writes its transforms as files (``.mat`` affine, ``.nii.gz`` warp fields): they are kept in
the run folder when one is given
(:func:`rtserver.service.registration_outputs.write_outputs`), with the ROI label image, its
TSV and a QC picture.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from rtserver.core.atlas import Atlas, Template, label_rois
from rtserver.core.registration import (
    RegistrationQuality,
    check_coverage,
    check_registration,
    dice,
    epi_brain_mask,
    fov_fractions,
    intensity_correlation,
    roi_voxel_counts,
)
from rtserver.core.stages.roi import RoiSet
from rtserver.errors import InputError
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: LPS (ITK, ANTs) <-> RAS (NIfTI) world coordinates.
_FLIP = np.diag([-1.0, -1.0, 1.0])
#: SyN iterations per level (shrink 4, 2, 1): constrained, the EPI carries little detail.
SYN_ITERATIONS = (20, 10, 0)
#: Starting shifts (mm, along the template's z) of the coarse affine (:func:`affine_stage`).
START_SHIFTS_MM = (0.0, -25.0, 25.0)


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ``ants.ANTsImage`` of a 3D array with a NIfTI (RAS) voxel-to-world matrix.

    Parameters
    ----------
    data : numpy.ndarray
        3D voxel array.
    affine : numpy.ndarray
        4x4 voxel-to-world matrix (RAS, mm).

    Returns
    -------
    ants.ANTsImage
        The same image in ANTs' (LPS) physical space.
    """
    import ants

    linear = _FLIP @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.sqrt((linear ** 2).sum(axis=0))
    direction = linear / spacing
    origin = _FLIP @ np.asarray(affine, dtype=np.float64)[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           origin=tuple(float(v) for v in origin),
                           spacing=tuple(float(v) for v in spacing), direction=direction)


@dataclass
class AtlasRegistration:
    """What one atlas-to-EPI registration gave.

    Attributes
    ----------
    rois : RoiSet
        The ROIs on the reference grid.
    quality : RegistrationQuality
        Its numbers (Dice, correlation, scaling, ROI voxel counts and coverage).
    reference : Volume
        The reference EPI.
    template_mask : numpy.ndarray
        The template brain mask warped into the EPI grid.
    epi_mask : numpy.ndarray
        The EPI's own (intensity) brain mask.
    transforms : list of Path
        ANTs transform files, template -> EPI, in the order ANTs applies them (temporary
        until :func:`write_outputs` copies them).
    """

    rois: RoiSet
    quality: RegistrationQuality
    reference: Volume
    template_mask: np.ndarray
    epi_mask: np.ndarray
    transforms: list[Path] = field(default_factory=list)
    workdir: Path | None = None


def _dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=voxels) if voxels else mask


def register_epi(reference: Volume, template: Template, atlas: Atlas, min_dice: float = 0.8,
                 workdir: str | Path | None = None, seed: int = 1,
                 check_rois: bool = True) -> AtlasRegistration:
    """Register the MNI template to the reference EPI (affine, then constrained SyN).

    Parameters
    ----------
    reference : Volume
        The run's reference EPI volume.
    template, atlas : Template, Atlas
        The MNI template and atlas (:mod:`rtserver.resources`).
    min_dice : float
        Refuse a registration whose brain-mask Dice is lower.
    workdir : str, Path or None
        Folder for ANTs' transform files; ``None``: a new temporary folder.
    seed : int
        ANTs' random sampling seed (the result is deterministic for one seed).
    check_rois : bool
        Also refuse ROIs mostly outside the field of view (:func:`check_coverage`).

    Returns
    -------
    AtlasRegistration

    Raises
    ------
    InputError
        If the reference has no brain, or the registration or an ROI fails quality control.
    """
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rt-ants-")) if own else Path(workdir)
    try:
        return _register_epi(reference, template, atlas, min_dice, workdir, seed, check_rois)
    except BaseException:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _register_epi(reference: Volume, template: Template, atlas: Atlas, min_dice: float,
                  workdir: Path, seed: int, check_rois: bool) -> AtlasRegistration:
    """:func:`register_epi` in ``workdir``."""
    import ants

    stage = prepare(reference, workdir)
    epi_mask, fixed = stage.epi_mask, stage.fixed
    fixed_mask = to_ants(_dilate(epi_mask, 2).astype(np.float32), reference.affine)
    contrast = template.epi_contrast()
    moving = to_ants(contrast, template.affine)
    template_mask = to_ants(template.brain_mask.astype(np.float32), template.affine)
    affine_files = affine_stage(fixed, moving, fixed_mask, template_mask, epi_mask,
                                centre_shift(reference, epi_mask, template.brain_mask,
                                             template.affine), workdir, seed)
    # The field of view in template space: where the template is seen by the EPI.
    fov = ants.apply_transforms(moving, to_ants(np.ones(reference.shape, np.float32),
                                                reference.affine),
                                affine_files, whichtoinvert=[True] * len(affine_files),
                                interpolator="nearestNeighbor")
    fov_template = fov.numpy() > 0.5
    masked = to_ants(np.where(_dilate(fov_template, 2), contrast, 0.0), template.affine)
    syn = ants.registration(
        fixed, masked, type_of_transform="SyNOnly", initial_transform=affine_files,
        mask=fixed_mask, outprefix=str(workdir / "syn_"), random_seed=seed,
            aff_random_sampling_rate=1.0,
        reg_iterations=SYN_ITERATIONS, flow_sigma=5.0, total_sigma=2.0, grad_step=0.1,
        syn_metric="mattes", syn_sampling=32)
    # The SyN is kept where it raises the brain-mask overlap; an EPI that the affine
    # already fits (the simulator's, a template-like head) keeps the affine alone.
    method, transforms = "ants-epi-syn", syn["fwdtransforms"]
    warped_mask = ants.apply_transforms(fixed, template_mask, transforms,
                                        interpolator="linear").numpy() > 0.5
    affine_mask = ants.apply_transforms(fixed, template_mask, affine_files,
                                        interpolator="linear").numpy() > 0.5
    affine_dice = dice(affine_mask, epi_mask)
    if affine_dice >= dice(warped_mask, epi_mask):
        method, transforms, warped_mask = "ants-epi-affine", affine_files, affine_mask
    return finish(stage, template, atlas, transforms, affine_files, [True] * len(affine_files), method,
                  _volume_scale(affine_files[0]), min_dice, check_rois, warped_mask,
                  affine_dice)


@dataclass
class Stage:
    """The reference side of a registration: the EPI, its mask, ANTs image and folder."""

    reference: Volume
    data: np.ndarray
    epi_mask: np.ndarray
    fixed: object
    workdir: Path
    started: float


def prepare(reference: Volume, workdir: Path) -> Stage:
    """The reference EPI as ANTs sees it (intensities scaled), and its brain mask.

    Raises
    ------
    InputError
        If the EPI has no brain-like intensity mask.
    """
    started = time.perf_counter()
    data = np.asarray(reference.data, dtype=np.float64)
    epi_mask = epi_brain_mask(data)
    if epi_mask.sum() < 100:
        raise InputError(f"The reference volume has no brain to register to: its intensity "
                         f"mask holds {int(epi_mask.sum())} voxels (expected >= 100); give "
                         "ROI masks in EPI space instead.", setting="roi.mask")
    scale = float(np.percentile(data[epi_mask], 95)) or 1.0
    return Stage(reference, data, epi_mask, to_ants(data / scale, reference.affine), workdir,
                 started)


def finish(stage: Stage, template: Template, atlas: Atlas, transforms: list[str],
           fov_transforms: list[str], fov_invert: list[bool], method: str, scale: float,
           min_dice: float, check_rois: bool, warped_mask: np.ndarray | None = None,
           affine_dice: float | None = None) -> AtlasRegistration:
    """Labels, quality numbers and checks of a template -> EPI transform chain.

    Parameters
    ----------
    stage : Stage
        The reference side (:func:`prepare`).
    template, atlas : Template, Atlas
        The MNI template and atlas.
    transforms : list of str
        ANTs transform files, template -> EPI (as ``apply_transforms`` takes them).
    fov_transforms, fov_invert : list
        Transform files and inversion flags that carry the EPI grid into the template.
    method : str
        Name of the method, for the quality record.
    scale : float
        The affine's volume scaling (template -> EPI).
    min_dice : float
        The brain-mask Dice threshold.
    check_rois : bool
        Also refuse ROIs mostly outside the field of view.
    warped_mask : numpy.ndarray or None
        The template brain mask already warped into the EPI grid (computed if ``None``).
    affine_dice : float or None
        The brain-mask Dice of the linear part of the chain alone.

    Returns
    -------
    AtlasRegistration

    Raises
    ------
    InputError
        If the registration or an ROI fails quality control.
    """
    import ants

    fixed, epi_mask, data = stage.fixed, stage.epi_mask, stage.data
    if warped_mask is None:
        warped_mask = ants.apply_transforms(
            fixed, to_ants(template.brain_mask.astype(np.float32), template.affine),
            transforms, interpolator="linear").numpy() > 0.5
    warped_contrast = ants.apply_transforms(
        fixed, to_ants(template.epi_contrast(), template.affine), transforms).numpy()
    atlas_image = to_ants(atlas.labels.astype(np.float32), atlas.affine)
    sampled = ants.apply_transforms(fixed, atlas_image, transforms,
                                    interpolator="nearestNeighbor").numpy()
    labels, names = label_rois(np.rint(sampled).astype(np.int32), atlas)
    labels[~warped_mask] = 0  # inside the registered brain only (the labels' 2 mm edges)
    # Each ROI's share inside the field of view, counted on the atlas grid.
    atlas_labels, _ = label_rois(atlas.labels, atlas)
    fov_atlas = ants.apply_transforms(
        atlas_image, to_ants(np.ones(stage.reference.shape, np.float32),
                             stage.reference.affine),
        fov_transforms, whichtoinvert=fov_invert, interpolator="nearestNeighbor").numpy() > 0.5
    quality = RegistrationQuality(
        dice=dice(warped_mask, epi_mask),
        correlation=intensity_correlation(warped_contrast[epi_mask], data[epi_mask]),
        scale=scale, seconds=time.perf_counter() - stage.started, min_dice=min_dice,
        method=method, roi_voxels=roi_voxel_counts(labels, names),
        roi_fov_fraction=fov_fractions(atlas_labels, names, fov_atlas),
        affine_dice=affine_dice)
    log.info("MNI template -> reference EPI (%s): Dice %.3f, correlation %.3f, scale %.2f "
             "(%.1f s)", method, quality.dice, quality.correlation, quality.scale,
             quality.seconds)
    check_registration(quality)
    if check_rois:
        check_coverage(quality)
    rois = RoiSet(labels=labels, affine=stage.reference.affine, names=names)
    return AtlasRegistration(rois=rois, quality=quality, reference=stage.reference,
                             template_mask=warped_mask, epi_mask=epi_mask,
                             transforms=[Path(p) for p in transforms], workdir=stage.workdir)


def _world_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centre of a mask in LPS world coordinates (mm)."""
    ijk = np.argwhere(mask).mean(axis=0)
    return _FLIP @ (affine[:3, :3] @ ijk + affine[:3, 3])


def centre_shift(reference: Volume, epi_mask: np.ndarray, mask: np.ndarray,
                 affine: np.ndarray) -> np.ndarray:
    """Translation (LPS, EPI -> other image) that aligns the two brain masks' centres."""
    return _world_centre(mask, affine) - _world_centre(epi_mask, reference.affine)


def affine_stage(fixed, moving, fixed_mask, template_mask, epi_mask: np.ndarray,
                 shift: np.ndarray, workdir: Path, seed: int, kind: str = "Affine",
                 name: str = "affine") -> list[str]:
    """The affine (or rigid, ``kind``) EPI -> template, from the best of several starts.

    A slab that covers part of the brain has its centre away from the brain's: the coarse
    affine is run from the masks' centres aligned and from starts shifted by
    :data:`START_SHIFTS_MM` along z, and the start whose template brain mask overlaps the
    EPI's best is refined at full resolution.
    """
    import ants

    # antspyx finds a registration's output files by their prefix: no prefix here is the
    # beginning of another.
    best: tuple[float, str] | None = None
    for n, dz in enumerate(START_SHIFTS_MM):
        start = ants.create_ants_transform(
            transform_type="AffineTransform", dimension=3,
            translation=tuple(float(v) for v in shift + np.array([0.0, 0.0, dz])))
        start_file = str(workdir / f"start{n}-{name}.mat")
        ants.write_transform(start, start_file)
        coarse = ants.registration(
            fixed, moving, type_of_transform=kind, initial_transform=[start_file],
            mask=fixed_mask, outprefix=str(workdir / f"coarse{n}-{name}_"), random_seed=seed,
            aff_random_sampling_rate=1.0,
            aff_iterations=(200, 100), aff_shrink_factors=(4, 2), aff_smoothing_sigmas=(2, 1))
        warped = ants.apply_transforms(fixed, template_mask, coarse["fwdtransforms"],
                                       interpolator="linear").numpy() > 0.5
        score = dice(warped, epi_mask)
        log.debug("affine start %+.0f mm: brain-mask Dice %.3f", dz, score)
        if best is None or score > best[0]:
            best = (score, coarse["fwdtransforms"][0])
    final = ants.registration(
        fixed, moving, type_of_transform=kind, initial_transform=[best[1]],
        mask=fixed_mask, outprefix=str(workdir / f"final-{name}_"), random_seed=seed,
            aff_random_sampling_rate=1.0,
        aff_iterations=(100, 50), aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0))
    return final["fwdtransforms"]


def _volume_scale(affine_file: str) -> float:
    """Template -> EPI volume ratio of an ANTs affine file.

    The file maps EPI points to template points, so the ratio is one over the determinant
    of its linear part.
    """
    import ants

    transform = ants.read_transform(affine_file)
    matrix = np.asarray(transform.parameters[:9], dtype=np.float64).reshape(3, 3)
    return float(1.0 / abs(np.linalg.det(matrix)))


def cleanup(registration: AtlasRegistration) -> None:
    """Remove the temporary folder of a registration's transform files."""
    if registration.workdir is not None:
        shutil.rmtree(registration.workdir, ignore_errors=True)


def make_registrar(template: Template, atlas: Atlas, min_dice: float = 0.8,
                   out_dir: str | Path | None = None, prefix: str = "run",
                   t1w: Volume | None = None):
    """The callable the pipeline maps the atlas with.

    It registers (through ``t1w`` when given,
    :func:`rtserver.service.t1w_registration.register_t1w`; else from the EPI alone,
    :func:`register_epi`), logs its progress and time, writes the run folder's files when
    ``out_dir`` is given, and returns ``(rois, quality)``
    (:data:`~rtserver.core.registration.AtlasRegistrar`).
    """

    def registrar(reference: Volume) -> tuple[RoiSet, RegistrationQuality]:
        if t1w is not None:
            from rtserver.service.t1w_registration import register_t1w

            log.info("atlas -> reference EPI through the T1w: registering with ANTs ...")
            registration = register_t1w(reference, t1w, template, atlas, min_dice=min_dice)
        else:
            log.info("atlas -> reference EPI: registering with ANTs (affine, then SyN) ...")
            registration = register_epi(reference, template, atlas, min_dice=min_dice)
        try:
            if out_dir is not None:
                from rtserver.service.registration_outputs import write_outputs

                files = write_outputs(registration, out_dir, prefix)
                log.info("atlas ROIs, transforms and QC picture written: %s", files["qc"])
        finally:
            cleanup(registration)
        log.info("atlas registration took %.1f s (brain-mask Dice %.3f)",
                 registration.quality.seconds, registration.quality.dice)
        return registration.rois, registration.quality

    return registrar
