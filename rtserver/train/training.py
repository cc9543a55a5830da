"""``rtserver train``: a subject's decoder from their localizer run(s) and BIDS events.

See :mod:`rtserver.core.decoder` for the method (features, labels, nested blocked
cross-validation, calibration, the drug-bias index). This module finds the runs, runs them
through the online pipeline, cross-validates and fits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rtserver import bids as bids_names
from rtserver.config import ATLAS, Config
from rtserver.core.decoder import (
    C_GRID,
    DEFAULT_LAG,
    DEFAULT_SETTLE,
    FEATURES,
    Decoder,
    volume_labels,
)
from rtserver.core.pipeline import Pipeline
from rtserver.core.stages.roi import RoiSet
from rtserver.errors import InputError
from rtserver.resources import load_atlas, load_template
from rtserver.scanner.sources import open_source
from rtserver.service.atlas_registration import make_registrar
from rtserver.service.model_file import software_versions
from rtserver.service.session import load_reference, read_rois
from rtserver.service.t1w_registration import read_t1w
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: Fewer training volumes of either class than this and training is refused.
MIN_VOLUMES_PER_CLASS = 8


@dataclass
class RunFeatures:
    """One training run after the online pipeline.

    Attributes
    ----------
    bold, events : Path
        The run's files.
    features : numpy.ndarray
        ``(n_volumes, n_features)`` percent signal change (ROI voxels, then ROI means).
    censored : numpy.ndarray
        Per volume, whether motion censored it.
    labels, pairs : numpy.ndarray
        :func:`~rtserver.core.decoder.volume_labels` of the run.
    """

    bold: Path
    events: Path
    features: np.ndarray
    censored: np.ndarray
    labels: np.ndarray
    pairs: np.ndarray


@dataclass
class CrossValidation:
    """Nested, blocked cross-validated scores.

    Attributes
    ----------
    auc : float
        Mean ROC AUC of the outer folds (each test fold holds a drug and a food block).
    pooled_auc : float
        ROC AUC of all out-of-fold probabilities pooled: lower than ``auc`` when the folds'
        models rank well but place their boundary differently.
    accuracy, brier : float
        Accuracy (P(drug) > 0.5) and Brier score of the pooled out-of-fold calibrated
        probabilities.
    fold_auc : list of float
        AUC of each outer fold.
    chosen_c : list of float
        C chosen inside each outer fold.
    p_drug : numpy.ndarray
        Out-of-fold calibrated probabilities, in sample order.
    """

    auc: float
    pooled_auc: float
    accuracy: float
    brier: float
    fold_auc: list[float] = field(default_factory=list)
    chosen_c: list[float] = field(default_factory=list)
    p_drug: np.ndarray | None = None


def find_runs(bids: str | Path, subject: str, task: str = "localizer",
              runs: list[int] | None = None) -> list[tuple[Path, Path]]:
    """The subject's ``(bold, events)`` files of ``task``, in run order.

    Raises
    ------
    InputError
        If the subject has no such run, a requested run is missing, or a run has no events.
    """
    subject = bids_names.label(subject)
    expected = bids_names.RunEntities(subject=subject, task=task, run=1)
    func = expected.folder(bids)
    found = bids_names.find_runs(bids, subject, task)
    if runs:
        found = [(n, p) for n, p in found if n in runs]
        missing = sorted(set(runs) - {n for n, _ in found})
        if missing:
            raise InputError(f"{func}: no {task} run {missing} of sub-{subject}.")
    if not found:
        raise InputError(f"No {task} run of sub-{subject} in {bids}: expected "
                         f"{expected.path(bids, 'bold.nii.gz').relative_to(bids)} and "
                         "further run numbers.")
    pairs = []
    for _, bold in sorted(found):
        events = bids_names.events_path(bold)
        if not events.exists():
            raise InputError(f"{bold.name} has no events file: expected {events}.")
        pairs.append((bold, events))
    return pairs


def extract_features(bold: Path, events_path: Path, config: Config, rois: RoiSet | None,
                     reference: Volume | None, lag: float, settle: float,
                     progress: tqdm | None = None) -> tuple[RunFeatures, Pipeline]:
    """Run one training run through the online pipeline; return its features and labels."""
    events = bids_names.read_events(events_path)
    pipeline = Pipeline(config, rois=rois, reference=reference, events=events,
                        keep_features=True)
    source = open_source(bold)
    features, censored = [], []
    for volume in source:
        event = pipeline.step(volume)
        features.append(np.array(pipeline.features_, dtype=np.float64))
        censored.append(event.censored)
        if progress is not None:
            progress.update()
    labels, pairs = volume_labels(events, source.tr, len(features), lag, settle)
    return RunFeatures(bold, events_path, np.vstack(features), np.array(censored), labels,
                       pairs), pipeline


def make_classifier(c: float = 1.0):
    """``StandardScaler`` + L2 ``LogisticRegression(C=c)`` as one scikit-learn pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, dict]:
    """The C of :data:`~rtserver.core.decoder.C_GRID` with the best leave-one-group-out AUC.

    The AUC is that of the *pooled* out-of-fold decision values, not the mean of per-fold
    AUCs: a decoder whose folds each rank well but disagree on where the boundary lies
    (heavy regularisation shrinks everything towards the intercept) cannot be calibrated
    or thresholded online, and the pooled AUC says so. Ties go to the smaller C (the
    stronger penalty).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

    scores = {}
    for c in C_GRID:
        decision = cross_val_predict(make_classifier(c), x, y, groups=groups,
                                     cv=LeaveOneGroupOut(), method="decision_function")
        scores[c] = float(roc_auc_score(y, decision))
    best = max(scores.values())
    return next(c for c in C_GRID if scores[c] >= best - 1e-12), scores


def fit_calibrated(x: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """Choose C (:func:`choose_c`), then fit with Platt calibration on the same folds.

    Returns
    -------
    classifier : CalibratedClassifierCV
        Fitted on all of ``x`` (``ensemble=False``: one classifier, one sigmoid fitted on
        the leave-one-group-out decision values).
    c : float
        The chosen C.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import LeaveOneGroupOut

    if len(np.unique(groups)) < 2:
        raise InputError("Cross-validation needs at least two drug/food block pairs. "
                         f"Got {len(np.unique(groups))}.")
    c, _ = choose_c(x, y, groups)
    splits = list(LeaveOneGroupOut().split(x, y, groups))
    classifier = CalibratedClassifierCV(make_classifier(c), method="sigmoid", cv=splits,
                                        ensemble=False)
    classifier.fit(x, y)
    return float(c), classifier


def nested_cross_validation(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                            progress: bool = False) -> CrossValidation:
    """Outer leave-one-group-out; inside each training part, :func:`fit_calibrated`.

    Raises
    ------
    InputError
        With fewer than three groups (the inner loop needs two).
    """
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut

    n_groups = len(np.unique(groups))
    if n_groups < 3:
        raise InputError("Nested cross-validation needs at least three drug/food block pairs "
                         f"(localizer blocks of each cue). Got {n_groups}.")
    p_drug = np.zeros(len(y))
    fold_auc, chosen = [], []
    splits = list(LeaveOneGroupOut().split(x, y, groups))
    for train, test in tqdm(splits, desc="cross-validate", unit="fold", disable=not progress,
                            leave=False):
        c, classifier = fit_calibrated(x[train], y[train], groups[train])
        p_drug[test] = classifier.predict_proba(x[test])[:, 1]
        chosen.append(c)
        if len(np.unique(y[test])) == 2:
            fold_auc.append(float(roc_auc_score(y[test], p_drug[test])))
    return CrossValidation(
        auc=float(np.mean(fold_auc)), pooled_auc=float(roc_auc_score(y, p_drug)),
        accuracy=float(np.mean((p_drug > 0.5) == (y == 1))),
        brier=float(brier_score_loss(y, p_drug)),
        fold_auc=fold_auc, chosen_c=chosen, p_drug=p_drug)


def training_set(runs: list[RunFeatures]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack the labelled, uncensored volumes of all runs: ``x``, ``y`` and block-pair groups.

    Groups are ``run_number * 1000 + pair``, so pairs of different runs stay apart.
    """
    xs, ys, gs = [], [], []
    for number, run in enumerate(runs):
        kept = (run.labels >= 0) & ~run.censored
        xs.append(run.features[kept])
        ys.append(run.labels[kept])
        gs.append(number * 1000 + run.pairs[kept])
    return np.vstack(xs), np.concatenate(ys), np.concatenate(gs)


def train_subject(bids: str | Path, subject: str, *, config: Config | None = None,
                  task: str = "localizer", runs: list[int] | None = None,
                  lag: float = DEFAULT_LAG, settle: float = DEFAULT_SETTLE,
                  progress: bool = True) -> tuple[Decoder, CrossValidation]:
    """Train a subject's decoder from their localizer run(s).

    Parameters
    ----------
    bids : str or Path
        BIDS dataset root.
    subject : str
        Subject label (``"P01"`` or ``"sub-P01"``).
    config : Config or None
        Motion, ROI and signal settings (``[roi] mask``: ROI labels in the EPI space of the
        first run's first volume, or unset / ``"atlas"`` to register the MNI atlases to it;
        ``[roi] t1w``: the session's T1w to register them through).
    task : str
        BIDS task of the training runs.
    runs : list of int or None
        Run numbers to use (default all).
    lag, settle : float
        Haemodynamic lag and the seconds left out at each lagged block's start.
    progress : bool
        Show progress bars.

    Returns
    -------
    decoder : Decoder
        Fitted on all labelled volumes, with its model card.
    scores : CrossValidation
        Nested, blocked cross-validated scores.
    """
    started = time.perf_counter()
    config = config or Config()
    files = find_runs(bids, subject, task, runs)
    if config.roi.mask in (None, ATLAS):
        config = config.with_overrides(roi={"mask": ATLAS})
    reference = (load_reference(config.motion.reference, config.motion.reference_index)
                 if config.motion.reference else next(iter(open_source(files[0][0]))))
    registration = None
    if config.roi.mask == ATLAS:  # registered once, before the runs go through
        t1w = read_t1w(config.roi.t1w) if config.roi.t1w else None
        rois, registration = make_registrar(load_template(), load_atlas(),
                                            min_dice=config.roi.min_dice, t1w=t1w)(reference)
    else:
        rois = read_rois(config.roi.mask)
    n_total = sum(open_source(bold).n_volumes for bold, _ in files)
    run_features: list[RunFeatures] = []
    with tqdm(total=n_total, desc="features", unit="vol", disable=not progress,
              leave=False) as bar:
        for bold, events in files:
            run, pipeline = extract_features(bold, events, config, rois, reference, lag,
                                             settle, bar)
            run_features.append(run)
    roi_names = [rois.names[k] for k in sorted(rois.names)]
    x, y, groups = training_set(run_features)
    for cue, value in (("drug", 1), ("food", 0)):
        if np.count_nonzero(y == value) < MIN_VOLUMES_PER_CLASS:
            raise InputError(f"The {task} runs give {np.count_nonzero(y == value)} usable "
                             f"{cue}-cue volumes; at least {MIN_VOLUMES_PER_CLASS} are needed.")
    scores = nested_cross_validation(x, y, groups, progress=progress)
    c, classifier = fit_calibrated(x, y, groups)
    n_rois = len(roi_names)
    bias_drug = x[y == 1, -n_rois:].mean(axis=0)
    bias_food = x[y == 0, -n_rois:].mean(axis=0)
    settings = {"lag": lag, "settle": settle, "signal": dict(vars(config.signal)),
                "features": FEATURES}
    card = {
        "model": "drug-versus-food decoder of cortico-striatal ROI patterns",
        "format": "skops; load with rtserver.service.model_file.load_decoder (explicit trusted types)",
        "training_data": {
            "bids": Path(bids).resolve().name,
            "subject": bids_names.label(subject),
            "task": task,
            "runs": [{"bold": bold.name, "events": events.name} for bold, events in files],
            "n_volumes": int(n_total),
            "n_training_volumes": {"drug": int(np.sum(y == 1)), "food": int(np.sum(y == 0))},
            "n_censored_volumes": int(sum(int(r.censored.sum()) for r in run_features)),
            "reference": f"{files[0][0].name} volume 0" if not config.motion.reference
            else f"{config.motion.reference} volume {config.motion.reference_index}",
        },
        "rois": {
            "names": roi_names,
            "n_voxels": {name: int(np.count_nonzero(rois.labels == k))
                         for k, name in sorted(rois.names.items())},
            "source": "MNI atlases registered to the reference (ANTs, "
                      + ("through the session's T1w)" if config.roi.t1w else "EPI alone)")
            if registration is not None else str(config.roi.mask),
            "registration": None if registration is None else registration.to_dict(timing=False),
        },
        "features": settings["features"],
        "signal_model": settings["signal"],
        "labels": {"drug": 1, "food": 0, "neutral_and_fixation": "not used (two-class)",
                   "lag_s": lag, "settle_s": settle,
                   "rule": "volume k gets the cue of the block running at k*TR - lag; "
                           "the first settle s of each lagged block are left out"},
        "classifier": {
            "estimator": "StandardScaler + LogisticRegression (L2), Platt-calibrated "
                         "(CalibratedClassifierCV sigmoid, ensemble=False)",
            "c_grid": list(C_GRID), "c": c,
            "cross_validation": "nested leave-one-block-pair-out (k-th drug block + k-th "
                                "food block of a run = one group)",
        },
        "cv_scores": {"auc": round(scores.auc, 4), "pooled_auc": round(scores.pooled_auc, 4),
                      "accuracy": round(scores.accuracy, 4),
                      "brier": round(scores.brier, 4),
                      "fold_auc": [round(v, 4) for v in scores.fold_auc],
                      "chosen_c": scores.chosen_c},
        "drug_bias": {"index_percent": round(float(np.mean(bias_drug - bias_food)), 4),
                      "drug_percent": dict(zip(roi_names, np.round(bias_drug, 4).tolist(),
                                               strict=True)),
                      "food_percent": dict(zip(roi_names, np.round(bias_food, 4).tolist(),
                                               strict=True))},
        "software": software_versions(),
    }
    log.info("trained in %.1f s", time.perf_counter() - started)
    decoder = Decoder(classifier, rois, reference, bias_drug, bias_food, settings, card)
    return decoder, scores
