"""Tests of the simulator's datasets: reproducibility, files and names, truth, arguments.

Each check compares the written data with the truth it was built from, through code written
here independently of :mod:`rtserver.sim`. The anatomy, the planted responses, the motion
and what an analysis recovers are tested in ``test_sim_phantom.py``,
``test_sim_activation.py``, ``test_sim_motion.py`` and ``test_sim_recovery.py``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from rtserver import __version__
from rtserver.errors import InputError
from rtserver.paradigm import Paradigm
from rtserver.rigid import framewise_displacement, grid_centre
from rtserver.sim import simulate_cohort, simulate_subject
from rtserver.sim.activation import CUE_REACTIVE_ROIS, GROUP_AMPLITUDES, SUBJECT_SD_PERCENT
from rtserver.sim.motion import MOTION_DRIFT_MAX
from rtserver.sim.subject import SimulatedSubject

from .conftest import TINY_PARADIGM
from .sim_helpers import MOTION_COLUMNS, ROI_NAMES, SMALL, VOXEL, load_data, read_json, read_tsv


# ---------------------------------------------------------------------------- helpers
def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> SimulatedSubject:
    """A patient's regulation run with motion."""
    return simulate_subject(tmp_path_factory.mktemp("patient"), "P01", "patient", 7,
                            shape=SMALL, voxel_size=VOXEL)


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
    its runs byte for byte.
    """
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
        ({"paradigm": []}, r"paradigm should name at least one paradigm\. Got \[\]"),
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
# ---------------------------------------------------------------------------- layers
def test_simulator_imports_only_core_and_shared_definitions():
    """Importing rtserver.sim brings in no service, scanner or train module.

    Every module of the package is imported in a fresh interpreter (the package's rule).
    """
    code = ("import importlib, pkgutil, sys\n"
            "import rtserver.sim as sim\n"
            "names = [m.name for m in pkgutil.iter_modules(sim.__path__)]\n"
            "for name in names:\n"
            "    importlib.import_module(f'rtserver.sim.{name}')\n"
            "print(len(names), sorted(m for m in sys.modules if m.startswith(\n"
            "    ('rtserver.service', 'rtserver.scanner', 'rtserver.train'))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    n_modules, forbidden = result.stdout.split(" ", 1)
    assert int(n_modules) >= 10
    assert forbidden.strip() == "[]"


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
