"""What an independent analysis recovers from the simulator's data.

The planted effects (a GLM of our own and nilearn's), the physiological rates, the tSNR,
the AR(1) noise and the cardiac and respiratory cycles.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from scipy import signal

from rtserver.sim import simulate_subject
from rtserver.sim.subject import SimulatedSubject

from .sim_helpers import ROI_NAMES, SMALL, VOXEL, load_data, percent_signal_change, read_json


@pytest.fixture(scope="module")
def still_runs(tmp_path_factory) -> dict[str, SimulatedSubject]:
    """A patient and a control without head motion, in one dataset."""
    root = tmp_path_factory.mktemp("still")
    return {
        group: simulate_subject(root, subject, group, 11, shape=SMALL, voxel_size=VOXEL,
                                motion_scale=0.0)
        for subject, group in (("P01", "patient"), ("C01", "control"))
    }


def test_glm_recovers_planted_amplitudes_and_group_contrast(still_runs):
    # Percent signal change. benchmarks/simulator_validation.py measures an RMS error of
    # 0.02-0.14 per effect depending on the ROI (largest beside the ventricles, where the
    # cardiac noise is); the tolerances are about 3 of those sd, for an effect and for a
    # difference of two.
    tolerance, contrast_tolerance = 0.3, 0.4
    for subject in still_runs.values():
        run = subject.runs[0]
        truth = read_json(run.truth)["amplitudes_percent"]
        for index, name in enumerate(ROI_NAMES, start=1):
            estimate = percent_signal_change(run, index)
            for trial_type, amplitude in truth[name].items():
                assert estimate[trial_type] == pytest.approx(amplitude, abs=tolerance), (
                    name, trial_type)
            # The subject's own contrasts (drawn around the group's), sign and size.
            for a, b in (("look_drug", "look_food"), ("reappraise_drug", "savor_food")):
                planted = truth[name][a] - truth[name][b]
                found = estimate[a] - estimate[b]
                assert found == pytest.approx(planted, abs=contrast_tolerance), (name, a, b)
                if abs(planted) > contrast_tolerance:
                    assert np.sign(found) == np.sign(planted), (name, a, b)


def recorded_phases(run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample times and the cardiac and respiratory phases, recovered from the BIDS physio
    recording as an analysis would: band-pass around each cycle, then the Hilbert phase.
    """
    sidecar = read_json(run.physio_sidecar)
    assert sidecar["Columns"] == ["cardiac", "respiratory"]
    with gzip.open(run.physio, "rt") as stream:
        recording = np.loadtxt(stream)
    rate = sidecar["SamplingFrequency"]
    times = sidecar["StartTime"] + np.arange(len(recording)) / rate

    def phase(wave: np.ndarray, band: tuple[float, float]) -> np.ndarray:
        b, a = signal.butter(2, np.asarray(band) / (rate / 2.0), "bandpass")
        return np.unwrap(np.angle(signal.hilbert(signal.filtfilt(b, a, wave))))

    return times, phase(recording[:, 0], (0.6, 2.0)), phase(recording[:, 1], (0.1, 0.6))


def retroicor(times: np.ndarray, cardiac: np.ndarray, respiratory: np.ndarray,
              at: np.ndarray) -> np.ndarray:
    """Glover et al. (2000) regressors: 2 harmonics of each cycle's phase at times ``at``."""
    columns = []
    for phase in (np.interp(at, times, cardiac), np.interp(at, times, respiratory)):
        for m in (1, 2):
            columns += [np.cos(m * phase), np.sin(m * phase)]
    return np.column_stack(columns)


def test_physio_recording_follows_the_planted_rates(still_runs):
    run = still_runs["patient"].runs[0]
    truth = read_json(run.truth)["noise"]
    times, cardiac, respiratory = recorded_phases(run)
    duration = times[-1] - times[0]
    # Mean rate = cycles over the run; the planted rates vary by a few percent within it.
    found_cardiac = (cardiac[-1] - cardiac[0]) / (2 * np.pi * duration)
    found_respiratory = (respiratory[-1] - respiratory[0]) / (2 * np.pi * duration)
    assert found_cardiac == pytest.approx(truth["cardiac_rate_hz"], rel=0.03)
    assert found_respiratory == pytest.approx(truth["respiratory_rate_hz"], rel=0.05)
    sidecar = read_json(run.sidecar)
    n_slices = load_data(run.bold).shape[2]
    assert sidecar["SliceTiming"] == pytest.approx(np.arange(n_slices) * 2.0 / n_slices,
                                                   abs=1e-6)


def test_noise_has_planted_tsnr_autocorrelation_and_physiological_cycles(still_runs):
    """TSNR at grey-matter intensity matches the setting within 8 %; after removing drift
    and the RETROICOR regressors built from the physio recording, the lag-1 autocorrelation
    matches the AR(1) setting within 0.02 (its expectation under the planted covariance,
    which accounts for the regression's bias); the cardiac and respiratory regressors
    explain more variance than chance, and more in CSF than in grey matter.
    """
    run = still_runs["patient"].runs[0]
    truth = read_json(run.truth)["noise"]
    bold = load_data(run.bold).astype(np.float64)
    labels = load_data(run.rois)
    n = bold.shape[-1]
    slice_times = np.asarray(read_json(run.sidecar)["SliceTiming"])
    times, cardiac, respiratory = recorded_phases(run)
    mean = bold.mean(axis=-1)
    reference = truth["reference_intensity"]
    # Voxels at the reference intensity (where tSNR is defined), away from the ROIs.
    grey = (np.abs(mean - reference) < 0.03 * reference) & (labels == 0)
    csf = (mean > 1.2 * reference) & (labels == 0)
    assert grey.sum() > 500 and csf.sum() > 100
    u = np.linspace(0.0, 1.0, n)
    drift = np.column_stack([np.ones(n), u, np.cos(np.pi * u)])
    # The non-cyclic noise: AR(1) share plus white share, in units of the total variance.
    lags = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    covariance = (truth["ar_variance_fraction"] * truth["ar_rho"] ** lags
                  + (1.0 - truth["physiological_variance_fraction"]) * np.eye(n))
    shift = (np.eye(n, k=1) + np.eye(n, k=-1)) / 2.0
    found: dict[str, list] = {"tsnr": [], "lag1": [], "expected": [], "r2_grey": [],
                              "r2_csf": [], "chance": []}
    for z in range(bold.shape[2]):
        design = np.hstack([drift, retroicor(times, cardiac, respiratory,
                                             np.arange(n) * 2.0 + slice_times[z])])
        clean = np.eye(n) - design @ np.linalg.pinv(design)
        detrend = np.eye(n) - drift @ np.linalg.pinv(drift)
        kept = clean @ covariance @ clean
        for name, selected in (("grey", grey[..., z]), ("csf", csf[..., z])):
            if not selected.any():
                continue
            series = bold[..., z, :][selected].T  # (time, voxels)
            detrended, residuals = detrend @ series, clean @ series
            r2 = 1.0 - (residuals**2).sum(axis=0) / (detrended**2).sum(axis=0)
            found[f"r2_{name}"].append(r2)
            if name == "grey":
                found["tsnr"].append(series.mean(axis=0) / detrended.std(axis=0, ddof=3))
                found["lag1"].append((residuals[1:] * residuals[:-1]).sum(axis=0)
                                     / (residuals**2).sum(axis=0))
                found["expected"].append(np.trace(shift @ kept) / np.trace(kept))
                # R2 the 8 regressors reach on noise without cycles.
                found["chance"].append(1.0 - np.trace(kept) / np.trace(detrend @ covariance
                                                                         @ detrend))
    tsnr = np.median(np.concatenate(found["tsnr"]))
    assert tsnr == pytest.approx(truth["tsnr"], rel=0.08)
    lag1 = np.median(np.concatenate(found["lag1"]))
    assert lag1 == pytest.approx(np.median(found["expected"]), abs=0.02)
    r2_grey = np.mean(np.concatenate(found["r2_grey"]))
    r2_csf = np.mean(np.concatenate(found["r2_csf"]))
    chance = float(np.mean(found["chance"]))
    cyclic = truth["cardiac_variance_fraction"] + truth["respiratory_variance_fraction"]
    assert r2_grey - chance == pytest.approx(cyclic, abs=0.04)
    assert r2_csf - chance > 1.5 * (r2_grey - chance)


# ---------------------------------------------------------------------------- nilearn
# nilearn 0.14's FirstLevelModel warns that it was asked to generate a mask although it was
# given one, then uses the given mask (the one wanted here).
@pytest.mark.filterwarnings("ignore:.*Generation of a mask has been requested:RuntimeWarning")
def test_nilearn_first_level_model_recovers_planted_roi_effects(still_runs):
    """An independent standard analysis (nilearn's FirstLevelModel, SPM HRF, cosine drift)
    finds every ROI's planted amplitudes within 0.3 % signal change, and the subject's
    drug-vs-food and reappraise-vs-savor contrasts with their planted sign.
    """
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel

    tolerance = 0.3  # percent signal change
    for subject in still_runs.values():
        run = subject.runs[0]
        truth = read_json(run.truth)["amplitudes_percent"]
        bold = nib.load(run.bold)
        labels = load_data(run.rois)
        events = pd.read_csv(run.events, sep="\t")
        model = FirstLevelModel(t_r=2.0, hrf_model="spm", drift_model="cosine",
                                high_pass=0.008, signal_scaling=False, noise_model="ar1",
                                mask_img=nib.Nifti1Image((labels > 0).astype(np.int8),
                                                         bold.affine),
                                minimize_memory=True).fit(bold, events=events)
        mean = load_data(run.bold).astype(np.float64).mean(axis=-1)
        for index, name in enumerate(ROI_NAMES, start=1):
            inside = labels == index
            found = {}
            for trial_type in truth[name]:
                effect = np.asarray(model.compute_contrast(
                    trial_type, output_type="effect_size").dataobj)
                found[trial_type] = 100.0 * effect[inside].mean() / mean[inside].mean()
                assert found[trial_type] == pytest.approx(truth[name][trial_type],
                                                          abs=tolerance), (name, trial_type)
            for a, b in (("look_drug", "look_food"), ("reappraise_drug", "savor_food")):
                planted = truth[name][a] - truth[name][b]
                if abs(planted) > tolerance:
                    assert np.sign(found[a] - found[b]) == np.sign(planted), (name, a, b)
