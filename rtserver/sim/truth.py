"""The truth behind a simulated run: everything planted, as one JSON-ready document.

Written by the simulator as the run's ``desc-truth.json`` under ``derivatives/simulator/``:
the subject, seed and software; the grid; the files; the ROIs and the atlas regions they
come from; the planted amplitudes (the subject's and the group's means) and the voxel
pattern model; the HRF; the noise, drift and motion settings and draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rtserver import __version__
from rtserver.core.atlas import ROI_DEFINITIONS, matching_regions
from rtserver.paradigm import Paradigm
from rtserver.resources import load_atlas
from rtserver.sim.activation import (
    PATTERN_SD,
    PATTERN_WAVELENGTH_MM,
    PATTERN_WAVES,
    PATTERN_WEIGHTS,
    SUBJECT_BIAS_SD_PERCENT,
    SUBJECT_SD_PERCENT,
    Activation,
    group_amplitudes,
)
from rtserver.sim.bids_writer import SIMULATOR_NAME
from rtserver.sim.noise import (
    AR_VARIANCE_FRACTION,
    CARDIAC_VARIANCE_FRACTION,
    PHYSIOLOGICAL_VARIANCE_FRACTION,
    RESPIRATORY_VARIANCE_FRACTION,
    Drift,
    NoiseModel,
)
from rtserver.sim.phantom import Phantom
from rtserver.sim.physiology import HARMONIC_POWER


def run_truth(root: Path, paths: Mapping[str, Path], *, subject: str, group: str, seed: int,
              run: int, paradigm: Paradigm, phantom: Phantom, activation: Activation,
              regressors: Mapping[str, np.ndarray], params: np.ndarray,
              spikes: tuple[int, ...], centre: np.ndarray, drift: Drift, noise: NoiseModel,
              motion_scale: float) -> dict:
    """Describe what was planted in one run.

    Parameters
    ----------
    root : Path
        The BIDS dataset's root; file paths are given relative to it.
    paths : Mapping
        The run's files (:func:`~rtserver.sim.bids_writer.run_paths`).
    subject, group : str
        The subject's label and group.
    seed : int
        The seed the subject was simulated with.
    run : int
        Run number.
    paradigm : Paradigm
        The run's paradigm.
    phantom : Phantom
        The anatomy.
    activation : Activation
        The subject's planted responses.
    regressors : Mapping
        The run's HRF-convolved regressors; only their trial types are reported.
    params : numpy.ndarray
        ``(n_volumes, 6)`` planted motion.
    spikes : tuple of int
        Volumes carrying a motion spike.
    centre : numpy.ndarray
        World centre (mm) of the rotations.
    drift : Drift
        The run's scanner drift.
    noise : NoiseModel
        The run's noise model (after the run: its settings, not its state, are reported).
    motion_scale : float
        The factor the motion was scaled by.

    Returns
    -------
    dict
        The truth document, ready for :func:`json.dumps`.
    """
    relative = {key: path.relative_to(root).as_posix() for key, path in paths.items()}
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
        "rois": _rois(phantom, relative["rois"]),
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
        "noise": _noise(noise, relative["physio"]),
        "drift_percent": {
            "model": "signal * (1 + (linear * u + cosine * cos(pi * u)) / 100), "
                     "u = index / (n_volumes - 1)",
            "linear": round(drift.linear, 6),
            "cosine": round(drift.cosine, 6),
        },
        "motion": _motion(params, spikes, centre, motion_scale, relative["true_motion"]),
    }


def _rois(phantom: Phantom, file: str) -> dict:
    """Describe the ROI label image: its file, labels, sizes and atlas regions."""
    roi_voxels = {name: int(np.count_nonzero(phantom.labels == index))
                  for index, name in phantom.roi_names.items()}
    return {
        "file": file,
        "labels": {str(i): name for i, name in phantom.roi_names.items()},
        "n_voxels": roi_voxels,
        "atlas": "Schaefer 2018 200 parcels 7 networks + Tian S2 3T "
                 "(MNI152NLin6Asym 2 mm), nearest neighbour",
        "atlas_regions": {ROI_DEFINITIONS[i][0]: matching_regions(
            ROI_DEFINITIONS[i][1], load_atlas().index) for i in phantom.roi_names},
    }


def _noise(noise: NoiseModel, physio_file: str) -> dict:
    """Describe the noise model's settings and the run's cardiac and respiratory rates."""
    return {
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
        "physio_file": physio_file,
    }


def _motion(params: np.ndarray, spikes: tuple[int, ...], centre: np.ndarray,
            motion_scale: float, file: str) -> dict:
    """Describe the planted motion: its file, scale, spikes, extent and convention."""
    return {
        "file": file,
        "scale": motion_scale,
        "spike_volumes": list(spikes),
        "max_abs_translation_mm": round(float(np.abs(params[:, :3]).max()), 6),
        "max_abs_rotation_deg": round(float(np.degrees(np.abs(params[:, 3:]).max())), 6),
        "centre_mm": [round(float(c), 6) for c in centre],
        "convention": "rtserver.rigid: M = params_to_matrix(params, centre) maps "
                      "reference world coordinates to volume k's; V_k(M @ x) = V_0(x)",
    }
