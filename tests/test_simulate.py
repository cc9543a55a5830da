"""Tests of the simulator against its planted ground truth.

Each check compares the written data with the truth it was built from, through code written
here independently of :mod:`rtserver.sim` (HRF, GLM, motion direction).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, signal, stats

from rtserver import __version__
from rtserver.core.atlas import ROI_DEFINITIONS
from rtserver.core.hrf import condition_regressors
from rtserver.errors import InputError
from rtserver.paradigm import Paradigm
from rtserver.resources import load_atlas
from rtserver.rigid import framewise_displacement, grid_centre, params_to_matrix, voxel_mapping
from rtserver.sim import simulate_cohort, simulate_subject
from rtserver.sim.activation import (
    CUE_REACTIVE_ROIS,
    GROUP_AMPLITUDES,
    PATTERN_SD,
    SUBJECT_BIAS_SD_PERCENT,
    SUBJECT_SD_PERCENT,
    Activation,
)
from rtserver.sim.motion import MOTION_DRIFT_MAX, apply_motion, motion_trajectory
from rtserver.sim.phantom import build_phantom, padded_phantom
from rtserver.sim.render import Renderer
from rtserver.sim.subject import SimulatedSubject

from .conftest import TINY_PARADIGM

ROI_NAMES = [name for name, _ in ROI_DEFINITIONS.values()]
#: A grid smaller than the default, still covering the ROIs, to keep the tests fast.
SMALL = (40, 48, 30)
VOXEL = 3.5
MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                  "framewise_displacement"]


# ---------------------------------------------------------------------------- helpers
def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def load_data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


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


def blob(shape: tuple[int, int, int], centre_ijk: np.ndarray, sigma: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    distance2 = sum((grid[i] - centre_ijk[i]) ** 2 for i in range(3))
    return np.exp(-distance2 / (2.0 * sigma**2))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> SimulatedSubject:
    """A patient's regulation run with motion."""
    return simulate_subject(tmp_path_factory.mktemp("patient"), "P01", "patient", 7,
                            shape=SMALL, voxel_size=VOXEL)


@pytest.fixture(scope="module")
def large_motion(tmp_path_factory, tiny_paradigm) -> SimulatedSubject:
    """A short run with three times the usual motion (spikes of 3-6 mm)."""
    return simulate_subject(tmp_path_factory.mktemp("large"), "P01", "patient", 2,
                            paradigm=tiny_paradigm, shape=SMALL, voxel_size=VOXEL,
                            motion_scale=3.0)


@pytest.fixture(scope="module")
def still_runs(tmp_path_factory) -> dict[str, SimulatedSubject]:
    """A patient and a control without head motion, in one dataset."""
    root = tmp_path_factory.mktemp("still")
    return {
        group: simulate_subject(root, subject, group, 11, shape=SMALL, voxel_size=VOXEL,
                                motion_scale=0.0)
        for subject, group in (("P01", "patient"), ("C01", "control"))
    }


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_different_seed_different_bold(tmp_path, tiny_paradigm):
    kwargs = {"paradigm": tiny_paradigm, "shape": SMALL, "voxel_size": VOXEL}
    first = simulate_subject(tmp_path / "a", "P01", "patient", 3, **kwargs)
    second = simulate_subject(tmp_path / "b", "P01", "patient", 3, **kwargs)
    other = simulate_subject(tmp_path / "c", "P01", "patient", 4, **kwargs)

    files_first, files_second = all_files(first.root), all_files(second.root)
    assert len(files_first) >= 12
    assert files_first.keys() == files_second.keys()
    differing = [name for name in files_first if files_first[name] != files_second[name]]
    assert differing == []
    bold = first.runs[0].bold.relative_to(first.root).as_posix()
    assert all_files(other.root)[bold] != files_first[bold]
    assert not np.array_equal(load_data(first.runs[0].bold), load_data(other.runs[0].bold))


def test_cohort_reproduces_single_subjects_and_lists_participants(tmp_path, tiny_paradigm):
    kwargs = {"paradigm": tiny_paradigm, "shape": SMALL, "voxel_size": VOXEL, "n_runs": 2}
    cohort = simulate_cohort(tmp_path / "cohort", 1, 2, 5, progress=False, **kwargs)
    assert [(s.subject, s.group) for s in cohort] == [
        ("P01", "patient"), ("C01", "control"), ("C02", "control")]
    rows = read_tsv(tmp_path / "cohort" / "participants.tsv")
    assert rows == [{"participant_id": "sub-C01", "group": "control"},
                    {"participant_id": "sub-C02", "group": "control"},
                    {"participant_id": "sub-P01", "group": "patient"}]

    alone = simulate_subject(tmp_path / "alone", "C02", "control", 5, **kwargs)
    for run_cohort, run_alone in zip(cohort[2].runs, alone.runs, strict=True):
        assert run_cohort.bold.read_bytes() == run_alone.bold.read_bytes()
    # Runs and subjects draw different noise and motion.
    c02 = [load_data(run.bold) for run in cohort[2].runs]
    assert not np.array_equal(c02[0], c02[1])
    assert not np.array_equal(load_data(cohort[1].runs[0].bold), c02[0])


def test_session_of_two_tasks_shares_responses_not_noise(tmp_path, tiny_paradigm):
    """A localizer-like and a regulation-like task of one subject: the same planted
    responses (the subject's), different noise and motion, and each task alone reproduces
    its runs byte for byte."""
    other = tmp_path / "other.toml"
    other.write_text(TINY_PARADIGM.replace('task = "tiny"', 'task = "other"'), encoding="utf-8")
    kwargs = {"shape": SMALL, "voxel_size": VOXEL}
    session = simulate_subject(tmp_path / "both", "P01", "patient", 4,
                               paradigm=[tiny_paradigm, other], **kwargs)
    assert [(run.task, run.run) for run in session.runs] == [("tiny", 1), ("other", 1)]
    (tiny,), (second,) = session.runs_of("tiny"), session.runs_of("other")
    assert second.bold.name == "sub-P01_task-other_run-1_bold.nii.gz"
    assert (read_json(tiny.truth)["amplitudes_percent"]
            == read_json(second.truth)["amplitudes_percent"])
    assert not np.array_equal(load_data(tiny.bold), load_data(second.bold))
    alone = simulate_subject(tmp_path / "alone", "P01", "patient", 4, paradigm=other, **kwargs)
    assert alone.runs[0].bold.read_bytes() == second.bold.read_bytes()
    with pytest.raises(InputError, match="distinct tasks"):
        simulate_subject(tmp_path / "twice", "P01", "patient", 4,
                         paradigm=[tiny_paradigm, tiny_paradigm], **kwargs)


# ---------------------------------------------------------------------------- format
def test_bold_image_has_requested_geometry(patient):
    run = patient.runs[0]
    image = nib.load(run.bold)
    paradigm = Paradigm.from_file("regulation")
    assert image.shape == (*SMALL, paradigm.n_volumes) == (*SMALL, 140)
    assert image.get_data_dtype() == np.int16
    assert image.header.get_zooms() == pytest.approx((VOXEL, VOXEL, VOXEL, 2.0))
    assert image.header.get_xyzt_units() == ("mm", "sec")
    affine = image.affine
    assert np.allclose(affine[:3, :3], np.eye(3) * VOXEL)  # RAS+, diagonal
    assert np.allclose(affine, read_json(run.truth)["affine"])
    data = np.asarray(image.dataobj)
    brain = data[..., 0][load_data(run.rois) > 0]
    assert 700 < brain.mean() < 1400  # scanner-like int16 values in brain
    # The brain sits near the middle of the field of view: its centre of mass (world) is
    # within 1.5 voxels of the grid centre.
    mean_image = data.mean(axis=-1)
    com_ijk = np.array(ndimage.center_of_mass(mean_image > 0.5 * mean_image.max()))
    com = affine[:3, :3] @ com_ijk + affine[:3, 3]
    assert np.linalg.norm(com - grid_centre(SMALL, affine)) < 1.5 * VOXEL * math.sqrt(3)


def test_epi_contrast_csf_brighter_than_grey_brighter_than_white():
    phantom = build_phantom((64, 64, 36), 3.5)
    baseline = phantom.baseline[phantom.brain_mask]
    assert 950 < baseline.mean() < 1050
    # Lateral ventricle (CSF), caudate head (grey) and centrum semiovale (white), in MNI mm.
    points = {"csf": (-4, 2, 16), "grey": (-13, 12, 10), "white": (-26, -10, 30)}
    inverse = np.linalg.inv(phantom.affine)
    value = {name: phantom.baseline[tuple(np.round(inverse @ (*p, 1))[:3].astype(int))]
             for name, p in points.items()}
    assert value["csf"] > value["grey"] > value["white"]
    assert phantom.baseline[0, 0, :].max() == 0  # nothing outside the head


def test_events_match_paradigm_and_bids_files(patient):
    run = patient.runs[0]
    paradigm = Paradigm.from_file("regulation")
    events = read_tsv(run.events)
    assert list(events[0]) == ["onset", "duration", "trial_type"]
    assert [(float(e["onset"]), float(e["duration"]), e["trial_type"]) for e in events] == [
        (e["onset"], e["duration"], e["trial_type"]) for e in paradigm.events()]

    root = patient.root
    description = read_json(root / "dataset_description.json")
    assert description["BIDSVersion"] == "1.9.0"
    assert description["DatasetType"] == "raw"
    assert description["Name"]
    assert description["GeneratedBy"][0]["Version"] == __version__
    derivative = read_json(root / "derivatives" / "simulator" / "dataset_description.json")
    assert derivative["DatasetType"] == "derivative"
    assert derivative["GeneratedBy"][0]["Name"]
    assert read_tsv(root / "participants.tsv") == [{"participant_id": "sub-P01",
                                                    "group": "patient"}]
    sidecar = read_json(run.sidecar)
    assert sidecar["RepetitionTime"] == 2.0 and sidecar["TaskName"] == "regulation"
    assert sidecar["SliceEncodingDirection"] == "k"
    assert all(0.0 <= t < 2.0 for t in sidecar["SliceTiming"])
    stem = "sub-P01_task-regulation_run-1"
    assert run.bold == root / "sub-P01" / "func" / f"{stem}_bold.nii.gz"
    assert run.physio == root / "sub-P01" / "func" / f"{stem}_physio.tsv.gz"
    assert read_json(run.physio_sidecar)["SamplingFrequency"] == 50.0
    truth_dir = root / "derivatives" / "simulator" / "sub-P01" / "func"
    assert run.rois == truth_dir / f"{stem}_space-EPI_desc-rois_dseg.nii.gz"
    assert run.true_motion == truth_dir / f"{stem}_desc-truemotion_timeseries.tsv"
    assert run.truth == truth_dir / f"{stem}_desc-truth.json"


def test_roi_labels_and_truth(patient):
    run = patient.runs[0]
    labels_image = nib.load(run.rois)
    labels = np.asarray(labels_image.dataobj)
    assert labels_image.get_data_dtype() == np.int16
    assert labels.shape == SMALL
    assert np.allclose(labels_image.affine, nib.load(run.bold).affine)
    assert read_tsv(run.rois_tsv) == [{"index": str(i), "name": name}
                                      for i, name in enumerate(ROI_NAMES, start=1)]
    assert ROI_NAMES == ["nacc", "ventral_caudate", "dorsal_caudate", "putamen",
                         "vmpfc_ofc", "acc", "ifg_dlpfc"]
    assert set(np.unique(labels)) == set(range(len(ROI_NAMES) + 1))
    affine = labels_image.affine
    n_voxels = {}
    for index, name in enumerate(ROI_NAMES, start=1):
        n_voxels[name] = int(np.count_nonzero(labels == index))
        assert n_voxels[name] >= 20, name
        # Both hemispheres: voxels on either side of x = 0 (world).
        x_world = affine[0, 0] * np.argwhere(labels == index)[:, 0] + affine[0, 3]
        assert (x_world < 0).sum() > 5 and (x_world > 0).sum() > 5, name

    truth = read_json(run.truth)
    assert truth["group"] == "patient" and truth["seed"] == 7
    assert truth["software"]["version"] == __version__
    assert truth["rois"]["labels"] == {str(i): n for i, n in enumerate(ROI_NAMES, start=1)}
    assert truth["rois"]["n_voxels"] == n_voxels
    for name in ROI_NAMES:
        planted = truth["amplitudes_percent"][name]
        means = truth["group_amplitudes_percent"][name]
        assert planted.keys() == means.keys() == set(GROUP_AMPLITUDES["patient"])
        for trial_type, amplitude in planted.items():
            # The subject's drug-bias shift moves drug up and food down in cue-reactive ROIs.
            side = {"drug": 0.5, "food": -0.5}.get(trial_type.rpartition("_")[2], 0.0)
            shift = side * truth["subject_drug_bias_percent"] if name in CUE_REACTIVE_ROIS else 0
            assert abs(amplitude - means[trial_type] - shift) < 4 * SUBJECT_SD_PERCENT
    assert truth["group_amplitudes_percent"]["nacc"] == dict(GROUP_AMPLITUDES["patient"])
    assert truth["noise"]["tsnr"] == 60.0 and truth["noise"]["ar_rho"] == 0.3
    assert truth["motion"]["spike_volumes"] == list(run.spike_volumes)


def test_atlas_regions_are_found_by_name():
    """The label file's names and indices, read independently of the simulator."""
    atlas_dir = Path(__file__).resolve().parents[1] / "rtserver" / "data" / "schaefer200_tian_s2"
    (label_file,) = atlas_dir.glob("*_label.txt")
    lines = label_file.read_text(encoding="utf-8").split("\n")
    indices = {lines[k].strip(): int(lines[k + 1].split()[0])
               for k in range(0, len(lines) - 1, 2) if lines[k].strip()}
    assert dict(load_atlas().index) == indices
    assert indices["NAc-shell-rh"] == 9 and indices["aCAU-lh"] == 31  # Tian S2 order
    assert indices["7Networks_LH_Limbic_OFC_1"] > 32  # Schaefer parcels follow Tian's 32


def test_group_amplitudes_follow_the_finding():
    patient, control = GROUP_AMPLITUDES["patient"], GROUP_AMPLITUDES["control"]
    assert patient["look_drug"] > patient["look_food"]
    assert control["look_drug"] < control["look_food"]
    assert patient["reappraise_drug"] > patient["savor_food"]
    assert control["reappraise_drug"] < control["savor_food"]
    assert set(CUE_REACTIVE_ROIS) == {"nacc", "ventral_caudate", "vmpfc_ofc", "ifg_dlpfc"}
    for table in (patient, control):
        assert table["reappraise_drug"] < table["look_drug"]
        assert table["savor_food"] > table["look_food"]
        assert all(0.5 <= value <= 2.0 for value in table.values())


# ---------------------------------------------------------------------------- motion
def test_true_motion_file_follows_fmriprep_columns_and_limits(patient):
    run = patient.runs[0]
    rows = read_tsv(run.true_motion)
    assert list(rows[0]) == MOTION_COLUMNS
    assert len(rows) == 140
    params = np.array([[float(row[c]) for c in MOTION_COLUMNS[:6]] for row in rows])
    assert np.all(params[0] == 0.0)
    assert rows[0]["framewise_displacement"] == "n/a"
    fd = [framewise_displacement(params[k - 1], params[k]) for k in range(1, len(params))]
    written = [float(row["framewise_displacement"]) for row in rows[1:]]
    assert written == pytest.approx(fd, abs=1e-5)  # parameters are written to 1e-8

    spikes = list(run.spike_volumes)
    assert 1 <= len(spikes) <= 2
    still = np.setdiff1d(np.arange(140), spikes)
    assert np.abs(params[still, :3]).max() <= MOTION_DRIFT_MAX[0] + 1e-9
    assert np.degrees(np.abs(params[still, 3:]).max()) <= MOTION_DRIFT_MAX[1] + 1e-6
    assert np.abs(params[still, :3]).max() > 0.05  # it does drift
    for volume in spikes:
        jump = np.linalg.norm(params[volume, :3] - params[volume - 1, :3])
        assert 0.9 < jump < 2.1  # a 1-2 mm spike on top of a slow drift


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
    apply_motion of the volume's noise-free image on the padded grid."""
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


def test_hrf_regressors_match_an_independent_convolution():
    paradigm = Paradigm.from_file("regulation")
    regressors = condition_regressors(paradigm)
    events = [{k: str(v) for k, v in e.items()} for e in paradigm.events()]
    trial_types, design = glm_design(events, paradigm.n_volumes, paradigm.tr)
    assert sorted(regressors) == trial_types
    for column, trial_type in enumerate(trial_types):
        np.testing.assert_allclose(regressors[trial_type], design[:, column], atol=0.01)
    look_drug = regressors["look_drug"]  # one 20 s block from 10 s
    assert look_drug[:5].max() < 1e-3 and look_drug.min() < -0.05  # delay and undershoot


# ---------------------------------------------------------------------------- signal
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


def test_subjects_vary_around_their_group_with_a_drug_bias_of_their_own():
    """Over 400 drawn subjects, the drug-bias index (drug minus food, mean of the
    cue-reactive ROIs) has the group means' difference and the planted spread: sd
    sqrt(bias_sd^2 + 2 sd^2 / 4) (each ROI's own draws average over the 4 ROIs)."""
    rng = np.random.default_rng(5)
    index = {}
    for group in ("patient", "control"):
        values = []
        for _ in range(200):
            amplitudes = Activation.draw(group, rng).amplitudes
            values.append(np.mean([amplitudes[r]["look_drug"] - amplitudes[r]["look_food"]
                                   for r in CUE_REACTIVE_ROIS]))
        index[group] = np.array(values)
        means = GROUP_AMPLITUDES[group]
        assert index[group].mean() == pytest.approx(means["look_drug"] - means["look_food"],
                                                    abs=0.15)
        spread = math.sqrt(SUBJECT_BIAS_SD_PERCENT**2 + 2 * SUBJECT_SD_PERCENT**2 / 4)
        assert index[group].std() == pytest.approx(spread, rel=0.15)
    # Some subjects respond against their group, as in real cohorts.
    assert 0.05 < np.mean(index["patient"] < 0) < 0.3
    assert 0.05 < np.mean(index["control"] > 0) < 0.3


def test_voxel_patterns_carry_information_the_roi_mean_does_not():
    """Inside an ROI the planted maps vary voxel to voxel, with the ROI mean equal to the
    amplitude, and two conditions' patterns differ beyond a scale factor."""
    phantom = build_phantom(SMALL, VOXEL)
    activation = Activation.draw("control", np.random.default_rng(3))
    maps = activation.maps(phantom)
    for index, name in phantom.roi_names.items():
        inside = phantom.labels == index
        drug, food = maps["look_drug"][inside], maps["look_food"][inside]
        assert drug.mean() == pytest.approx(activation.amplitudes[name]["look_drug"])
        relative_sd = drug.std() / drug.mean()
        assert relative_sd == pytest.approx(PATTERN_SD, rel=1e-6)
        # Drug and food pictures share only the field common to all conditions (weights
        # 1, 1, 0.5: expected r = 1 / 2.25); looking at and reappraising drug pictures also
        # share the drug pictures' field (expected r = 2 / 2.25), which is what lets a
        # decoder trained on passive viewing work in regulation blocks.
        r = np.corrcoef(drug, food)[0, 1]
        assert 0.1 < r < 0.8, (name, r)
        same_cue = np.corrcoef(drug, maps["reappraise_drug"][inside])[0, 1]
        assert same_cue > 0.6 and same_cue > r + 0.2, (name, same_cue, r)
        assert np.all(maps["look_drug"][~inside & (phantom.labels == 0)] == 0)


def recorded_phases(run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample times and the cardiac and respiratory phases, recovered from the BIDS physio
    recording as an analysis would: band-pass around each cycle, then the Hilbert phase."""
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
    """tSNR at grey-matter intensity matches the setting within 8 %; after removing drift
    and the RETROICOR regressors built from the physio recording, the lag-1 autocorrelation
    matches the AR(1) setting within 0.02 (its expectation under the planted covariance,
    which accounts for the regression's bias); the cardiac and respiratory regressors
    explain more variance than chance, and more in CSF than in grey matter."""
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


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group": "patients"}, r"group should be one of patient, control\. Got 'patients'"),
        ({"shape": (64, 0, 36)}, r"shape should be 3 positive integers .* Got \(64, 0, 36\)"),
        ({"shape": (64, 64)}, r"shape should be 3 positive integers"),
        ({"subject": "P_01"}, r"subject should be an alphanumeric BIDS label .* Got 'P_01'"),
        ({"seed": -1}, r"seed should be an integer >= 0\. Got -1"),
        ({"voxel_size": 0}, r"voxel_size should be a positive number\. Got 0"),
        ({"n_runs": 0}, r"n_runs should be an integer >= 1\. Got 0"),
        ({"motion_scale": -1.0}, r"motion_scale should be a number >= 0\. Got -1\.0"),
        ({"shape": (8, 8, 8)}, r"holds \d+ voxels of ROI 'nacc'; expected at least"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, kwargs, message):
    arguments = {"subject": "P01", "group": "patient", "seed": 1, "shape": SMALL} | kwargs
    with pytest.raises(InputError, match=message):
        simulate_subject(tmp_path, **arguments)
    assert not (tmp_path / "sub-P01").exists()


def test_bad_cohort_raises_input_error(tmp_path):
    with pytest.raises(InputError, match=r"at least one subject\. Got 0 patients and 0"):
        simulate_cohort(tmp_path, 0, 0, seed=1)
    with pytest.raises(InputError, match=r"n_patients should be an integer >= 0\. Got -2"):
        simulate_cohort(tmp_path, -2, 1, seed=1)


# ---------------------------------------------------------------------------- nilearn
# nilearn 0.14's FirstLevelModel warns that it was asked to generate a mask although it was
# given one, then uses the given mask (the one wanted here).
@pytest.mark.filterwarnings("ignore:.*Generation of a mask has been requested:RuntimeWarning")
def test_nilearn_first_level_model_recovers_planted_roi_effects(still_runs):
    """An independent standard analysis (nilearn's FirstLevelModel, SPM HRF, cosine drift)
    finds every ROI's planted amplitudes within 0.3 % signal change, and the subject's
    drug-vs-food and reappraise-vs-savor contrasts with their planted sign."""
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


# ---------------------------------------------------------------------------- command line
def test_command_line_writes_a_localizer_and_a_regulation_run(tmp_path, capsys):
    from rtserver.cli import main

    out = tmp_path / "bids"
    assert main(["simulate", "--out", str(out), "--subject", "07", "--group", "control",
                 "--seed", "3", "--shape", "40,48,30"]) == 0
    func = out / "sub-07" / "func"
    for task, paradigm in (("localizer", "localizer"), ("regulation", "regulation")):
        image = nib.load(func / f"sub-07_task-{task}_run-1_bold.nii.gz")
        assert image.shape == (40, 48, 30, Paradigm.from_file(paradigm).n_volumes)
    assert read_tsv(out / "participants.tsv") == [{"participant_id": "sub-07",
                                                   "group": "control"}]
    capsys.readouterr()
    assert main(["simulate", "--out", str(out), "--paradigm", "localizer,nosuch"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("rtserver: error: No paradigm file 'nosuch'")
    assert "\n" not in error and "Traceback" not in error
