"""Accuracy of the motion correction on real data: the figures of docs/validation.md.

1. Known motion on real EPI volumes: the nine rigid AFNI 3dvolreg matrices of
   tests/data/motion plus ten planted moves of 2-3 mm and 2-3 degrees, noise at 2 % of the
   mean brain intensity in reference and moved volume (temporal SNR 50). Moves are made
   with a quintic spline, estimated with the corrector's cubic B-spline model.
2. Stationary phantoms: the largest estimated motion over the run.
3. The GE deliberate-motion series: framewise displacement per volume.
4. Simulated runs (several seeds): RMS error against the planted motion.

    python benchmarks/motion_accuracy.py [--shared ../shared/data] [--order 3]

``--order 1`` shows what trilinear sampling (the first version) gives on the same data.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from rtserver.core.stages import MotionCorrector
from rtserver.rigid import (
    PARAMETER_NAMES,
    grid_centre,
    matrix_to_params,
    params_to_matrix,
    read_afni_matrices,
)
from rtserver.sim import simulate_subject
from rtserver.sim.motion import apply_motion
from rtserver.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict = {}
AFNI = ROOT / "tests" / "data" / "motion" / "eddymotion_head-motion-parameters.aff12.1D"


def volume(data: np.ndarray, affine: np.ndarray, index: int = 0) -> Volume:
    return Volume(np.asarray(data, dtype=np.float32), affine, index=index, tr=2.0)


def known_motion(path: Path, rng: np.random.Generator) -> str:
    img = nib.load(path)
    data = np.asarray(img.dataobj[..., 0], dtype=np.float64)
    noise = 0.02 * data[data > data.mean()].mean()
    matrices, _ = read_afni_matrices(AFNI)
    centre = grid_centre(data.shape, img.affine)
    for _ in range(10):
        sizes = np.r_[rng.uniform(2.0, 3.0, 3), np.deg2rad(rng.uniform(2.0, 3.0, 3))]
        matrices.append(params_to_matrix(rng.choice([-1.0, 1.0], 6) * sizes, centre))
    errors = []
    for matrix in matrices:
        reference = data + rng.normal(0.0, noise, data.shape)
        moved = apply_motion(data, matrix, img.affine, order=5)
        moved += rng.normal(0.0, noise, data.shape)
        corrector = MotionCorrector(**SETTINGS).fit(volume(reference, img.affine))
        estimate = corrector.partial_fit(volume(moved, img.affine, 1)).estimate_
        errors.append(estimate.params - matrix_to_params(matrix, centre))
    errors = np.array(errors)
    mm, deg = np.abs(errors[:, :3]), np.rad2deg(np.abs(errors[:, 3:]))
    return (f"| {path.name.split('.')[0]} | {'x'.join(map(str, data.shape))} | {len(errors)} | "
            f"{np.sqrt((mm**2).mean()):.4f} | {np.sqrt((deg**2).mean()):.4f} | "
            f"{mm.max():.4f} | {deg.max():.4f} |")


def run_estimates(path: Path) -> list:
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    corrector = MotionCorrector(**SETTINGS).fit(volume(data[..., 0], img.affine))
    return corrector.estimate_run(data, img.affine)


def simulated(seed: int, tmp: Path) -> tuple[float, float, float, float]:
    run = simulate_subject(tmp / f"s{seed}", f"{seed:02d}", "patient", seed=seed).runs[0]
    estimates = run_estimates(run.bold)
    img = nib.load(run.bold)
    centre = grid_centre(img.shape[:3], img.affine)
    with run.true_motion.open(newline="") as handle:
        rows = [[float(r[n]) for n in PARAMETER_NAMES]
                for r in csv.DictReader(handle, delimiter="\t")]
    first = np.linalg.inv(params_to_matrix(rows[0], centre))
    errors = np.array([e.params - matrix_to_params(params_to_matrix(r, centre) @ first, centre)
                       for r, e in zip(rows, estimates, strict=True)])
    mm, deg = np.abs(errors[:, :3]), np.rad2deg(np.abs(errors[:, 3:]))
    return np.sqrt((mm**2).mean()), np.sqrt((deg**2).mean()), mm.max(), deg.max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the shared real-data collection (default ../shared/data)")
    parser.add_argument("--order", type=int, default=3, choices=(1, 2, 3),
                        help="B-spline degree of the image model (default 3)")
    args = parser.parse_args()
    SETTINGS["interpolation_order"] = args.order
    nifti = args.shared / "nifti"
    rng = np.random.default_rng(2026)

    print("Known motion on real EPI (2 % noise):")
    print("| series | matrix | moves | RMS mm | RMS deg | max mm | max deg |")
    print("|---|---|---|---|---|---|---|")
    series = [ROOT / "tests/data/nifti/siemens_skyra_rtcloud_facematching_10vol.nii.gz"]
    series += [nifti / f"{name}.nii.gz" for name in (
        "siemens_xa30_prismafit_bold_20vol", "philips_achieva_studyforrest_18vol",
        "ge_mr750_pyneal_3vol", "siemens_prismafit_pyneal_3vol")]
    for path in series:
        print(known_motion(path, rng) if path.exists() else f"| {path.name} | absent |")

    print("\nStationary phantoms (largest estimate over the run):")
    print("| phantom | volumes | max trans mm | max rot deg | max FD mm |")
    print("|---|---|---|---|---|")
    for name in ("phantom_ge_triggertime_16vol", "phantom_siemens_xa10_sms_18vol"):
        path = nifti / f"{name}.nii.gz"
        if not path.exists():
            print(f"| {name} | absent |")
            continue
        estimates = run_estimates(path)
        params = np.array([e.params for e in estimates])
        print(f"| {name} | {len(estimates)} | {np.abs(params[:, :3]).max():.4f} | "
              f"{np.rad2deg(np.abs(params[:, 3:])).max():.4f} | "
              f"{max(e.fd for e in estimates):.4f} |")

    path = nifti / "ge_mr750_dcmqa_nih_deliberate_motion_10vol.nii.gz"
    if path.exists():
        estimates = run_estimates(path)
        print("\nGE deliberate motion, per volume (0-based):")
        print("| volume | " + " | ".join(str(i) for i in range(len(estimates))) + " |")
        print("|---" * (len(estimates) + 1) + "|")
        print("| FD mm | " + " | ".join(f"{e.fd:.1f}" for e in estimates) + " |")
        print("| restarted | " + " | ".join("yes" if e.restarted else "" for e in estimates)
              + " |")

    print("\nSimulated regulation runs, 64x64x36 at 3.5 mm, 140 volumes (error vs planted):")
    print("| seed | RMS mm | RMS deg | max mm | max deg |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (1, 2, 3, 4, 5):
            figures = simulated(seed, Path(tmp))
            print(f"| {seed} | " + " | ".join(f"{v:.4f}" for v in figures) + " |")


if __name__ == "__main__":
    main()
