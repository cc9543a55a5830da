"""How well a standard offline analysis recovers what the simulator planted.

For a cohort of simulated subjects (default 4 patients + 4 controls, regulation run,
64x64x36 at 3.5 mm, no head motion so that the effects are measured alone), nilearn's
FirstLevelModel (SPM HRF, cosine drift, AR(1) noise model) estimates each condition's
response; its ROI-mean effect, in percent of the ROI's mean signal, is compared with the
planted amplitude. Also printed: each subject's drug-bias index (look_drug - look_food over
the cue-reactive ROIs) by group, and the noise's temporal SNR and lag-1 autocorrelation at
grey-matter intensity. Writes ``docs/figures/simulator_recovery.png``.

Run: ``python benchmarks/simulator_validation.py [--patients 4 --controls 4 --seed 1]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from nilearn.glm.first_level import FirstLevelModel  # noqa: E402

from rtserver.core.hrf import condition_regressors  # noqa: E402
from rtserver.paradigm import Paradigm  # noqa: E402
from rtserver.sim import simulate_cohort  # noqa: E402
from rtserver.sim.activation import CUE_REACTIVE_ROIS  # noqa: E402

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "simulator_recovery.png"


def analyse(run) -> tuple[dict, dict, np.ndarray, dict]:
    """Planted and nilearn-estimated amplitudes per ROI and trial type, the noise figures."""
    truth = json.loads(Path(run.truth).read_text())
    image = nib.load(run.bold)
    data = np.asarray(image.dataobj, dtype=np.float64)
    labels = np.asarray(nib.load(run.rois).dataobj)
    events = pd.read_csv(run.events, sep="\t")
    model = FirstLevelModel(t_r=truth["repetition_time"], hrf_model="spm",
                            drift_model="cosine", high_pass=0.008, signal_scaling=False,
                            noise_model="ar1", minimize_memory=True,
                            mask_img=nib.Nifti1Image((labels > 0).astype(np.int8),
                                                     image.affine)).fit(image, events=events)
    mean = data.mean(axis=-1)
    estimated: dict[str, dict[str, float]] = {}
    trial_types = sorted(events["trial_type"].unique())
    effects = {t: np.asarray(model.compute_contrast(t, output_type="effect_size").dataobj)
               for t in trial_types}
    for index, name in truth["rois"]["labels"].items():
        inside = labels == int(index)
        estimated[name] = {t: 100.0 * effects[t][inside].mean() / mean[inside].mean()
                           for t in trial_types}
    # Noise at grey-matter intensity, outside the ROIs: tSNR and lag-1 after a cubic trend.
    reference = truth["noise"]["reference_intensity"]
    grey = (np.abs(mean - reference) < 0.03 * reference) & (labels == 0)
    series = data[grey].T
    trend = np.polynomial.polynomial.polyvander(np.linspace(-1, 1, len(series)), 3)
    residuals = series - trend @ np.linalg.lstsq(trend, series, rcond=None)[0]
    noise = {"tsnr": float(np.median(series.mean(axis=0) / residuals.std(axis=0))),
             "lag1": float(np.median((residuals[1:] * residuals[:-1]).sum(axis=0)
                                     / (residuals**2).sum(axis=0)))}
    nacc = data[labels == int(next(i for i, n in truth["rois"]["labels"].items()
                                   if n == "nacc"))].mean(axis=0)
    return truth, estimated, nacc, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--controls", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    paradigm = Paradigm.from_file("regulation")
    regressors = condition_regressors(paradigm)
    rows, bias, traces, noises = [], {"patient": [], "control": []}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        cohort = simulate_cohort(tmp, args.patients, args.controls, args.seed,
                                 motion_scale=0.0, progress=True)
        for subject in cohort:
            truth, estimated, nacc, noise = analyse(subject.runs[0])
            noises.append(noise)
            planted = truth["amplitudes_percent"]
            for roi, table in planted.items():
                for trial_type, amplitude in table.items():
                    rows.append((subject.group, roi, trial_type, amplitude,
                                 estimated[roi][trial_type]))
            bias[subject.group].append(np.mean([estimated[r]["look_drug"]
                                                - estimated[r]["look_food"]
                                                for r in CUE_REACTIVE_ROIS]))
            if subject.group not in traces:
                model = sum(a * np.asarray(regressors[t])
                            for t, a in planted["nacc"].items())
                traces[subject.group] = (100.0 * (nacc / nacc[:5].mean() - 1.0), model)

    groups = np.array([r[0] for r in rows])
    planted = np.array([r[3] for r in rows])
    found = np.array([r[4] for r in rows])
    error = found - planted
    print(f"nilearn FirstLevelModel vs planted, {len(rows)} ROI x condition effects over "
          f"{args.patients} patients + {args.controls} controls (percent signal change):")
    print(f"  RMS error {np.sqrt(np.mean(error**2)):.3f}, mean error {error.mean():+.3f}, "
          f"95th percentile |error| {np.percentile(np.abs(error), 95):.3f}, "
          f"max |error| {np.abs(error).max():.3f}")
    worst = rows[int(np.argmax(np.abs(error)))]
    print(f"  largest error: {worst[1]} {worst[2]} of a {worst[0]}, planted {worst[3]:.2f}, "
          f"found {worst[4]:.2f}")
    print(f"  sign of every effect recovered: {bool(np.all(np.sign(found) == np.sign(planted)))}")
    for roi in sorted({r[1] for r in rows}):
        chosen = np.array([r[1] == roi for r in rows])
        print(f"    {roi:16s} RMS error {np.sqrt(np.mean(error[chosen] ** 2)):.3f}")
    for group in ("patient", "control"):
        values = np.array(bias[group])
        print(f"  drug-bias index (look_drug - look_food, mean of the cue-reactive ROIs), "
              f"{group}s: " + ", ".join(f"{v:+.2f}" for v in values))
    difference = np.mean(bias["patient"]) - np.mean(bias["control"])
    pooled = np.sqrt((np.var(bias["patient"], ddof=1) + np.var(bias["control"], ddof=1)) / 2)
    print(f"  patients - controls: {difference:+.2f} % (Cohen's d {difference / pooled:.1f})")
    tsnr = [n["tsnr"] for n in noises]
    lag1 = [n["lag1"] for n in noises]
    print(f"noise at grey-matter intensity: tSNR median {np.median(tsnr):.1f} "
          f"(range {min(tsnr):.1f}-{max(tsnr):.1f}; set 60), lag-1 autocorrelation after a "
          f"cubic trend {np.median(lag1):.3f} (range {min(lag1):.3f}-{max(lag1):.3f})")

    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2),
                                         gridspec_kw={"width_ratios": [1, 1.6]})
    for group, colour in (("patient", "#c0504d"), ("control", "#4f81bd")):
        chosen = groups == group
        left.scatter(planted[chosen], found[chosen], s=12, alpha=0.7, color=colour,
                     label=f"{group}s")
    span = [0, max(planted.max(), found.max()) * 1.05]
    left.plot(span, span, color="grey", linewidth=1)
    left.set_xlabel("planted amplitude (% signal change)")
    left.set_ylabel("nilearn FirstLevelModel estimate (%)")
    left.set_title(f"Every ROI x condition, RMS error {np.sqrt(np.mean(error**2)):.2f} %")
    left.legend(frameon=False)
    time = np.arange(paradigm.n_volumes) * paradigm.tr
    for offset, (group, colour) in enumerate((("patient", "#c0504d"),
                                              ("control", "#4f81bd"))):
        signal, model = traces[group]
        shift = 4.0 * offset
        right.plot(time, signal + shift, color=colour, linewidth=0.8, label=f"{group}, data")
        right.plot(time, model + shift, color="black", linewidth=1.0,
                   label="planted response" if offset == 0 else None)
    shades = {"drug": "#c0504d", "food": "#4f81bd", "neutral": "grey"}
    for event in paradigm.events():
        right.axvspan(event["onset"], event["onset"] + event["duration"], alpha=0.08,
                      color=shades[event["trial_type"].rpartition("_")[2]])
    right.set_xlabel("time (s)")
    right.set_ylabel("NAcc mean (% signal change, offset)")
    right.set_title("NAcc mean, one patient and one control (shading: drug, food, neutral)", fontsize=10)
    right.legend(frameon=False, fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(FIGURE, dpi=110)
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    main()
