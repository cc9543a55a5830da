"""Synthetic BIDS datasets with known ground truth: the project's test bed.

``simulate_subject`` writes one subject's runs of a paradigm as a raw BIDS dataset, and the
truth behind them under ``derivatives/simulator/``:

1. **Anatomy.** The MNI152 T1 template (shipped in ``rtserver/data``) is resampled
   (trilinear) onto an EPI grid centred on the template's brain, and its intensities are
   remapped to an EPI-like (T2*-weighted) contrast: CSF brightest, grey matter brighter than
   white matter, about 1000 in brain, 0 outside.
2. **Regions of interest.** The Schaefer-200 + Tian S2 atlas, resampled to the same grid
   (nearest neighbour), gives the cortico-striatal ROIs of :data:`ROI_DEFINITIONS`
   (``nacc``, ``ventral_caudate``, ``dorsal_caudate``, ``putamen``, ``vmpfc_ofc``, ``acc``,
   ``ifg_dlpfc``), its regions looked up by name in the atlas's label file.
3. **Activation.** Each block's condition (``look_drug``, ``look_food``, ...) has, per ROI,
   an amplitude in percent signal change drawn per subject around its group's mean
   (:data:`GROUP_AMPLITUDES`, :data:`OTHER_ROI_AMPLITUDES`, sd
   :data:`SUBJECT_SD_PERCENT`), spread over the ROI's voxels by a smooth pattern of its
   own (:class:`Activation`); block boxcars convolved with the canonical double-gamma HRF
   scale the baseline.
4. **Motion.** A rigid trajectory (slow drift plus one or two spikes) moves the head;
   volume ``k`` is the reference image resampled so that ``V_k(M_k @ x) = reference(x)``
   (:mod:`rtserver.rigid`'s convention). Volume 0 does not move.
5. **Physiology.** Each run draws a heart rate and a breathing rate that drift slowly
   (:class:`Physiology`) and writes them as BIDS ``_physio.tsv.gz`` recordings (a
   pulse-oximeter-like cardiac wave and a breathing-belt wave, 50 Hz). Their phases, at each
   slice's acquisition time, drive RETROICOR-like fluctuations (two harmonics per cycle)
   whose voxel coefficients are smooth random fields, larger in CSF and at the brain's edge.
6. **Scanner.** A slow multiplicative drift (linear plus half-cosine), AR(1) physiological
   noise proportional to the signal, and white thermal noise taken into the magnitude
   (Rician) domain; with the cardiac and respiratory fluctuations they give the requested
   temporal SNR at the median brain intensity. Values are stored as int16, like a scanner's.

Every file is a deterministic function of ``(subject, seed)`` and the arguments: the same
call writes the same bytes (gzip streams carry no timestamp).

Times: a volume's activation and motion are taken at its acquisition start, ``index * TR``;
the cardiac and respiratory fluctuations at each slice's own time (ascending sequential
slices, ``SliceTiming`` in the sidecar).
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from rtserver import __version__, bids
from rtserver.core.atlas import ROI_DEFINITIONS, label_rois, matching_regions
from rtserver.core.hrf import condition_regressors
from rtserver.errors import InputError
from rtserver.paradigm import Paradigm
from rtserver.resources import load_atlas, load_template
from rtserver.rigid import (
    PARAMETER_NAMES,
    framewise_displacement,
    grid_centre,
    params_to_matrix,
    voxel_mapping,
)

logger = logging.getLogger(__name__)

#: A paradigm (shipped name, file or object) or a sequence of them.
ParadigmChoice = str | Path | Paradigm | Sequence[str | Path | Paradigm]

GROUPS = ("patient", "control")
SIMULATOR_NAME = "rtserver simulate"

#: ROIs whose drug and food responses follow the group (the finding); the others respond
#: to every cue alike in both groups.
CUE_REACTIVE_ROIS = ("nacc", "ventral_caudate", "vmpfc_ofc", "ifg_dlpfc")
#: A grid holding fewer voxels of an ROI than this is refused.
MIN_ROI_VOXELS = 3

#: Group mean percent signal change per BIDS ``trial_type`` in the cue-reactive ROIs
#: (:data:`CUE_REACTIVE_ROIS`), per group. Patients respond more to drug cues than to food
#: cues and more while reappraising drug cues than while savoring food cues; controls the
#: other way round. Reappraising lowers the drug response, savoring raises the food
#: response. Trial types not listed (and fixation) have no response.
GROUP_AMPLITUDES = MappingProxyType({
    "patient": MappingProxyType({
        "look_drug": 1.6, "reappraise_drug": 1.3, "look_food": 0.8, "savor_food": 1.0,
        "look_neutral": 0.5,
    }),
    "control": MappingProxyType({
        "look_drug": 0.7, "reappraise_drug": 0.5, "look_food": 1.4, "savor_food": 1.9,
        "look_neutral": 0.5,
    }),
})
#: Group mean percent signal change in the other ROIs, the same in both groups.
OTHER_ROI_AMPLITUDES = MappingProxyType({
    "look_drug": 0.8, "reappraise_drug": 0.7, "look_food": 0.8, "savor_food": 0.9,
    "look_neutral": 0.5,
})
#: Subject-to-subject standard deviation of each ROI's amplitude (percent signal change).
SUBJECT_SD_PERCENT = 0.15
#: Subject-to-subject standard deviation of the subject's own drug bias (percent signal
#: change): a shift drawn once per subject, added half to the drug and taken half from the
#: food conditions in every cue-reactive ROI. With the group means it makes the drug-bias
#: index (drug minus food) differ between groups by about 2 standard deviations, and some
#: subjects respond against their group, as in real cohorts.
SUBJECT_BIAS_SD_PERCENT = 0.75
#: Amplitudes are clipped to this range after the subject's draw.
AMPLITUDE_RANGE_PERCENT = (0.2, 2.5)
#: Voxel pattern inside each ROI: voxel amplitude = ROI amplitude * (1 + sd * z(x)), with z
#: a smooth random field of mean 0 and sd 1 over the ROI's voxels: the weighted sum of a
#: field shared by all conditions, one of the cue category (drug, food or neutral pictures,
#: whatever the strategy: this is what multivoxel decoders trained on passive viewing find
#: again in regulation blocks) and one of the condition itself (the strategy's own part).
PATTERN_SD = 0.5
PATTERN_WEIGHTS = MappingProxyType({"shared": 1.0, "cue": 1.0, "condition": 0.5})
#: Wavelengths (mm) and number of the random plane waves that make a pattern field.
PATTERN_WAVELENGTH_MM = (7.0, 16.0)
PATTERN_WAVES = 24

#: Temporal SNR at the median brain intensity (thermal and physiological noise together).
DEFAULT_TSNR = 60.0
#: Lag-1 autocorrelation of the slow physiological noise (an AR(1) process).
DEFAULT_AR_RHO = 0.3
#: Shares of the noise variance at the median brain intensity: the slow AR(1)
#: physiological noise, the cardiac and the respiratory cycles (RETROICOR-like, larger near
#: CSF and the brain's edge); the rest (0.5) is thermal (white, Rician).
AR_VARIANCE_FRACTION = 0.4
CARDIAC_VARIANCE_FRACTION = 0.05
RESPIRATORY_VARIANCE_FRACTION = 0.05
#: Share of the physiological noise variance that is AR(1) or cyclic, together.
PHYSIOLOGICAL_VARIANCE_FRACTION = (AR_VARIANCE_FRACTION + CARDIAC_VARIANCE_FRACTION
                                   + RESPIRATORY_VARIANCE_FRACTION)
#: Cardiac and respiratory rates (Hz), drawn per run; each varies slowly within the run
#: by the given relative sd, and the breathing depth by RESPIRATORY_DEPTH_SD.
CARDIAC_RATE_HZ = (1.0, 1.3)
RESPIRATORY_RATE_HZ = (0.2, 0.3)
CARDIAC_RATE_SD = 0.04
RESPIRATORY_RATE_SD = 0.08
RESPIRATORY_DEPTH_SD = 0.2
#: Share of a cycle's noise variance in its first and second harmonic.
HARMONIC_POWER = (0.75, 0.25)
#: Extra noise sd, relative to grey matter, in CSF and at the brain's edge (cardiac pulsation
#: near vessels and ventricles; respiratory field changes at the edge).
CARDIAC_CSF_GAIN, CARDIAC_EDGE_GAIN = 2.0, 1.0
RESPIRATORY_EDGE_GAIN = 2.0
#: Wavelengths (mm) of the smooth random fields that give each cycle's coefficients.
PHYSIOLOGICAL_WAVELENGTH_MM = (12.0, 40.0)
#: Sampling rate of the written cardiac and respiratory recordings (BIDS ``_physio``).
PHYSIO_SAMPLING_HZ = 50.0
#: Largest slow drift of each translation (mm) and rotation (degrees); each run draws its own.
MOTION_DRIFT_MAX = (0.5, 0.5)
#: Translation size of a motion spike (mm) and of its rotation (degrees), drawn uniformly.
SPIKE_TRANSLATION_MM = (1.0, 2.0)
SPIKE_ROTATION_DEG = (0.2, 0.6)
#: Largest scanner drift, percent of the signal, for the linear and the cosine term.
DRIFT_MAX_PERCENT = (1.0, 0.5)
#: Mean brain intensity the EPI contrast is scaled to.
BRAIN_INTENSITY = 1000.0
#: Time resolution of the HRF convolution, in steps per TR.
GZIP_LEVEL = 1


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SimulatedRun:
    """The files of one simulated run (absolute paths).

    Attributes
    ----------
    run : int
        Run number (1-based, the BIDS ``run-<n>``).
    task : str
        BIDS task label (the paradigm's ``task``).
    bold, sidecar, events : Path
        Raw BIDS: the 4D int16 image, its JSON sidecar and the events table.
    physio, physio_sidecar : Path
        Raw BIDS: the cardiac and respiratory recording (``_physio.tsv.gz``) and its JSON.
    rois, rois_tsv : Path
        Derivatives: the ROI label image in EPI space and its table of names.
    true_motion, truth : Path
        Derivatives: the planted motion (fMRIPrep columns) and the truth JSON.
    spike_volumes : tuple of int
        Volumes carrying a motion spike.
    """

    run: int
    task: str
    bold: Path
    sidecar: Path
    events: Path
    physio: Path
    physio_sidecar: Path
    rois: Path
    rois_tsv: Path
    true_motion: Path
    truth: Path
    spike_volumes: tuple[int, ...]


@dataclass(frozen=True)
class SimulatedSubject:
    """What :func:`simulate_subject` wrote for one subject.

    Attributes
    ----------
    root : Path
        The BIDS dataset's root folder.
    subject : str
        BIDS label, without ``sub-``.
    group : str
        ``"patient"`` or ``"control"``.
    seed : int
        The seed the subject was simulated with.
    task : str
        BIDS task label of the first paradigm's runs.
    runs : tuple of SimulatedRun
        One entry per run, paradigm by paradigm (for example the localizer's runs, then
        the regulation runs).
    """

    root: Path
    subject: str
    group: str
    seed: int
    task: str
    runs: tuple[SimulatedRun, ...]

    def runs_of(self, task: str) -> tuple[SimulatedRun, ...]:
        """The runs of one task, in run order."""
        return tuple(run for run in self.runs if run.task == task)


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
        int16 ROI labels (0 background), indices of :data:`ROI_DEFINITIONS`.
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


# ---------------------------------------------------------------------------- public API
def simulate_subject(out_dir: str | Path, subject: str, group: str, seed: int, *,
                     paradigm: ParadigmChoice = "regulation",
                     shape: Sequence[int] = (64, 64, 36), voxel_size: float = 3.5,
                     n_runs: int = 1, motion_scale: float = 1.0,
                     progress: bool = False) -> SimulatedSubject:
    """Write one subject's simulated runs, and their ground truth, as a BIDS dataset.

    Parameters
    ----------
    out_dir : str or Path
        Root of the BIDS dataset (created if missing; other subjects in it are kept).
    subject : str
        Alphanumeric BIDS label (``"P01"``; a leading ``"sub-"`` is dropped).
    group : {"patient", "control"}
        Sets the response amplitudes (:data:`GROUP_AMPLITUDES`).
    seed : int
        Non-negative seed. Together with ``subject`` it fixes every random draw.
    paradigm : str, Path, Paradigm or a sequence of them
        A shipped paradigm's name, a paradigm file, or a :class:`~rtserver.paradigm.Paradigm`;
        a sequence (``("localizer", "regulation")``) writes a session with ``n_runs`` runs
        of each task. The subject's responses are the same in every run; noise, physiology
        and motion are each run's own.
    shape : sequence of 3 int
        EPI grid shape.
    voxel_size : float
        Isotropic voxel size (mm).
    n_runs : int
        Runs per paradigm (``run-1`` ... ``run-<n_runs>``), each with its own noise and
        motion.
    motion_scale : float
        Multiplies the planted head motion; 0 gives a motionless head.
    progress : bool
        Show a progress bar over volumes.

    Returns
    -------
    SimulatedSubject
        The paths written.

    Raises
    ------
    InputError
        If an argument is invalid, or the grid does not cover the ROIs.
    """
    subject = _check_subject(subject)
    group = _check_choice("group", group, GROUPS)
    seed = _check_int("seed", seed, minimum=0)
    shape = _check_shape(shape)
    voxel_size = _check_positive("voxel_size", voxel_size)
    n_runs = _check_int("n_runs", n_runs, minimum=1)
    motion_scale = _check_non_negative("motion_scale", motion_scale)
    paradigms = _load_paradigms(paradigm)
    root = _check_out_dir(out_dir)

    phantom = build_phantom(shape, voxel_size)
    _write_dataset_files(root, subject, group)
    (subject_seeds,) = np.random.SeedSequence([seed, *subject.encode("ascii")]).spawn(1)
    activation = Activation.draw(group, np.random.default_rng(subject_seeds))
    runs = []
    for each in paradigms:
        # Each task's runs have seeds of their own, so that no two runs share noise.
        seeds = np.random.SeedSequence(
            [seed, *subject.encode("ascii"), 0, *each.task.encode("ascii")]).spawn(n_runs)
        runs += [_simulate_run(root, subject, group, seed, run, each, phantom, activation,
                               motion_scale, np.random.default_rng(seeds[run - 1]), progress)
                 for run in range(1, n_runs + 1)]
    return SimulatedSubject(root=root, subject=subject, group=group, seed=seed,
                            task=paradigms[0].task, runs=tuple(runs))


def simulate_cohort(out_dir: str | Path, n_patients: int, n_controls: int, seed: int, *,
                    paradigm: ParadigmChoice = "regulation",
                    shape: Sequence[int] = (64, 64, 36), voxel_size: float = 3.5,
                    n_runs: int = 1, motion_scale: float = 1.0,
                    progress: bool = True) -> tuple[SimulatedSubject, ...]:
    """Simulate patients ``P01, P02, ...`` and controls ``C01, C02, ...`` into one dataset.

    Each subject gets the same ``seed``; its draws differ because they also depend on its
    label, and ``simulate_subject(out_dir, "P02", "patient", seed)`` reproduces it alone.

    Parameters
    ----------
    out_dir : str or Path
        Root of the BIDS dataset.
    n_patients, n_controls : int
        Group sizes (non-negative, not both zero).
    seed : int
        Non-negative seed.
    paradigm, shape, voxel_size, n_runs, motion_scale
        As for :func:`simulate_subject`.
    progress : bool
        Show a progress bar over subjects.

    Returns
    -------
    tuple of SimulatedSubject
        Patients first, then controls.

    Raises
    ------
    InputError
        If an argument is invalid.
    """
    n_patients = _check_int("n_patients", n_patients, minimum=0)
    n_controls = _check_int("n_controls", n_controls, minimum=0)
    if n_patients + n_controls == 0:
        raise InputError("A cohort needs at least one subject. Got 0 patients and 0 controls.")
    paradigm = _load_paradigms(paradigm)
    width = max(2, len(str(max(n_patients, n_controls))))
    plan = [(f"P{i:0{width}d}", "patient") for i in range(1, n_patients + 1)]
    plan += [(f"C{i:0{width}d}", "control") for i in range(1, n_controls + 1)]
    results = []
    for subject, group in tqdm(plan, desc="simulate", unit="subject", disable=not progress):
        results.append(simulate_subject(
            out_dir, subject, group, seed, paradigm=paradigm, shape=shape,
            voxel_size=voxel_size, n_runs=n_runs, motion_scale=motion_scale))
    return tuple(results)


def build_phantom(shape: Sequence[int], voxel_size: float) -> Phantom:
    """The brain-shaped EPI phantom and its ROIs on an EPI grid.

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

    Raises
    ------
    InputError
        If an argument is invalid, or the grid holds fewer than :data:`MIN_ROI_VOXELS`
        voxels of an ROI.
    """
    return _build_phantom(_check_shape(shape), _check_positive("voxel_size", voxel_size))


def apply_motion(image: np.ndarray, matrix: np.ndarray, affine: np.ndarray, *,
                 order: int = 3, mode: str = "nearest") -> np.ndarray:
    """Move a head: the volume ``V`` with ``V(matrix @ x) = image(x)`` on the same grid.

    Parameters
    ----------
    image : numpy.ndarray
        3D reference image.
    matrix : numpy.ndarray
        4x4 world (RAS, mm) rigid transform, reference -> moved (:mod:`rtserver.rigid`).
    affine : numpy.ndarray
        The grid's voxel-to-world matrix.
    order : int
        Spline order of the interpolation.
    mode : str
        How ``scipy.ndimage.affine_transform`` extends the image past its edges.

    Returns
    -------
    numpy.ndarray
        float64 image on the grid of ``image``.
    """
    # V[j] = image[inv(voxel_mapping) @ j]: the moved voxel j shows reference voxel M^-1 j.
    sampling = np.linalg.inv(voxel_mapping(matrix, affine))
    return ndimage.affine_transform(image, sampling, order=order, mode=mode)


def motion_trajectory(n_volumes: int, rng: np.random.Generator,
                      scale: float = 1.0) -> tuple[np.ndarray, tuple[int, ...]]:
    """A rigid head-motion trajectory: slow drift plus one or two single-volume spikes.

    Parameters
    ----------
    n_volumes : int
        Length of the run.
    rng : numpy.random.Generator
        Source of the random draws.
    scale : float
        Multiplies the whole trajectory (0: no motion, and no spikes).

    Returns
    -------
    params : numpy.ndarray
        ``(n_volumes, 6)``: ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z``
        (radians), relative to volume 0, whose row is zero.
    spike_volumes : tuple of int
        Volumes displaced by a spike (the head returns at the next volume).
    """
    params = np.zeros((n_volumes, 6))
    limits = (MOTION_DRIFT_MAX[0],) * 3 + (math.radians(MOTION_DRIFT_MAX[1]),) * 3
    for column, limit in enumerate(limits):
        walk = ndimage.gaussian_filter1d(np.cumsum(rng.standard_normal(n_volumes)), 4.0)
        walk -= walk[0]
        peak = np.abs(walk).max()
        if peak > 0:
            params[:, column] = walk * rng.uniform(0.3, 1.0) * limit / peak
    candidates = np.arange(max(1, n_volumes // 10), max(1, n_volumes - 2))
    n_spikes = min(int(rng.integers(1, 3)), len(candidates))
    spikes = np.sort(rng.choice(candidates, size=n_spikes, replace=False))
    for volume in spikes:
        params[volume, :3] += _random_direction(rng) * rng.uniform(*SPIKE_TRANSLATION_MM)
        params[volume, 3:] += (_random_direction(rng)
                               * math.radians(rng.uniform(*SPIKE_ROTATION_DEG)))
    if scale == 0:
        return np.zeros_like(params), ()
    return params * scale, tuple(int(v) for v in spikes)


# ---------------------------------------------------------------------------- phantom
def _build_phantom(shape: tuple[int, int, int], voxel_size: float) -> Phantom:
    phantom = _padded_phantom(shape, voxel_size, 0)
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
def _padded_phantom(shape: tuple[int, int, int], voxel_size: float, pad: int) -> Phantom:
    """The phantom of ``shape`` on a grid grown by ``pad`` voxels on every side.

    The anatomy that moves into the field of view comes from the padding. Cropping the
    padding gives the unpadded phantom (intensities are scaled on the inner grid).
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
    """The template's EPI-like contrast and brain mask (a fraction), and the brain's centre.

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
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _epi_affine(shape: tuple[int, int, int], voxel_size: float,
                centre: np.ndarray) -> np.ndarray:
    """A diagonal RAS+ affine whose grid centre is ``centre`` (rounded to 0.5 mm)."""
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
    atlas = load_atlas()
    to_atlas = np.linalg.inv(atlas.affine) @ affine
    resampled = _resample(atlas.labels.astype(np.int16), to_atlas, shape, order=0)
    labels, roi_names = label_rois(resampled, atlas)
    return labels.astype(np.int16), roi_names


# ---------------------------------------------------------------------------- activation
@dataclass(frozen=True)
class Activation:
    """One subject's planted responses: per-ROI amplitudes and voxel patterns.

    Attributes
    ----------
    amplitudes : Mapping
        ROI name -> ``trial_type`` -> mean percent signal change over the ROI's voxels.
    waves : Mapping
        ROI name -> ``"shared"``, ``"cue_<category>"`` or ``trial_type`` ->
        ``(PATTERN_WAVES, 4)`` array of plane waves (frequency vector in cycles/mm, phase in
        radians) whose sum is a pattern field (:data:`PATTERN_WEIGHTS`). Fields are
        functions of world coordinates, so every grid sees the same one.
    bias : float
        The subject's own drug-bias shift (percent signal change; see
        :data:`SUBJECT_BIAS_SD_PERCENT`), already included in ``amplitudes``.
    """

    amplitudes: Mapping[str, Mapping[str, float]]
    waves: Mapping[str, Mapping[str, np.ndarray]]
    bias: float = 0.0

    @classmethod
    def draw(cls, group: str, rng: np.random.Generator) -> Activation:
        """Draw a subject of ``group``: group means plus subject variability, patterns."""
        trial_types = sorted(GROUP_AMPLITUDES[group])
        amplitudes: dict[str, Mapping[str, float]] = {}
        waves: dict[str, Mapping[str, np.ndarray]] = {}
        bias = SUBJECT_BIAS_SD_PERCENT * float(rng.standard_normal())
        cue_keys = sorted({_cue_key(t) for t in trial_types})
        for name, _ in ROI_DEFINITIONS.values():
            means = group_amplitudes(group, name)
            spread = SUBJECT_SD_PERCENT * rng.standard_normal(len(trial_types))
            if name in CUE_REACTIVE_ROIS:
                spread += [bias_sign(t) * bias / 2.0 for t in trial_types]
            draws = np.clip([means[t] for t in trial_types] + spread,
                            *AMPLITUDE_RANGE_PERCENT)
            amplitudes[name] = MappingProxyType(
                {t: float(a) for t, a in zip(trial_types, draws, strict=True)})
            waves[name] = MappingProxyType(
                {key: _plane_waves(rng) for key in ("shared", *cue_keys, *trial_types)})
        return cls(MappingProxyType(amplitudes), MappingProxyType(waves), bias)

    def maps(self, phantom: Phantom, reference: Phantom | None = None) -> dict[str, np.ndarray]:
        """Per ``trial_type``, the percent signal change of every voxel of ``phantom``.

        Each ROI's pattern is normalised (mean 0, sd 1) over the ROI's voxels in
        ``reference`` (default ``phantom``), so that there the ROI's mean response is
        exactly its amplitude; a padded grid passes the unpadded phantom.
        """
        reference = phantom if reference is None else reference
        trial_types = sorted({t for table in self.amplitudes.values() for t in table})
        maps = {t: np.zeros(phantom.shape) for t in trial_types}
        for index, name in phantom.roi_names.items():
            inside = phantom.labels == index
            points = _world_points(phantom, inside)
            reference_points = _world_points(reference, reference.labels == index)
            for trial_type, amplitude in self.amplitudes[name].items():
                field = _pattern_field(self.waves[name], trial_type, points)
                reference_field = _pattern_field(self.waves[name], trial_type,
                                                 reference_points)
                z = (field - reference_field.mean()) / reference_field.std()
                maps[trial_type][inside] = amplitude * (1.0 + PATTERN_SD * z)
        return maps


def _pattern_field(waves: Mapping[str, np.ndarray], trial_type: str,
                   points: np.ndarray) -> np.ndarray:
    """A trial type's pattern field at ``points``: shared + cue category + own parts."""
    return (PATTERN_WEIGHTS["shared"] * _field(waves["shared"], points)
            + PATTERN_WEIGHTS["cue"] * _field(waves[_cue_key(trial_type)], points)
            + PATTERN_WEIGHTS["condition"] * _field(waves[trial_type], points))


def _cue_key(trial_type: str) -> str:
    """``look_drug`` -> ``cue_drug``: the key of a trial type's cue-category pattern."""
    return "cue_" + trial_type.rpartition("_")[2]


def bias_sign(trial_type: str) -> int:
    """+1 for drug trial types, -1 for food ones, 0 otherwise."""
    return {"drug": 1, "food": -1}.get(trial_type.rpartition("_")[2], 0)


def group_amplitudes(group: str, roi: str) -> Mapping[str, float]:
    """Group mean percent signal change per ``trial_type`` in ``roi``."""
    return GROUP_AMPLITUDES[group] if roi in CUE_REACTIVE_ROIS else OTHER_ROI_AMPLITUDES


def _plane_waves(rng: np.random.Generator,
                 wavelengths: tuple[float, float] = PATTERN_WAVELENGTH_MM) -> np.ndarray:
    directions = rng.standard_normal((PATTERN_WAVES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = 1.0 / rng.uniform(*wavelengths, size=(PATTERN_WAVES, 1))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(PATTERN_WAVES, 1))
    return np.hstack([directions * frequencies, phases])


def _field(waves: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sum of the plane waves at world ``points`` (n, 3)."""
    return np.cos(2.0 * np.pi * points @ waves[:, :3].T + waves[:, 3]).sum(axis=1)


def _world_points(phantom: Phantom, inside: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(inside).astype(np.float64)
    return ijk @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]


# ---------------------------------------------------------------------------- one run
def _simulate_run(root: Path, subject: str, group: str, seed: int, run: int,
                  paradigm: Paradigm, phantom: Phantom, activation: Activation,
                  motion_scale: float, rng: np.random.Generator,
                  progress: bool) -> SimulatedRun:
    n_volumes = paradigm.n_volumes
    regressors = condition_regressors(paradigm)
    _log_unplanted(regressors, activation)
    params, spikes = motion_trajectory(n_volumes, rng, motion_scale)
    centre = grid_centre(phantom.shape, phantom.affine)
    drift = _Drift.draw(n_volumes, rng)
    physiology = Physiology.draw(n_volumes * paradigm.tr, rng)
    noise = _NoiseModel(phantom, DEFAULT_TSNR, DEFAULT_AR_RHO, paradigm.tr, physiology, rng)
    renderer = _Renderer(phantom, regressors, activation, params, centre)

    # Moving the head (spline resampling) is the costly part and draws no random numbers,
    # so worker threads do it; noise is added in volume order, which keeps runs
    # reproducible.
    bold = np.empty((*phantom.shape, n_volumes), dtype=np.int16, order="F")  # as NIfTI
    n_workers = min(4, os.cpu_count() or 1)
    with (ThreadPoolExecutor(max_workers=n_workers) as pool,
          tqdm(total=n_volumes, desc=f"sub-{subject} run-{run}", unit="vol",
               disable=not progress) as bar):
        for start in range(0, n_volumes, 4 * n_workers):
            chunk = range(start, min(start + 4 * n_workers, n_volumes))
            for k, image in zip(chunk, pool.map(renderer.render, chunk), strict=True):
                image *= 1.0 + drift.percent[k] / 100.0
                bold[..., k] = _to_int16(noise.add(image))
                bar.update()

    paths = _run_paths(root, subject, paradigm.task, run)
    _write_nifti(paths["bold"], bold, phantom.affine, tr=paradigm.tr)
    _write_json(paths["sidecar"], {
        "RepetitionTime": paradigm.tr, "TaskName": paradigm.task,
        "SliceTiming": [round(float(t), 6) for t in noise.slice_timing],
        "SliceEncodingDirection": "k"})
    _write_physio(paths["physio"], paths["physio_sidecar"], physiology)
    _write_events(paths["events"], paradigm)
    _write_nifti(paths["rois"], phantom.labels, phantom.affine, intent="label")
    _write_tsv(paths["rois_tsv"], ["index", "name"],
               [[str(i), name] for i, name in phantom.roi_names.items()])
    _write_motion(paths["true_motion"], params)
    truth = _truth(root, paths, subject, group, seed, run, paradigm, phantom, activation,
                   regressors,
                   params, spikes, centre, drift, noise, motion_scale)
    _write_json(paths["truth"], truth)
    return SimulatedRun(run=run, task=paradigm.task, spike_volumes=spikes, **paths)


class _Renderer:
    """The noise-free image of each volume: anatomy plus activation, moved with the head.

    Volume k's image before motion is ``baseline * (1 + sum_c r_c(k) a_c roi / 100)``.
    Resampling is linear, so its spline coefficients are the same combination of
    per-condition coefficients, which are computed once. They are computed on a grid grown
    past the field of view, so that anatomy moving into view is the template's, not an
    extrapolation. Only the box the moved brain can reach is resampled (0 outside it).
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
        padded = _padded_phantom(phantom.shape, voxel_size, self.pad)
        self.baseline_coefficients = _spline(padded.baseline)
        padded_maps = activation.maps(padded, reference=phantom)
        self.coefficients = {c: _spline(image) for c, image in
                             _responses(padded, padded_maps, self.regressors).items()}
        support = np.argwhere(padded.baseline > 0) - self.pad  # field-of-view voxels
        self.support = (support.min(axis=0), support.max(axis=0))

    def render(self, k: int) -> np.ndarray:
        """Volume ``k``'s noise-free image (float64, a new array)."""
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
    """Per condition, the image added per unit of its regressor (ROI voxels only)."""
    return {c: phantom.baseline * (maps[c] / 100.0) for c in conditions}


def _largest_displacement(params: np.ndarray, centre: np.ndarray, phantom: Phantom) -> float:
    """The farthest any corner of the field of view moves over the run (mm)."""
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
    """Voxel box (start, stop) holding the moved image of the box ``low..high``."""
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0])
                        for y in (low[1], high[1]) for z in (low[2], high[2])])
    moved = (mapping @ corners.T)[:3]
    start = np.maximum(np.floor(moved.min(axis=1)).astype(int) - 2, 0)
    stop = np.minimum(np.ceil(moved.max(axis=1)).astype(int) + 3, shape)
    return start, stop


def _log_unplanted(regressors: dict[str, np.ndarray], activation: Activation) -> None:
    planted = {t for table in activation.amplitudes.values() for t in table}
    unknown = sorted(set(regressors) - planted)
    if unknown:
        logger.info("Trial types %s have no planted response (amplitude 0).", unknown)


@dataclass(frozen=True)
class _Drift:
    """Scanner drift in percent of the signal: a linear ramp plus a half cosine."""

    linear: float
    cosine: float
    percent: np.ndarray

    @classmethod
    def draw(cls, n_volumes: int, rng: np.random.Generator) -> _Drift:
        u = np.linspace(0.0, 1.0, n_volumes)
        linear = float(rng.uniform(-1.0, 1.0) * DRIFT_MAX_PERCENT[0])
        cosine = float(rng.uniform(-1.0, 1.0) * DRIFT_MAX_PERCENT[1])
        return cls(linear, cosine, linear * u + cosine * np.cos(np.pi * u))


@dataclass(frozen=True)
class Physiology:
    """One run's heartbeat and breathing, sampled at :data:`PHYSIO_SAMPLING_HZ`.

    Attributes
    ----------
    times : numpy.ndarray
        Sample times (s) from the run's first volume.
    cardiac_phase, respiratory_phase : numpy.ndarray
        Unwrapped phases (radians) of the two cycles at ``times``.
    respiratory_depth : numpy.ndarray
        Relative breathing depth (mean 1) at ``times``.
    cardiac_rate, respiratory_rate : float
        The run's mean rates (Hz).
    """

    times: np.ndarray
    cardiac_phase: np.ndarray
    respiratory_phase: np.ndarray
    respiratory_depth: np.ndarray
    cardiac_rate: float
    respiratory_rate: float

    @classmethod
    def draw(cls, duration: float, rng: np.random.Generator) -> Physiology:
        """Draw rates and their slow variation for a run of ``duration`` seconds."""
        step = 1.0 / PHYSIO_SAMPLING_HZ
        times = np.arange(0.0, duration + step / 2, step)
        cardiac_rate = float(rng.uniform(*CARDIAC_RATE_HZ))
        respiratory_rate = float(rng.uniform(*RESPIRATORY_RATE_HZ))

        def slow(sd: float) -> np.ndarray:  # smooth, ~10 s time scale, the given sd
            walk = ndimage.gaussian_filter1d(rng.standard_normal(times.size),
                                             5.0 * PHYSIO_SAMPLING_HZ, mode="reflect")
            return sd * (walk - walk.mean()) / walk.std()

        cardiac = cardiac_rate * (1.0 + slow(CARDIAC_RATE_SD))
        respiratory = respiratory_rate * (1.0 + slow(RESPIRATORY_RATE_SD))
        start = rng.uniform(0.0, 2.0 * np.pi, size=2)
        return cls(times=times,
                   cardiac_phase=start[0] + 2.0 * np.pi * np.cumsum(cardiac) * step,
                   respiratory_phase=start[1] + 2.0 * np.pi * np.cumsum(respiratory) * step,
                   respiratory_depth=np.clip(1.0 + slow(RESPIRATORY_DEPTH_SD), 0.2, None),
                   cardiac_rate=cardiac_rate, respiratory_rate=respiratory_rate)

    def basis(self, times: np.ndarray) -> np.ndarray:
        """RETROICOR-like regressors at ``times``: (..., 8) array.

        Columns: cardiac cos/sin of the phase and of twice the phase, then respiratory
        likewise (times the breathing depth), each harmonic scaled by the square root of
        its share of the power (:data:`HARMONIC_POWER`).
        """
        cardiac = np.interp(times, self.times, self.cardiac_phase)
        respiratory = np.interp(times, self.times, self.respiratory_phase)
        depth = np.interp(times, self.times, self.respiratory_depth)
        columns = []
        for phase, gain in ((cardiac, 1.0), (respiratory, depth)):
            for harmonic, power in enumerate(HARMONIC_POWER, start=1):
                weight = gain * math.sqrt(power)
                columns += [weight * np.cos(harmonic * phase),
                            weight * np.sin(harmonic * phase)]
        return np.stack(columns, axis=-1)

    def recording(self) -> np.ndarray:
        """(n, 2) cardiac and respiratory waves as a pulse oximeter and a belt record them.

        The cardiac wave is a sharp systolic peak with a dicrotic bump; the belt signal is
        the breathing depth times the cosine of the respiratory phase.
        """
        phase = self.cardiac_phase
        cardiac = np.cos(phase) + 0.45 * np.cos(2.0 * phase - 0.6) + 0.15 * np.cos(3.0 * phase)
        respiratory = self.respiratory_depth * np.cos(self.respiratory_phase)
        return np.column_stack([cardiac, respiratory])


class _NoiseModel:
    """Rician thermal noise plus physiological noise proportional to the signal.

    The physiological part is an AR(1) process (white in space) plus cardiac and
    respiratory fluctuations: at voxel x and slice time t, ``sum_j c_j(x) b_j(t)`` with the
    regressors ``b_j`` of :meth:`Physiology.basis` and coefficients ``c_j`` smooth random
    fields scaled by a map that is 1 in grey matter and larger in CSF and at the brain's
    edge. At the median brain intensity the parts have the variance shares of
    :data:`AR_VARIANCE_FRACTION`, :data:`CARDIAC_VARIANCE_FRACTION` and
    :data:`RESPIRATORY_VARIANCE_FRACTION` (the rest is thermal), and together give a
    temporal SNR of ``tsnr``.
    """

    def __init__(self, phantom: Phantom, tsnr: float, rho: float, tr: float,
                 physiology: Physiology, rng: np.random.Generator) -> None:
        self.tsnr = tsnr
        self.rho = rho
        self.rng = rng
        self.physiology = physiology
        self.reference_intensity = float(np.median(phantom.baseline[phantom.brain_mask]))
        total_sd = self.reference_intensity / tsnr
        self.thermal_sd = total_sd * math.sqrt(1.0 - PHYSIOLOGICAL_VARIANCE_FRACTION)
        relative_sd = total_sd / self.reference_intensity
        # Standard deviations as fractions of the local signal.
        self.physiological_fraction = relative_sd * math.sqrt(AR_VARIANCE_FRACTION)
        self.cardiac_fraction = relative_sd * math.sqrt(CARDIAC_VARIANCE_FRACTION)
        self.respiratory_fraction = relative_sd * math.sqrt(RESPIRATORY_VARIANCE_FRACTION)
        n_slices = phantom.shape[2]
        self.slice_timing = np.arange(n_slices) * (tr / n_slices)  # ascending sequential
        self.tr = tr
        self.coefficients = self._coefficient_maps(phantom, rng)
        self._state: np.ndarray | None = None
        self._index = 0

    def _coefficient_maps(self, phantom: Phantom, rng: np.random.Generator) -> np.ndarray:
        """(8, x, y, z) float32 coefficients of the cardiac and respiratory regressors."""
        inside = phantom.brain_mask
        baseline = phantom.baseline
        reference = self.reference_intensity
        csf = ndimage.gaussian_filter((baseline > 1.15 * reference).astype(float), 1.0)
        edge = ndimage.gaussian_filter(
            (inside & ~ndimage.binary_erosion(inside, iterations=2)).astype(float), 1.0)
        grey = inside & (np.abs(baseline - reference) < 0.03 * reference)
        points = _world_points(phantom, inside)
        maps = np.zeros((8, *phantom.shape), dtype=np.float32)
        for source, (weight, fraction) in enumerate((
                (1.0 + CARDIAC_CSF_GAIN * csf + CARDIAC_EDGE_GAIN * edge, self.cardiac_fraction),
                (1.0 + RESPIRATORY_EDGE_GAIN * edge, self.respiratory_fraction))):
            # Mean square 1 over grey-matter voxels, where the tSNR is defined.
            weight = weight / math.sqrt(float(np.mean(weight[grey] ** 2)))
            for column in range(4):
                field = _field(_plane_waves(rng, PHYSIOLOGICAL_WAVELENGTH_MM), points)
                field = (field - field.mean()) / field.std()
                maps[4 * source + column][inside] = fraction * weight[inside] * field
        return maps

    def add(self, image: np.ndarray) -> np.ndarray:
        """The next volume of the run: ``image`` (noise-free) with noise, float32."""
        shape = image.shape
        innovation = self.rng.standard_normal(shape, dtype=np.float32)
        if self._state is None:
            self._state = innovation
        else:
            self._state *= np.float32(self.rho)
            self._state += np.float32(math.sqrt(1.0 - self.rho**2)) * innovation
        regressors = self.physiology.basis(self._index * self.tr + self.slice_timing)
        self._index += 1
        cyclic = np.einsum("jxyz,zj->xyz", self.coefficients,
                           regressors.astype(np.float32), optimize=True)
        signal = image.astype(np.float32)
        modulation = np.float32(self.physiological_fraction) * self._state
        modulation += cyclic
        modulation += np.float32(1.0)
        signal *= modulation
        thermal_sd = np.float32(self.thermal_sd)
        signal += thermal_sd * self.rng.standard_normal(shape, dtype=np.float32)
        imaginary = thermal_sd * self.rng.standard_normal(shape, dtype=np.float32)
        return np.hypot(signal, imaginary, out=signal)


def _spline(image: np.ndarray) -> np.ndarray:
    return ndimage.spline_filter(image, order=3, mode="mirror")


def _to_int16(image: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int16)
    return np.clip(np.rint(image), info.min, info.max).astype(np.int16)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


# ---------------------------------------------------------------------------- writing
def _run_paths(root: Path, subject: str, task: str, run: int) -> dict[str, Path]:
    entities = bids.RunEntities(subject=subject, task=task, run=run)
    derivatives = root / "derivatives" / "simulator"
    entities.folder(root).mkdir(parents=True, exist_ok=True)
    entities.folder(derivatives).mkdir(parents=True, exist_ok=True)
    return {
        "bold": entities.path(root, "bold.nii.gz"),
        "sidecar": entities.path(root, "bold.json"),
        "events": entities.path(root, "events.tsv"),
        "physio": entities.path(root, "physio.tsv.gz"),
        "physio_sidecar": entities.path(root, "physio.json"),
        "rois": entities.path(derivatives, "space-EPI_desc-rois_dseg.nii.gz"),
        "rois_tsv": entities.path(derivatives, "space-EPI_desc-rois_dseg.tsv"),
        "true_motion": entities.path(derivatives, "desc-truemotion_timeseries.tsv"),
        "truth": entities.path(derivatives, "desc-truth.json"),
    }


def _write_dataset_files(root: Path, subject: str, group: str) -> None:
    generated_by = [{
        "Name": SIMULATOR_NAME,
        "Version": __version__,
        "Description": "Synthetic EPI runs with planted activation, noise and head motion.",
    }]
    _write_json(root / "dataset_description.json", {
        "Name": "rtserver simulated cue-reactivity dataset",
        "BIDSVersion": bids.BIDS_VERSION,
        "DatasetType": "raw",
        "Authors": [f"{SIMULATOR_NAME} (synthetic data, no participants)"],
        "GeneratedBy": generated_by,
    })
    readme = root / "README"
    if not readme.exists():
        readme.write_text(README_TEXT, encoding="utf-8")
    _update_participants(root, subject, group)
    _write_json(root / "participants.json", {
        "participant_id": {"Description": "Simulated subject label."},
        "group": {
            "Description": "Simulated group; sets the planted drug and food responses.",
            "Levels": {"patient": "in treatment for heroin use disorder",
                       "control": "healthy control"},
        },
    })
    derivatives = root / "derivatives" / "simulator"
    derivatives.mkdir(parents=True, exist_ok=True)
    _write_json(derivatives / "dataset_description.json", {
        "Name": "rtserver simulator ground truth",
        "BIDSVersion": bids.BIDS_VERSION,
        "DatasetType": "derivative",
        "Authors": [f"{SIMULATOR_NAME} (synthetic data, no participants)"],
        "GeneratedBy": generated_by,
    })


README_TEXT = """\
Synthetic cue-reactivity fMRI dataset written by `rtserver simulate`.

No person was scanned. Each subject's runs are built from the MNI152 template resampled to
an EPI grid, with block responses to drug, food and neutral cues planted in the
cortico-striatal regions of interest (Schaefer-200 and Tian S2 atlases), sized by the
subject's group (participants.tsv: patients respond more to drug cues than to food cues,
controls the other way round), and with thermal, AR(1), cardiac and respiratory noise,
scanner drift and rigid head motion.

func/ holds, per run, the BOLD image, its events (the paradigm's blocks) and the simulated
cardiac and respiratory recordings (_physio.tsv.gz). The ground truth behind every file
(planted motion in fMRIPrep's confound columns, effect sizes, ROI labels in EPI space,
noise settings and the seed) is under derivatives/simulator/. The same command with the
same seed writes the same bytes.
"""


def _update_participants(root: Path, subject: str, group: str) -> None:
    path = root / "participants.tsv"
    rows: dict[str, str] = {}
    if path.exists():
        with path.open(encoding="utf-8", newline="") as stream:
            for row in csv.DictReader(stream, delimiter="\t"):
                if row.get("participant_id"):
                    rows[row["participant_id"]] = row.get("group", "n/a")
    rows[f"sub-{subject}"] = group
    _write_tsv(path, ["participant_id", "group"], [[p, rows[p]] for p in sorted(rows)])


def _write_events(path: Path, paradigm: Paradigm) -> None:
    rows = [[f"{e['onset']:.3f}", f"{e['duration']:.3f}", e["trial_type"]]
            for e in paradigm.events()]
    _write_tsv(path, ["onset", "duration", "trial_type"], rows)


def _write_motion(path: Path, params: np.ndarray) -> None:
    rows = []
    for k, row in enumerate(params):
        fd = "n/a" if k == 0 else f"{framewise_displacement(params[k - 1], row):.8f}"
        rows.append([f"{value:.8f}" for value in row] + [fd])
    _write_tsv(path, [*PARAMETER_NAMES, "framewise_displacement"], rows)


def _write_physio(path: Path, sidecar: Path, physiology: Physiology) -> None:
    """BIDS physiological recording: headerless gzipped TSV plus its JSON sidecar."""
    lines = "".join(f"{c:.5f}\t{r:.5f}\n" for c, r in physiology.recording())
    path.write_bytes(gzip.compress(lines.encode("ascii"), compresslevel=6, mtime=0))
    _write_json(sidecar, {
        "SamplingFrequency": PHYSIO_SAMPLING_HZ,
        "StartTime": 0.0,
        "Columns": ["cardiac", "respiratory"],
        "cardiac": {"Description": "Simulated pulse-oximeter wave (arbitrary units).",
                    "Units": "a.u."},
        "respiratory": {"Description": "Simulated respiratory-belt wave (arbitrary units).",
                        "Units": "a.u."},
    })


def _write_tsv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(columns), *("\t".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *,
                 tr: float | None = None, intent: str | None = None) -> None:
    """Write int16 NIfTI-1, gzipped without a timestamp so equal data give equal bytes."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.int16), affine)
    header = image.header
    header.set_data_dtype(np.int16)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    zooms = tuple(float(z) for z in np.abs(np.diag(affine)[:3]))
    if tr is not None:
        header.set_zooms((*zooms, float(tr)))
    header.set_xyzt_units("mm", "sec")
    if intent is not None:
        header.set_intent(intent)
    header["descrip"] = f"{SIMULATOR_NAME} {__version__}".encode("ascii")
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))


def _truth(root: Path, paths: dict[str, Path], subject: str, group: str, seed: int,
           run: int, paradigm: Paradigm, phantom: Phantom, activation: Activation,
           regressors: dict[str, np.ndarray],
           params: np.ndarray, spikes: tuple[int, ...], centre: np.ndarray,
           drift: _Drift, noise: _NoiseModel, motion_scale: float) -> dict:
    relative = {key: path.relative_to(root).as_posix() for key, path in paths.items()}
    roi_voxels = {name: int(np.count_nonzero(phantom.labels == index))
                  for index, name in phantom.roi_names.items()}
    return {
        "subject": subject,
        "group": group,
        "seed": seed,
        "task": paradigm.task,
        "run": run,
        "software": {"name": SIMULATOR_NAME, "version": __version__},
        "paradigm": paradigm.name,
        "repetition_time": paradigm.tr,
        "n_volumes": paradigm.n_volumes,
        "shape": list(phantom.shape),
        "affine": phantom.affine.tolist(),
        "files": relative,
        "rois": {
            "file": relative["rois"],
            "labels": {str(i): name for i, name in phantom.roi_names.items()},
            "n_voxels": roi_voxels,
            "atlas": "Schaefer 2018 200 parcels 7 networks + Tian S2 3T "
                     "(MNI152NLin6Asym 2 mm), nearest neighbour",
            "atlas_regions": {ROI_DEFINITIONS[i][0]: matching_regions(
                ROI_DEFINITIONS[i][1], load_atlas().index) for i in phantom.roi_names},
        },
        "amplitudes_percent": {
            name: {t: a for t, a in activation.amplitudes[name].items() if t in regressors}
            for name in phantom.roi_names.values()},
        "group_amplitudes_percent": {
            name: {t: a for t, a in group_amplitudes(group, name).items() if t in regressors}
            for name in phantom.roi_names.values()},
        "subject_sd_percent": SUBJECT_SD_PERCENT,
        "subject_drug_bias_percent": round(activation.bias, 6),
        "subject_drug_bias_sd_percent": SUBJECT_BIAS_SD_PERCENT,
        "voxel_pattern": {
            "model": "voxel amplitude = ROI amplitude * (1 + sd * z), z = weighted sum of "
                     "plane-wave fields (shared by all conditions, the cue category's, the "
                     "condition's own), mean 0 and sd 1 over the ROI",
            "weights": dict(PATTERN_WEIGHTS),
            "sd": PATTERN_SD, "wavelength_mm": list(PATTERN_WAVELENGTH_MM),
            "n_waves": PATTERN_WAVES},
        "hrf": {"model": "double gamma (SPM canonical)", "peak_shape": 6.0,
                "undershoot_shape": 16.0, "undershoot_ratio": 1.0 / 6.0,
                "normalisation": "kernel sums to 1 (block plateau = amplitude)",
                "sample_time": "volume onset (index * TR)"},
        "noise": {
            "tsnr": noise.tsnr,
            "ar_rho": noise.rho,
            "reference_intensity": round(noise.reference_intensity, 4),
            "thermal_sd": round(noise.thermal_sd, 4),
            "physiological_sd_fraction": round(noise.physiological_fraction, 6),
            "physiological_variance_fraction": PHYSIOLOGICAL_VARIANCE_FRACTION,
            "ar_variance_fraction": AR_VARIANCE_FRACTION,
            "cardiac_variance_fraction": CARDIAC_VARIANCE_FRACTION,
            "respiratory_variance_fraction": RESPIRATORY_VARIANCE_FRACTION,
            "variance_fractions_at": "voxels within 3 % of the reference intensity "
                                     "(grey matter); cyclic noise is larger in CSF and at "
                                     "the brain's edge",
            "cardiac_rate_hz": round(noise.physiology.cardiac_rate, 6),
            "respiratory_rate_hz": round(noise.physiology.respiratory_rate, 6),
            "physio_model": "RETROICOR-like: 2 harmonics of the cardiac and respiratory "
                            "phases at each slice's time (SliceTiming), respiratory terms "
                            "times the breathing depth; harmonic power shares "
                            f"{list(HARMONIC_POWER)}",
            "physio_file": relative["physio"],
        },
        "drift_percent": {
            "model": "signal * (1 + (linear * u + cosine * cos(pi * u)) / 100), "
                     "u = index / (n_volumes - 1)",
            "linear": round(drift.linear, 6),
            "cosine": round(drift.cosine, 6),
        },
        "motion": {
            "file": relative["true_motion"],
            "scale": motion_scale,
            "spike_volumes": list(spikes),
            "max_abs_translation_mm": round(float(np.abs(params[:, :3]).max()), 6),
            "max_abs_rotation_deg": round(float(np.degrees(np.abs(params[:, 3:]).max())), 6),
            "centre_mm": [round(float(c), 6) for c in centre],
            "convention": "rtserver.rigid: M = params_to_matrix(params, centre) maps "
                          "reference world coordinates to volume k's; V_k(M @ x) = V_0(x)",
        },
    }


# ---------------------------------------------------------------------------- checks
def _load_paradigms(paradigm: object) -> tuple[Paradigm, ...]:
    """One or several paradigms (names, files or objects), with distinct tasks."""
    items = [paradigm] if isinstance(paradigm, str | Path | Paradigm) else list(paradigm)
    if not items:
        raise InputError("paradigm should name at least one paradigm.")
    paradigms = tuple(p if isinstance(p, Paradigm) else Paradigm.from_file(p) for p in items)
    tasks = [p.task for p in paradigms]
    if len(set(tasks)) != len(tasks):
        raise InputError(f"paradigms should have distinct tasks. Got {tasks}.")
    return paradigms


def _check_subject(subject: object) -> str:
    if not isinstance(subject, str):
        raise InputError(f"subject should be a text label such as 'P01'. Got {subject!r}.")
    try:
        return bids.label(subject)
    except InputError:
        raise InputError(f"subject should be an alphanumeric BIDS label such as 'P01'. "
                         f"Got {subject!r}.") from None


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(f"{name} should be one of {', '.join(choices)}. Got {value!r}.")
    return str(value)


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} should be an integer >= {minimum}. Got {value!r}.")
    return int(value)


def _check_positive(name: str, value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
            or not math.isfinite(value) or value <= 0):
        raise InputError(f"{name} should be a positive number. Got {value!r}.")
    return float(value)


def _check_non_negative(name: str, value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
            or not math.isfinite(value) or value < 0):
        raise InputError(f"{name} should be a number >= 0. Got {value!r}.")
    return float(value)


def _check_shape(shape: object) -> tuple[int, int, int]:
    try:
        values = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        values = None
    if (values is None or len(values) != 3
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0
                       for v in values)):
        raise InputError(f"shape should be 3 positive integers (x, y, z). Got {shape!r}.")
    return tuple(int(v) for v in values)


def _check_out_dir(out_dir: object) -> Path:
    try:
        root = Path(out_dir)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"out_dir should be a folder path. Got {out_dir!r}.") from None
    if root.exists() and not root.is_dir():
        raise InputError(f"out_dir should be a folder. Got the file {root}.")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()
