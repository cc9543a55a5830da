"""Tests of the simulator's head motion: its direction, its undoing, and the fast renderer."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from rtserver.core.hrf import condition_regressors
from rtserver.paradigm import Paradigm
from rtserver.rigid import grid_centre, params_to_matrix, voxel_mapping
from rtserver.sim import simulate_subject
from rtserver.sim.activation import Activation
from rtserver.sim.motion import apply_motion, motion_trajectory
from rtserver.sim.phantom import build_phantom, padded_phantom
from rtserver.sim.render import Renderer
from rtserver.sim.subject import SimulatedSubject

from .sim_helpers import MOTION_COLUMNS, SMALL, VOXEL, load_data, read_tsv


def blob(shape: tuple[int, int, int], centre_ijk: np.ndarray, sigma: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    distance2 = sum((grid[i] - centre_ijk[i]) ** 2 for i in range(3))
    return np.exp(-distance2 / (2.0 * sigma**2))


@pytest.fixture(scope="module")
def large_motion(tmp_path_factory, tiny_paradigm) -> SimulatedSubject:
    """A short run with three times the usual motion (spikes of 3-6 mm)."""
    return simulate_subject(tmp_path_factory.mktemp("large"), "P01", "patient", 2,
                            paradigm=tiny_paradigm, shape=SMALL, voxel_size=VOXEL,
                            motion_scale=3.0)


def test_apply_motion_moves_a_point_to_matrix_times_point():
    """Independent of the resampler: a blob at world point p ends up at M @ p."""
    shape = (40, 44, 36)
    affine = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -50], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    centre_ijk = np.array([17.0, 25.0, 15.0])
    image = blob(shape, centre_ijk, sigma=2.5)
    matrix = params_to_matrix([4.0, -3.0, 2.0, 0.08, -0.05, 0.1], grid_centre(shape, affine))
    moved = apply_motion(image, matrix, affine)

    point = affine @ (*centre_ijk, 1.0)
    found_ijk = np.array(ndimage.center_of_mass(np.clip(moved, 0, None)))
    found = affine[:3, :3] @ found_ijk + affine[:3, 3]
    assert np.linalg.norm(found - (matrix @ point)[:3]) < 0.1  # mm
    assert np.linalg.norm(found - (np.linalg.inv(matrix) @ point)[:3]) > 5.0


def test_planted_motion_is_undone_by_sampling_at_matrix_times_x(large_motion):
    """V_k sampled at M_k @ x reproduces volume 0; the inverse matrix makes it worse."""
    run = large_motion.runs[0]
    bold = load_data(run.bold).astype(np.float64)
    affine = nib.load(run.bold).affine
    rows = read_tsv(run.true_motion)
    params = np.array([[float(row[c]) for c in MOTION_COLUMNS[:6]] for row in rows])
    k = int(np.argmax(np.linalg.norm(params[:, :3], axis=1)))
    assert k in run.spike_volumes and np.linalg.norm(params[k, :3]) > 2.5
    matrix = params_to_matrix(params[k], grid_centre(SMALL, affine))

    reference, moved = bold[..., 0], bold[..., k]
    brain = reference > 0.5 * np.median(reference[reference > 300])
    brain[:3], brain[-3:], brain[:, :3], brain[:, -3:] = False, False, False, False
    brain[:, :, :3], brain[:, :, -3:] = False, False  # V_k is unknown past its edges

    def rms(image: np.ndarray) -> float:
        scale = reference[brain].mean() / image[brain].mean()  # ignore the scanner drift
        return float(np.sqrt(np.mean((scale * image[brain] - reference[brain]) ** 2)))

    def sampled_at(mapping: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(moved, mapping, order=3, mode="nearest")

    corrected = rms(sampled_at(voxel_mapping(matrix, affine)))
    uncorrected = rms(moved)
    wrong_way = rms(sampled_at(voxel_mapping(np.linalg.inv(matrix), affine)))
    noise_floor = math.sqrt(2) * 1000 / 60  # two volumes' noise at tSNR 60
    assert corrected < 2 * noise_floor  # noise plus two interpolations at sharp edges
    assert uncorrected > 3 * corrected
    assert wrong_way > 1.4 * uncorrected


def test_renderer_matches_full_grid_resampling():
    """The fast path (shared spline coefficients, padded grid, cropped box) equals
    apply_motion of the volume's noise-free image on the padded grid.
    """
    phantom = build_phantom(SMALL, VOXEL)
    paradigm = Paradigm.from_file("regulation")
    regressors = condition_regressors(paradigm)
    activation = Activation.draw("patient", np.random.default_rng(1))
    params, _ = motion_trajectory(paradigm.n_volumes, np.random.default_rng(0), scale=3.0)
    centre = grid_centre(SMALL, phantom.affine)
    renderer = Renderer(phantom, regressors, activation, params, centre)
    padded = padded_phantom(SMALL, VOXEL, renderer.pad)
    inner = tuple(slice(renderer.pad, renderer.pad + n) for n in SMALL)
    np.testing.assert_allclose(padded.baseline[inner], phantom.baseline, rtol=1e-9)
    np.testing.assert_array_equal(padded.labels[inner], phantom.labels)
    assert np.allclose(grid_centre(padded.baseline.shape, padded.affine), centre)
    maps = activation.maps(padded, reference=phantom)
    for k in (0, 30, 90):
        clean = padded.baseline * (1 + sum(regressors[c][k] * maps[c] / 100 for c in maps))
        matrix = params_to_matrix(params[k], centre)
        expected = apply_motion(clean, matrix, padded.affine, mode="mirror")[inner]
        np.testing.assert_allclose(renderer.render(k), expected, atol=1e-6 * clean.max())
