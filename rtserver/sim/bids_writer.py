"""The simulated dataset's files: BIDS raw data and the simulator's derivatives.

Raw BIDS (per run): the 4D int16 BOLD image and its sidecar, the events table, and the
cardiac and respiratory recording (``_physio.tsv.gz``) with its sidecar; per dataset:
``dataset_description.json``, ``README``, ``participants.tsv`` and ``.json``. Derivatives
under ``derivatives/simulator/``: the ROI label image in EPI space and its table, the
planted motion (fMRIPrep columns) and the truth JSON (:mod:`rtserver.sim.truth`). File names
come from :class:`rtserver.bids.RunEntities`.

Every file is a deterministic function of its content: gzip streams carry no timestamp, so
the same data give the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from rtserver import __version__, bids
from rtserver.paradigm import Paradigm
from rtserver.rigid import PARAMETER_NAMES, framewise_displacement
from rtserver.sim.phantom import Phantom
from rtserver.sim.physiology import PHYSIO_SAMPLING_HZ, Physiology

#: The software named in the dataset's ``GeneratedBy``, the truth and the NIfTI headers.
SIMULATOR_NAME = "rtserver simulate"
#: The derivatives pipeline folder holding the truth.
PIPELINE = "simulator"
#: gzip compression level of the NIfTI images (fast; the bytes depend only on the data).
GZIP_LEVEL = 1

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


def run_paths(root: Path, subject: str, task: str, run: int) -> dict[str, Path]:
    """Name a run's files, creating their folders.

    Parameters
    ----------
    root : Path
        The BIDS dataset's root.
    subject, task : str
        BIDS labels.
    run : int
        Run number.

    Returns
    -------
    dict
        The keys of :class:`~rtserver.sim.subject.SimulatedRun`'s paths (``bold``,
        ``sidecar``, ``events``, ``physio``, ``physio_sidecar``, ``rois``, ``rois_tsv``,
        ``true_motion``, ``truth``) -> absolute path.
    """
    entities = bids.RunEntities(subject=subject, task=task, run=run)
    derivatives = root / "derivatives" / PIPELINE
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


def write_dataset_files(root: Path, subject: str, group: str) -> None:
    """Write the dataset's descriptions and README, and list the subject as a participant.

    Other subjects already in ``participants.tsv`` are kept; an existing README is kept.

    Parameters
    ----------
    root : Path
        The BIDS dataset's root.
    subject : str
        BIDS label.
    group : str
        The subject's group.
    """
    generated_by = [{
        "Name": SIMULATOR_NAME,
        "Version": __version__,
        "Description": "Synthetic EPI runs with planted activation, noise and head motion.",
    }]
    write_json(root / "dataset_description.json", {
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
    write_json(root / "participants.json", {
        "participant_id": {"Description": "Simulated subject label."},
        "group": {
            "Description": "Simulated group; sets the planted drug and food responses.",
            "Levels": {"patient": "in treatment for heroin use disorder",
                       "control": "healthy control"},
        },
    })
    derivatives = root / "derivatives" / PIPELINE
    derivatives.mkdir(parents=True, exist_ok=True)
    write_json(derivatives / "dataset_description.json", {
        "Name": "rtserver simulator ground truth",
        "BIDSVersion": bids.BIDS_VERSION,
        "DatasetType": "derivative",
        "Authors": [f"{SIMULATOR_NAME} (synthetic data, no participants)"],
        "GeneratedBy": generated_by,
    })


def _update_participants(root: Path, subject: str, group: str) -> None:
    """Add or replace the subject's row of ``participants.tsv``, rows sorted."""
    path = root / "participants.tsv"
    rows: dict[str, str] = {}
    if path.exists():
        with path.open(encoding="utf-8", newline="") as stream:
            for row in csv.DictReader(stream, delimiter="\t"):
                if row.get("participant_id"):
                    rows[row["participant_id"]] = row.get("group", "n/a")
    rows[bids.participant_id(subject)] = group
    write_tsv(path, ["participant_id", "group"], [[p, rows[p]] for p in sorted(rows)])


def write_run_files(paths: dict[str, Path], bold: np.ndarray, paradigm: Paradigm,
                    phantom: Phantom, slice_timing: np.ndarray, physiology: Physiology,
                    params: np.ndarray) -> None:
    """Write a run's files, all but the truth JSON.

    Parameters
    ----------
    paths : dict
        From :func:`run_paths`.
    bold : numpy.ndarray
        The 4D int16 image.
    paradigm : Paradigm
        The run's paradigm (TR, task and events).
    phantom : Phantom
        The anatomy (its affine, ROI labels and names).
    slice_timing : numpy.ndarray
        Acquisition time of each slice within a volume (s).
    physiology : Physiology
        The run's heartbeat and breathing.
    params : numpy.ndarray
        ``(n_volumes, 6)`` planted motion.
    """
    write_nifti(paths["bold"], bold, phantom.affine, tr=paradigm.tr)
    write_json(paths["sidecar"], {
        "RepetitionTime": paradigm.tr, "TaskName": paradigm.task,
        "SliceTiming": [round(float(t), 6) for t in slice_timing],
        "SliceEncodingDirection": "k"})
    write_physio(paths["physio"], paths["physio_sidecar"], physiology)
    write_events(paths["events"], paradigm)
    write_nifti(paths["rois"], phantom.labels, phantom.affine, intent="label")
    write_tsv(paths["rois_tsv"], ["index", "name"],
              [[str(i), name] for i, name in phantom.roi_names.items()])
    write_motion(paths["true_motion"], params)


def write_events(path: Path, paradigm: Paradigm) -> None:
    """Write a paradigm's blocks as a BIDS ``_events.tsv``."""
    rows = [[f"{e['onset']:.3f}", f"{e['duration']:.3f}", e["trial_type"]]
            for e in paradigm.events()]
    write_tsv(path, ["onset", "duration", "trial_type"], rows)


def write_motion(path: Path, params: np.ndarray) -> None:
    """Write motion parameters in fMRIPrep's confound columns, with framewise displacement."""
    rows = []
    for k, row in enumerate(params):
        fd = "n/a" if k == 0 else f"{framewise_displacement(params[k - 1], row):.8f}"
        rows.append([f"{value:.8f}" for value in row] + [fd])
    write_tsv(path, [*PARAMETER_NAMES, "framewise_displacement"], rows)


def write_physio(path: Path, sidecar: Path, physiology: Physiology) -> None:
    """Write a BIDS physiological recording: headerless gzipped TSV plus its JSON sidecar."""
    lines = "".join(f"{c:.5f}\t{r:.5f}\n" for c, r in physiology.recording())
    path.write_bytes(gzip.compress(lines.encode("ascii"), compresslevel=6, mtime=0))
    write_json(sidecar, {
        "SamplingFrequency": PHYSIO_SAMPLING_HZ,
        "StartTime": 0.0,
        "Columns": ["cardiac", "respiratory"],
        "cardiac": {"Description": "Simulated pulse-oximeter wave (arbitrary units).",
                    "Units": "a.u."},
        "respiratory": {"Description": "Simulated respiratory-belt wave (arbitrary units).",
                        "Units": "a.u."},
    })


def write_tsv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    """Write a tab-separated table with a header line."""
    lines = ["\t".join(columns), *("\t".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_json(path: Path, content: dict) -> None:
    """Write JSON, indented by 2, with a final newline."""
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *,
                tr: float | None = None, intent: str | None = None) -> None:
    """Write int16 NIfTI-1, gzipped without a timestamp so equal data give equal bytes.

    Parameters
    ----------
    path : Path
        The ``.nii.gz`` file.
    data : numpy.ndarray
        3D or 4D image, stored as int16.
    affine : numpy.ndarray
        Voxel-to-world matrix, written as both qform and sform (scanner code).
    tr : float, optional
        Repetition time (s), the fourth zoom of a 4D image.
    intent : str, optional
        NIfTI intent, e.g. ``"label"``.
    """
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
