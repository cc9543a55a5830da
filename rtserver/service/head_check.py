"""Is a run the head its decoder was trained on? Checked with ANTs before decoding.

A decoder's features are the voxels of ROIs drawn on its training reference, and the run is
motion-corrected to that reference: on another head (another subject, the simulator's
phantom, a run whose registration failed) the same voxel indices are other anatomy, and the
decoder would decode nonsense for the whole run. So the run's reference is registered to the
decoder's training reference (ANTs affine, Mattes mutual information, in the training
reference's brain mask) and the result is held to two criteria
(:func:`rtserver.core.registration.same_head_problems`): the intensities must correlate as
two volumes of one head do, and the affine must be nearly rigid (a head does not change
size or shape between runs). A refusal names both images.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtserver.core.registration import epi_brain_mask, intensity_correlation, same_head_problems
from rtserver.errors import InputError
from rtserver.service.atlas_registration import to_ants
from rtserver.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadMatch:
    """How a run's reference compares with a decoder's training reference.

    Attributes
    ----------
    correlation : float
        Intensity correlation inside the training reference's brain after registration.
    linear : numpy.ndarray
        The affine's 3x3 linear part (run -> training reference).
    seconds : float
        Time taken.
    """

    correlation: float
    linear: np.ndarray
    seconds: float

    @property
    def problems(self) -> list[str]:
        """The criteria it fails (:func:`~rtserver.core.registration.same_head_problems`)."""
        return same_head_problems(self.correlation, self.linear)


def compare_heads(run_reference: Volume, training_reference: Volume, seed: int = 1) -> HeadMatch:
    """Register the run's reference to the training reference (ANTs affine) and compare.

    Parameters
    ----------
    run_reference, training_reference : Volume
        The two EPI volumes.
    seed : int
        ANTs' sampling seed.

    Returns
    -------
    HeadMatch
    """
    import ants

    started = time.perf_counter()
    fixed_data = np.asarray(training_reference.data, dtype=np.float64)
    moving_data = np.asarray(run_reference.data, dtype=np.float64)
    mask = epi_brain_mask(fixed_data)
    if mask.sum() < 100:
        return HeadMatch(0.0, np.eye(3), time.perf_counter() - started)
    fixed = to_ants(fixed_data / (np.percentile(fixed_data, 95) or 1.0),
                    training_reference.affine)
    moving = to_ants(moving_data / (np.percentile(moving_data, 95) or 1.0),
                     run_reference.affine)
    workdir = Path(tempfile.mkdtemp(prefix="rt-head-"))
    try:
        result = ants.registration(
            fixed, moving, type_of_transform="Affine",
            mask=to_ants(mask.astype(np.float32), training_reference.affine),
            outprefix=str(workdir / "head_"), random_seed=seed,
            aff_iterations=(200, 100, 50), aff_shrink_factors=(4, 2, 1),
            aff_smoothing_sigmas=(2, 1, 0))
        transform = ants.read_transform(result["fwdtransforms"][0])
        linear = np.asarray(transform.parameters[:9], dtype=np.float64).reshape(3, 3)
        warped = result["warpedmovout"].numpy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    correlation = intensity_correlation(warped[mask], fixed_data[mask])
    return HeadMatch(correlation, linear, time.perf_counter() - started)


def check_same_head(run_reference: Volume, training_reference: Volume, run_name: str,
                    decoder_name: str) -> HeadMatch:
    """Refuse a run whose reference is not the head the decoder was trained on.

    Parameters
    ----------
    run_reference : Volume
        The run's reference volume.
    training_reference : Volume
        The decoder's training reference (``Decoder.reference``).
    run_name, decoder_name : str
        What to call them in the message (file names).

    Returns
    -------
    HeadMatch
        When it is the same head.

    Raises
    ------
    InputError
        With ``setting="decoder.model"``, naming both, if it is not.
    """
    match = compare_heads(run_reference, training_reference)
    log.info("run reference vs the decoder's training reference: correlation %.3f (%.1f s)",
             match.correlation, match.seconds)
    if match.problems:
        raise InputError(f"The run's reference {run_name} is not the head the decoder "
                         f"{decoder_name} was trained on ({'; '.join(match.problems)} after "
                         "affine registration): train a decoder on this subject's localizer, "
                         "or give the reference of the decoder's own session.",
                         setting="decoder.model")
    return match
