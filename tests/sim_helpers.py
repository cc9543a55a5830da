"""Helpers of the simulator's tests: reading what it wrote, and an independent GLM.

Written here independently of :mod:`rtserver.sim` (HRF, GLM), so that the tests compare the
written data with the truth through code of their own.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import stats

from rtserver.core.atlas import ROI_DEFINITIONS

ROI_NAMES = [name for name, _ in ROI_DEFINITIONS.values()]
#: A grid smaller than the default, still covering the ROIs, to keep the tests fast.
SMALL = (40, 48, 30)
VOXEL = 3.5
MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                  "framewise_displacement"]


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def load_data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def spm_hrf(dt: float) -> np.ndarray:
    """SPM's canonical HRF (peak gamma shape 6, undershoot shape 16, ratio 1/6), sum 1."""
    t = np.arange(0.0, 32.0, dt)
    hrf = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    return hrf / hrf.sum()


def glm_design(events: list[dict[str, str]], n_volumes: int,
               tr: float) -> tuple[list[str], np.ndarray]:
    """Block regressors (HRF-convolved, sampled at volume onsets) + intercept + drift."""
    oversampling = 10
    dt = tr / oversampling
    trial_types = sorted({event["trial_type"] for event in events})
    columns = []
    for trial_type in trial_types:
        boxcar = np.zeros(n_volumes * oversampling)
        for event in events:
            if event["trial_type"] == trial_type:
                onset, duration = float(event["onset"]), float(event["duration"])
                boxcar[round(onset / dt):round((onset + duration) / dt)] = 1.0
        columns.append(np.convolve(boxcar, spm_hrf(dt))[:len(boxcar):oversampling])
    u = np.linspace(0.0, 1.0, n_volumes)
    nuisance = [np.ones(n_volumes), u - 0.5] + [np.cos(np.pi * j * u) for j in (1, 2, 3)]
    return trial_types, np.column_stack(columns + nuisance)


def percent_signal_change(run, roi: int = 1) -> dict[str, float]:
    """Least-squares amplitudes (percent of the baseline) of the mean ROI time series."""
    bold = load_data(run.bold).astype(np.float64)
    labels = load_data(run.rois)
    series = bold[labels == roi].mean(axis=0)
    trial_types, design = glm_design(read_tsv(run.events), bold.shape[-1], 2.0)
    beta = np.linalg.lstsq(design, series, rcond=None)[0]
    intercept = beta[len(trial_types)]
    return {t: 100.0 * b / intercept for t, b in zip(trial_types, beta, strict=False)}
