"""The MNI atlases mapped into a run's reference EPI through the session's T1-weighted image.

With a T1w of the session (NIfTI, or a DICOM folder read by :mod:`rtserver.scanner`):

1. Skull-stripping by template registration (no network, no model weights): the MNI152 T1
   head is registered affinely to the T1w head, and the template's brain mask carried over.
2. T1w -> MNI nonlinear: SyN between the T1w brain and the template brain, from that affine;
   the brain mask is carried over again through it.
3. Reference EPI -> T1w rigid (Mattes mutual information, several starts along z as for
   the EPI-only path), on the T1w brain.
4. The chain (EPI <- T1w rigid, T1w <- MNI warp and affine) is composed once into one
   displacement field on the EPI grid; the atlas labels go through it with ``genericLabel``.

Quality control is that of the EPI-only path
(:func:`rtserver.service.atlas_registration.finish`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from rtserver.core.atlas import Atlas, Template
from rtserver.core.registration import dice
from rtserver.errors import InputError
from rtserver.scanner.sources import open_source
from rtserver.service.atlas_registration import (
    AtlasRegistration,
    affine_stage,
    centre_shift,
    finish,
    prepare,
    to_ants,
)
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: SyN iterations (shrink 4, 2, 1) of the T1w -> MNI stage.
T1W_SYN_ITERATIONS = (40, 20, 0)


def read_t1w(path: str | Path) -> Volume:
    """A T1-weighted image from a NIfTI file or a DICOM folder (its first volume).

    Raises
    ------
    InputError
        If it cannot be read (the message names the file and that a T1w was expected).
    """
    try:
        source = open_source(path, tr=1.0)
        return next(iter(source))
    except (InputError, StopIteration) as exc:
        raise InputError(f"T1-weighted image {path}: cannot be read ({exc or 'no volume'}); "
                         "expected a NIfTI file or a DICOM folder.", setting="roi.t1w") from None


def _unit(data: np.ndarray) -> np.ndarray:
    """Intensities divided by their 98th percentile inside the head."""
    data = np.asarray(data, dtype=np.float64)
    scale = float(np.percentile(data[data > 0], 98)) if np.any(data > 0) else 1.0
    return data / (scale or 1.0)


def register_t1w(reference: Volume, t1w: Volume, template: Template, atlas: Atlas,
                 min_dice: float = 0.8, workdir: str | Path | None = None, seed: int = 1,
                 check_rois: bool = True) -> AtlasRegistration:
    """Register the MNI template to the reference EPI through the session's T1w.

    Parameters
    ----------
    reference : Volume
        The run's reference EPI.
    t1w : Volume
        The session's T1-weighted image (:func:`read_t1w`).
    template, atlas : Template, Atlas
        The MNI template (with skull) and atlas.
    min_dice : float
        Refuse a registration whose EPI brain-mask Dice is lower.
    workdir : str, Path or None
        Folder for ANTs' files; ``None``: a temporary folder.
    seed : int
        ANTs' sampling seed.
    check_rois : bool
        Also refuse ROIs mostly outside the field of view.

    Returns
    -------
    AtlasRegistration
        Its ``transforms`` hold the one composed displacement field (template -> EPI).

    Raises
    ------
    InputError
        If the EPI or the registration fails quality control.
    """
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rt-ants-t1w-")) if own else Path(workdir)
    try:
        return _register_t1w(reference, t1w, template, atlas, min_dice, workdir, seed,
                             check_rois)
    except BaseException:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _skull_strip(t1, head, template_mask, workdir: Path, seed: int) -> tuple[list[str], object]:
    """Template head -> T1w head affine, and the template brain mask carried to the T1w."""
    import ants

    affine = ants.registration(
        t1, head, type_of_transform="Affine", outprefix=str(workdir / "t1head-affine_"),
        random_seed=seed, aff_random_sampling_rate=1.0, aff_iterations=(300, 150, 50),
        aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0))
    mask = ants.apply_transforms(t1, template_mask, affine["fwdtransforms"],
                                 interpolator="linear")
    return affine["fwdtransforms"], mask


def _register_t1w(reference: Volume, t1w: Volume, template: Template, atlas: Atlas,
                  min_dice: float, workdir: Path, seed: int,
                  check_rois: bool) -> AtlasRegistration:
    """:func:`register_t1w` in ``workdir``."""
    import ants

    stage = prepare(reference, workdir)
    log.info("T1w: skull-stripping by template registration ...")
    t1_data = _unit(t1w.data)
    t1 = to_ants(t1_data, t1w.affine)
    head = to_ants(_unit(template.t1), template.affine)
    template_mask = to_ants(template.brain_mask.astype(np.float32), template.affine)
    head_affine, mask = _skull_strip(t1, head, template_mask, workdir, seed)
    brain = ndimage.binary_dilation(mask.numpy() > 0.5, iterations=1)
    log.info("T1w -> MNI: SyN on the brain ...")
    syn = ants.registration(
        to_ants(np.where(brain, t1_data, 0.0), t1w.affine),
        to_ants(np.where(template.brain_mask, _unit(template.t1), 0.0), template.affine),
        type_of_transform="SyNOnly", initial_transform=head_affine,
        outprefix=str(workdir / "t1syn_"), random_seed=seed, reg_iterations=T1W_SYN_ITERATIONS,
        syn_metric="CC", syn_sampling=2)
    brain = ants.apply_transforms(t1, template_mask, syn["fwdtransforms"],
                                  interpolator="linear").numpy() > 0.5
    log.info("reference EPI -> T1w: rigid ...")
    t1_brain = to_ants(np.where(brain, t1_data, 0.0), t1w.affine)
    brain_image = to_ants(brain.astype(np.float32), t1w.affine)
    fixed_mask = to_ants(ndimage.binary_dilation(stage.epi_mask, iterations=2)
                         .astype(np.float32), reference.affine)
    rigid = affine_stage(stage.fixed, t1_brain, fixed_mask, brain_image, stage.epi_mask,
                         centre_shift(reference, stage.epi_mask, brain, t1w.affine), workdir,
                         seed, kind="Rigid", name="epi-t1w")
    chain = list(rigid) + list(syn["fwdtransforms"])
    composed = ants.apply_transforms(stage.fixed, head, chain,
                                     compose=str(workdir / "composed_"))
    fov = list(head_affine) + list(rigid)
    transform = ants.read_transform(head_affine[0])
    linear = np.asarray(transform.parameters[:9], dtype=np.float64).reshape(3, 3)
    linear_mask = ants.apply_transforms(stage.fixed, template_mask, list(rigid) + head_affine,
                                        interpolator="linear").numpy() > 0.5
    return finish(stage, template, atlas, [composed], fov, [True] * len(fov), "ants-t1w",
                  float(1.0 / abs(np.linalg.det(linear))), min_dice, check_rois,
                  affine_dice=dice(linear_mask, stage.epi_mask))
