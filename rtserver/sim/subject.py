"""Simulating subjects and cohorts: one subject's runs, written as a BIDS dataset.

:func:`simulate_subject` checks its arguments, builds the phantom
(:mod:`rtserver.sim.phantom`), draws the subject's responses
(:mod:`rtserver.sim.activation`) and, run by run, its motion, drift, physiology and noise
(:mod:`rtserver.sim.motion`, :mod:`rtserver.sim.noise`); it renders every volume
(:mod:`rtserver.sim.render`) and writes the files (:mod:`rtserver.sim.bids_writer`,
:mod:`rtserver.sim.truth`). :func:`simulate_cohort` simulates patients and controls into one
dataset.

Random draws: the subject's responses come from ``(seed, subject)``; each task's runs from
``(seed, subject, task)``, one stream per run, so that no two runs share noise and any
task or subject simulated alone gives the same bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtserver.core.hrf import condition_regressors
from rtserver.errors import InputError
from rtserver.paradigm import Paradigm
from rtserver.rigid import grid_centre
from rtserver.sim.activation import GROUPS, Activation
from rtserver.sim.bids_writer import run_paths, write_dataset_files, write_json, write_run_files
from rtserver.sim.checks import (
    ParadigmChoice,
    check_choice,
    check_int,
    check_non_negative,
    check_out_dir,
    check_positive,
    check_shape,
    check_subject,
    load_paradigms,
)
from rtserver.sim.motion import motion_trajectory
from rtserver.sim.noise import DEFAULT_AR_RHO, DEFAULT_TSNR, Drift, NoiseModel
from rtserver.sim.phantom import Phantom, build_phantom
from rtserver.sim.physiology import Physiology
from rtserver.sim.render import Renderer
from rtserver.sim.truth import run_truth

logger = logging.getLogger(__name__)


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
        """Return the runs of one task, in run order.

        Parameters
        ----------
        task : str
            BIDS task label.

        Returns
        -------
        tuple of SimulatedRun
            Empty if the subject has no run of ``task``.
        """
        return tuple(run for run in self.runs if run.task == task)


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
        Sets the response amplitudes (:data:`~rtserver.sim.activation.GROUP_AMPLITUDES`).
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
    subject = check_subject(subject)
    group = check_choice("group", group, GROUPS)
    seed = check_int("seed", seed, minimum=0)
    shape = check_shape(shape)
    voxel_size = check_positive("voxel_size", voxel_size)
    n_runs = check_int("n_runs", n_runs, minimum=1)
    motion_scale = check_non_negative("motion_scale", motion_scale)
    paradigms = load_paradigms(paradigm)
    root = check_out_dir(out_dir)

    phantom = build_phantom(shape, voxel_size)
    write_dataset_files(root, subject, group)
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
    n_patients = check_int("n_patients", n_patients, minimum=0)
    n_controls = check_int("n_controls", n_controls, minimum=0)
    if n_patients + n_controls == 0:
        raise InputError("A cohort needs at least one subject. Got 0 patients and 0 controls.")
    paradigm = load_paradigms(paradigm)
    width = max(2, len(str(max(n_patients, n_controls))))
    plan = [(f"P{i:0{width}d}", "patient") for i in range(1, n_patients + 1)]
    plan += [(f"C{i:0{width}d}", "control") for i in range(1, n_controls + 1)]
    results = []
    for subject, group in tqdm(plan, desc="simulate", unit="subject", disable=not progress):
        results.append(simulate_subject(
            out_dir, subject, group, seed, paradigm=paradigm, shape=shape,
            voxel_size=voxel_size, n_runs=n_runs, motion_scale=motion_scale))
    return tuple(results)


def _simulate_run(root: Path, subject: str, group: str, seed: int, run: int,
                  paradigm: Paradigm, phantom: Phantom, activation: Activation,
                  motion_scale: float, rng: np.random.Generator,
                  progress: bool) -> SimulatedRun:
    """Draw, render and write one run; the draws come from ``rng`` in a fixed order."""
    n_volumes = paradigm.n_volumes
    regressors = condition_regressors(paradigm)
    _log_unplanted(regressors, activation)
    params, spikes = motion_trajectory(n_volumes, rng, motion_scale)
    centre = grid_centre(phantom.shape, phantom.affine)
    drift = Drift.draw(n_volumes, rng)
    physiology = Physiology.draw(n_volumes * paradigm.tr, rng)
    noise = NoiseModel(phantom, DEFAULT_TSNR, DEFAULT_AR_RHO, paradigm.tr, physiology, rng)
    renderer = Renderer(phantom, regressors, activation, params, centre)
    bold = _render_bold(renderer, drift, noise, n_volumes,
                        label=f"sub-{subject} run-{run}", progress=progress)

    paths = run_paths(root, subject, paradigm.task, run)
    write_run_files(paths, bold, paradigm, phantom, noise.slice_timing, physiology, params)
    truth = run_truth(root, paths, subject=subject, group=group, seed=seed, run=run,
                      paradigm=paradigm, phantom=phantom, activation=activation,
                      regressors=regressors, params=params, spikes=spikes, centre=centre,
                      drift=drift, noise=noise, motion_scale=motion_scale)
    write_json(paths["truth"], truth)
    return SimulatedRun(run=run, task=paradigm.task, spike_volumes=spikes, **paths)


def _render_bold(renderer: Renderer, drift: Drift, noise: NoiseModel, n_volumes: int, *,
                 label: str, progress: bool) -> np.ndarray:
    """Render every volume, add drift and noise, and return the 4D int16 image.

    Moving the head (spline resampling) is the costly part and draws no random numbers, so
    worker threads do it; noise is added in volume order, which keeps runs reproducible.
    """
    bold = np.empty((*renderer.phantom.shape, n_volumes), dtype=np.int16, order="F")  # as NIfTI
    n_workers = min(4, os.cpu_count() or 1)
    with (ThreadPoolExecutor(max_workers=n_workers) as pool,
          tqdm(total=n_volumes, desc=label, unit="vol", disable=not progress) as bar):
        for start in range(0, n_volumes, 4 * n_workers):
            chunk = range(start, min(start + 4 * n_workers, n_volumes))
            for k, image in zip(chunk, pool.map(renderer.render, chunk), strict=True):
                image *= 1.0 + drift.percent[k] / 100.0
                bold[..., k] = _to_int16(noise.add(image))
                bar.update()
    return bold


def _log_unplanted(regressors: dict[str, np.ndarray], activation: Activation) -> None:
    """Log the paradigm's trial types that have no planted response."""
    planted = {t for table in activation.amplitudes.values() for t in table}
    unknown = sorted(set(regressors) - planted)
    if unknown:
        logger.info("Trial types %s have no planted response (amplitude 0).", unknown)


def _to_int16(image: np.ndarray) -> np.ndarray:
    """Round and clip an image to int16, as a scanner stores it."""
    info = np.iinfo(np.int16)
    return np.clip(np.rint(image), info.min, info.max).astype(np.int16)
