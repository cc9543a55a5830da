"""Processing stages against known ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from rtserver.config import Config
from rtserver.core.pipeline import Pipeline
from rtserver.core.stages import FeedbackScaler, MotionCorrector, RoiExtractor, RoiSet
from rtserver.errors import InputError, StateError
from rtserver.rigid import (
    framewise_displacement,
    grid_centre,
    matrix_to_params,
    params_to_matrix,
)
from rtserver.scanner.sources import open_source
from rtserver.sim.motion import apply_motion
from rtserver.volume import Volume

from .conftest import SIEMENS_MOSAIC


def move(volume: Volume, params, index: int = 1, noise: float = 0.0, seed: int = 0) -> Volume:
    """Apply a known head motion: the moved volume V satisfies V(M x) = reference(x)."""
    matrix = params_to_matrix(params, grid_centre(volume.shape, volume.affine))
    data = apply_motion(volume.data.astype(np.float64), matrix, volume.affine)
    if noise:
        data += np.random.default_rng(seed).normal(0, noise, data.shape)
    return Volume(data.astype(np.float32), volume.affine, index=index, tr=volume.tr)


def test_rigid_parameters_round_trip():
    params = np.array([1.0, -2.0, 0.5, 0.03, -0.02, 0.05])
    centre = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(matrix_to_params(params_to_matrix(params, centre), centre),
                               params, atol=1e-12)


def test_framewise_displacement_follows_power():
    assert framewise_displacement(np.zeros(6), [1, 0, -1, 0.01, 0, 0]) == pytest.approx(2.5)


@pytest.mark.parametrize("params", [
    [1.5, -1.0, 0.8, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, np.deg2rad(1.5), np.deg2rad(-1.0), np.deg2rad(2.0)],
    [-2.0, 1.5, 1.0, np.deg2rad(-2.0), np.deg2rad(1.0), np.deg2rad(1.5)],
])
def test_motion_is_recovered_on_a_synthetic_head(blob_volume, params):
    """Noise-free smooth phantom: within 0.05 mm and 0.05 degrees per parameter."""
    corrector = MotionCorrector().fit(blob_volume)
    estimate = corrector.partial_fit(move(blob_volume, params)).estimate_
    error = estimate.params - np.asarray(params)
    assert np.abs(error[:3]).max() < 0.05, error
    assert np.rad2deg(np.abs(error[3:])).max() < 0.05, error


def test_motion_is_recovered_on_real_epi():
    """A real Siemens EPI volume moved by 1-2 mm and 1-2 degrees, with noise: within
    0.05 mm and 0.05 degrees per parameter (test_motion.py has the full validation).
    """
    reference = next(iter(open_source(SIEMENS_MOSAIC)))
    params = np.array([1.2, -1.5, 0.8, np.deg2rad(1.5), np.deg2rad(-1.0), np.deg2rad(2.0)])
    moved = move(reference, params, noise=5.0)
    estimate = MotionCorrector().fit(reference).partial_fit(moved).estimate_
    error = estimate.params - params
    assert np.abs(error[:3]).max() < 0.05, error
    assert np.rad2deg(np.abs(error[3:])).max() < 0.05, error


def test_stationary_volume_gives_zero_motion(blob_volume):
    same = Volume(blob_volume.data, blob_volume.affine, index=1, tr=2.0)
    estimate = MotionCorrector().fit(blob_volume).partial_fit(same).estimate_
    assert np.abs(estimate.params).max() < 1e-6
    assert estimate.fd == 0.0
    assert not estimate.censored


def test_motion_fd_and_censoring(blob_volume):
    corrector = MotionCorrector(fd_threshold=0.5).fit(blob_volume)
    corrector.partial_fit(blob_volume)
    estimate = corrector.partial_fit(move(blob_volume, [1.0, 0, 0, 0, 0, 0], index=2)).estimate_
    assert estimate.fd == pytest.approx(1.0, abs=0.05)
    assert estimate.censored


def test_roi_means_equal_numpy_means_without_motion(blob_volume):
    labels = np.zeros(blob_volume.shape, np.int32)
    labels[10:14, 12:16, 8:10] = 1
    labels[18:20, 16:22, 5:12] = 2
    rois = RoiSet(labels=labels, affine=blob_volume.affine, names={1: "nacc", 2: "vmpfc"})
    extractor = RoiExtractor(rois).fit(blob_volume)
    means = extractor.transform(blob_volume)
    assert extractor.names_ == ["nacc", "vmpfc"]
    expected = [blob_volume.data[labels == value].mean() for value in (1, 2)]
    np.testing.assert_allclose(means, expected, rtol=1e-6)


def test_roi_sampling_undoes_motion(blob_volume):
    labels = np.zeros(blob_volume.shape, np.int32)
    labels[12:20, 12:20, 6:14] = 1
    rois = RoiSet(labels=labels, affine=blob_volume.affine, names={1: "roi"})
    extractor = RoiExtractor(rois).fit(blob_volume)
    params = [2.0, -1.5, 1.0, 0.02, -0.01, 0.03]
    moved = move(blob_volume, params)
    matrix = params_to_matrix(params, grid_centre(blob_volume.shape, blob_volume.affine))
    truth = extractor.transform(blob_volume)[0]
    corrected = extractor.transform(moved, matrix)[0]
    uncorrected = extractor.transform(moved)[0]
    assert abs(corrected - truth) < 0.2 * abs(uncorrected - truth)


def test_roi_grid_mismatch_is_refused(blob_volume):
    rois = RoiSet(labels=np.ones((4, 4, 4), np.int32), affine=blob_volume.affine, names={1: "x"})
    with pytest.raises(InputError, match="not on the EPI grid"):
        RoiExtractor(rois).fit(blob_volume)


def test_roi_means_without_motion_need_the_reference_grid(blob_volume):
    """Without a motion matrix the ROI voxel indices are used as they are: another grid is
    refused; with a matrix the volume's own affine places them.
    """
    labels = np.zeros(blob_volume.shape, np.int32)
    labels[10:14, 12:16, 8:10] = 1
    rois = RoiSet(labels=labels, affine=blob_volume.affine, names={1: "nacc"})
    extractor = RoiExtractor(rois).fit(blob_volume)
    shifted_affine = blob_volume.affine.copy()
    shifted_affine[0, 3] += 3.0  # one voxel
    shifted = Volume(blob_volume.data, shifted_affine, index=1, tr=2.0)
    with pytest.raises(InputError, match="not on the reference grid"):
        extractor.transform(shifted)
    smaller = Volume(blob_volume.data[:, :, :10], blob_volume.affine, index=2, tr=2.0)
    with pytest.raises(InputError, match=r"wrong shape.\nExpected \(32, 32, 20\)"):
        extractor.transform(smaller)
    with pytest.raises(InputError, match=r"Expected \(4, 4\).\nGot \(3, 3\)"):
        extractor.transform(blob_volume, np.eye(3))
    # The shifted grid's voxel i lies where the reference's voxel i + 1 does.
    np.testing.assert_allclose(extractor.transform(shifted, np.eye(4)),
                               [blob_volume.data[9:13, 12:16, 8:10].mean()], rtol=1e-6)


def test_reslice_needs_a_matrix_or_an_estimate(blob_volume):
    corrector = MotionCorrector().fit(blob_volume)
    assert corrector.estimate_ is None
    with pytest.raises(StateError, match="needs a motion estimate"):
        corrector.reslice(blob_volume)
    np.testing.assert_allclose(corrector.reslice(blob_volume, np.eye(4)).data,
                               blob_volume.data, rtol=0, atol=1e-2)
    corrector.partial_fit(blob_volume)
    np.testing.assert_allclose(corrector.reslice(blob_volume).data, blob_volume.data,
                               rtol=0, atol=1e-2)
    assert corrector.fit(blob_volume).estimate_ is None  # refitting starts the run over


def test_feedback_is_percent_change_against_baseline():
    scaler = FeedbackScaler(baseline_volumes=4, psc_range=2.0).fit()
    for index in range(4):
        scaler.partial_fit(index, 2.0, 1000.0)
    assert scaler.partial_fit(4, 2.0, 1010.0).value_ == pytest.approx(0.75)
    assert scaler.partial_fit(5, 2.0, 980.0).value_ == pytest.approx(0.0)
    assert scaler.partial_fit(6, 2.0, 1100.0).value_ == pytest.approx(1.0)
    assert scaler.partial_fit(7, 2.0, 995.0, censored=True).value_ == pytest.approx(1.0)


def test_feedback_baseline_comes_from_fixation_blocks():
    from rtserver.paradigm import Paradigm

    paradigm = Paradigm.from_file("regulation")
    scaler = FeedbackScaler(paradigm=paradigm, hrf_delay=4.0).fit()
    # Volume 4 (t=8 s, block looked up at 4 s) is fixation; volume 12 (t=24 s -> 20 s) is a cue.
    assert scaler.is_baseline(4, 2.0)
    assert not scaler.is_baseline(12, 2.0)
    assert not scaler.is_baseline(0, 2.0)


def test_pipeline_is_deterministic_and_causal():
    volumes = list(open_source(SIEMENS_MOSAIC))
    first = [Pipeline(Config()).step(v) for v in [volumes[0]]]
    run_a = Pipeline(Config())
    events_a = [run_a.step(v) for v in volumes]
    run_b = Pipeline(Config())
    events_b = [run_b.step(v) for v in volumes[:5]]
    assert events_a[:5] == events_b  # later volumes do not change earlier results
    assert events_a[0] == first[0]
    assert [e.volume for e in events_a] == list(range(10))
