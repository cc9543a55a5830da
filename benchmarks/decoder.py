"""Decoder validation on simulated subjects, the cohort's drug-bias effect size, and cost.

    python benchmarks/decoder.py validate [--seeds 1,2,3] [--groups patient,control]
    python benchmarks/decoder.py cohort [--cohort 10,10] [--seed 0]
    python benchmarks/decoder.py cost [--repeats 3]

validate
    For each group and seed: simulate one subject's localizer run and a regulation run
    (each with its own noise and motion), train the decoder on the localizer exactly as
    ``rtserver train`` does (MNI atlas registered to the localizer's first volume), then
    step the regulation run through ``Pipeline.step`` with the decoder. Prints per subject: the
    nested cross-validated AUC on the localizer (the model card's: mean over folds, and
    pooled over folds), the online AUC of
    P(drug) for drug-cue vs food-cue volumes of the regulation run (lag-shifted labels,
    censored volumes left out), the online AUC on its look blocks only, the offline
    cross-validated AUC of a decoder trained and tested (nested, blocked) on the regulation
    run's own features, and the bias-feedback online AUC.
cohort
    Per subject of a simulated cohort, the drug-bias index (mean over ROIs of the drug minus
    food response, localizer) and Cohen's d between patients and controls.
cost
    Per-volume time of ROI voxel extraction + signal model + decoding (not motion) at
    64x64x36, from the demo-sized model of a simulated subject.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from _stats import summary
from sklearn.metrics import roc_auc_score

from rtserver.config import Config
from rtserver.core.decoder import volume_labels
from rtserver.core.pipeline import Pipeline
from rtserver.paradigm import Paradigm
from rtserver.scanner.sources import open_source
from rtserver.sim import simulate_subject
from rtserver.train.training import (
    RunFeatures,
    extract_features,
    find_runs,
    nested_cross_validation,
    train_subject,
    training_set,
)


def simulate(root: Path, subject: str, group: str, seed: int, regulation: bool = True,
             localizer_runs: int = 2) -> None:
    """The subject's localizer runs, and a regulation run (every run has its own noise)."""
    simulate_subject(root, subject, group, seed, paradigm="localizer", n_runs=localizer_runs)
    if regulation:
        simulate_subject(root, subject, group, seed, paradigm="regulation")


def online(decoder, bold: Path, kind: str = "classifier") -> tuple[np.ndarray, np.ndarray]:
    """P(drug) per volume and the censored flags, through Pipeline.step."""
    paradigm = Paradigm.from_file("regulation")
    pipeline = Pipeline(Config().with_overrides(decoder={"feedback": kind}),
                        paradigm=paradigm, decoder=decoder)
    events = [pipeline.step(volume) for volume in open_source(bold)]
    return (np.array([e.p_drug for e in events]), np.array([e.censored for e in events]))


def online_auc(p_drug: np.ndarray, censored: np.ndarray, look_only: bool = False) -> float:
    paradigm = Paradigm.from_file("regulation")
    events = [e for e in paradigm.events()
              if not look_only or e["trial_type"].startswith("look_")]
    labels, _ = volume_labels(events, paradigm.tr, len(p_drug))
    kept = (labels >= 0) & ~censored
    return float(roc_auc_score(labels[kept], p_drug[kept]))


def regulation_cv(decoder, bold: Path, events: Path) -> float:
    """Nested blocked CV AUC of a decoder trained within the regulation run's own features."""
    config = Config()
    run, _ = extract_features(bold, events, config, decoder.rois, decoder.reference, 4.0, 4.0)
    x, y, groups = training_set([run])
    return nested_cross_validation(x, y, groups).auc


def cmd_validate(args: argparse.Namespace) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    groups = args.groups.split(",")
    rows = []
    print(f"{'subject':8} {'group':8} {'seed':>4} {'cv_loc':>7} {'pooled':>7} {'online':>7} {'look':>6} "
          f"{'cv_reg':>7} {'bias':>6} {'|on-cv_loc|':>11} {'|on-cv_reg|':>11} {'s':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for group in groups:
            for seed in seeds:
                started = time.perf_counter()
                subject = f"{group[0].upper()}{seed:02d}"
                root = Path(tmp) / subject
                simulate(root, subject, group, seed, localizer_runs=args.localizer_runs)
                decoder, scores = train_subject(root, subject, progress=False)
                regulation = find_runs(root, subject, "regulation", [1])[0]
                p_drug, censored = online(decoder, regulation[0])
                auc = online_auc(p_drug, censored)
                look = online_auc(p_drug, censored, look_only=True)
                p_bias, _ = online(decoder, regulation[0], "bias")
                bias = online_auc(p_bias, censored)
                cv_reg = regulation_cv(decoder, *regulation)
                rows.append((group, scores.auc, scores.pooled_auc, auc, look, cv_reg, bias))
                print(f"{subject:8} {group:8} {seed:4d} {scores.auc:7.3f} "
                      f"{scores.pooled_auc:7.3f} {auc:7.3f} "
                      f"{look:6.3f} {cv_reg:7.3f} {bias:6.3f} {abs(auc - scores.auc):11.3f} "
                      f"{abs(auc - cv_reg):11.3f} {time.perf_counter() - started:5.0f}",
                      flush=True)
    for group in groups:
        values = np.array([r[1:] for r in rows if r[0] == group])
        means = values.mean(axis=0)
        print(f"mean {group:8}      {means[0]:7.3f} {means[1]:7.3f} {means[2]:7.3f} "
              f"{means[3]:6.3f} {means[4]:7.3f} {means[5]:6.3f}")


def bias_index(root: Path, subject: str) -> float:
    """Drug-bias index from the localizer: mean over ROIs of drug minus food response (%)."""
    config = Config().with_overrides(roi={"mask": "atlas"})
    runs: list[RunFeatures] = []
    files = find_runs(root, subject)
    reference = next(iter(open_source(files[0][0])))  # as rtserver train: run 1, volume 0
    rois = None  # the first run registers the atlas; the others reuse its ROIs
    for bold, events in files:
        run, pipeline = extract_features(bold, events, config, rois, reference, 4.0, 4.0)
        rois = pipeline.rois
        runs.append(run)
    x, y, _ = training_set(runs)
    means = x[:, -7:]
    return float(np.mean(means[y == 1].mean(axis=0) - means[y == 0].mean(axis=0)))


def cmd_cohort(args: argparse.Namespace) -> None:
    n_patients, n_controls = (int(n) for n in args.cohort.split(","))
    started = time.perf_counter()
    indices: dict[str, list[float]] = {"patient": [], "control": []}
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(f"P{i:02d}", "patient") for i in range(1, n_patients + 1)]
        plan += [(f"C{i:02d}", "control") for i in range(1, n_controls + 1)]
        for subject, group in plan:
            root = Path(tmp)
            simulate(root, subject, group, args.seed, regulation=False,
                     localizer_runs=args.localizer_runs)
            indices[group].append(bias_index(root, subject))
            print(f"{subject} {group:8} drug-bias index {indices[group][-1]:+.3f} %", flush=True)
    patients, controls = np.array(indices["patient"]), np.array(indices["control"])
    pooled = np.sqrt(((len(patients) - 1) * patients.var(ddof=1)
                      + (len(controls) - 1) * controls.var(ddof=1))
                     / (len(patients) + len(controls) - 2))
    d = (patients.mean() - controls.mean()) / pooled
    print(f"patients {patients.mean():+.3f} +- {patients.std(ddof=1):.3f} % (n={len(patients)}), "
          f"controls {controls.mean():+.3f} +- {controls.std(ddof=1):.3f} % (n={len(controls)}); "
          f"Cohen's d = {d:.2f}; {time.perf_counter() - started:.0f} s")


def cmd_cost(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        simulate(root, "P01", "patient", 1)
        decoder, _ = train_subject(root, "P01", progress=False)
        bold = find_runs(root, "P01", "regulation")[0][0]
        volumes = list(open_source(bold))
        print(f"decoder: {len(decoder.rois.names)} ROIs, {decoder.n_features} features; "
              f"run: {len(volumes)} volumes of {volumes[0].shape}")
        timings, whole = [], []
        for _ in range(args.repeats):
            pipeline = Pipeline(Config(), paradigm=Paradigm.from_file("regulation"),
                                decoder=decoder)
            pipeline.fit(decoder.reference)
            for volume in volumes:
                t0 = time.perf_counter()
                estimate = pipeline.motion.partial_fit(volume).estimate_
                t1 = time.perf_counter()
                voxels = pipeline.roi.transform_voxels(volume, estimate.matrix)
                means = pipeline.roi.means(voxels)
                psc = pipeline.signal.partial_fit(volume.index, volume.tr,
                                                  np.concatenate([voxels, means]),
                                                  estimate.params, estimate.censored).psc_
                p_drug, _ = decoder.predict(psc)
                pipeline.decoder_feedback.partial_fit(volume.index, volume.tr, p_drug,
                                                      estimate.censored)
                t2 = time.perf_counter()
                timings.append((t2 - t1) * 1000.0)
                whole.append((t2 - t0) * 1000.0)
        for name, values in (("ROI extraction + signal model + decoding", timings),
                             ("the same plus motion correction", whole)):
            print(summary(values, digits=3, label=f"{name}:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate")
    validate.add_argument("--seeds", default="1,2,3")
    validate.add_argument("--groups", default="patient,control")
    validate.add_argument("--localizer-runs", type=int, default=2,
                          help="localizer runs the decoder is trained on (default 2)")
    validate.set_defaults(func=cmd_validate)
    cohort = commands.add_parser("cohort")
    cohort.add_argument("--cohort", default="10,10")
    cohort.add_argument("--seed", type=int, default=0)
    cohort.add_argument("--localizer-runs", type=int, default=2,
                        help="localizer runs per subject (default 2)")
    cohort.set_defaults(func=cmd_cohort)
    cost = commands.add_parser("cost")
    cost.add_argument("--repeats", type=int, default=3)
    cost.set_defaults(func=cmd_cost)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.func(args)


if __name__ == "__main__":
    main()
