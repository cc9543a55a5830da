"""Atlas-to-EPI registration: setup time with and without a T1w, and the Dice tables.

Usage::

    python benchmarks/registration.py            # everything (about 3-4 minutes on 2 cores)
    python benchmarks/registration.py real       # real EPI series of ../shared/data
    python benchmarks/registration.py truth      # known warp, EPI alone and with a T1w
    python benchmarks/registration.py simulator  # the simulator's phantoms vs planted ROIs

Targets (issue 14): under 20 s from the EPI alone, under 60 s with a T1w. There is no real
T1w in ``../shared/data``: the T1w timing is on the synthetic T1w of the known-truth case
(2.5 mm, 70x84x72), the same as the tests use.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from rtserver.core.registration import dice
from rtserver.errors import InputError
from rtserver.resources import load_atlas, load_template
from rtserver.scanner.sources import open_source
from rtserver.service.atlas_registration import register_epi
from rtserver.service.t1w_registration import register_t1w
from rtserver.sim.known_warp import known_truth_epi, synthetic_t1w
from rtserver.sim.phantom import build_phantom
from rtserver.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared_series() -> tuple[list[Path], list[Path]]:
    """The real human EPI series of the shared data, and its phantoms (as the tests use)."""
    dicom = SHARED / "dicom"
    humans = [p for p in sorted(dicom.iterdir()) if p.is_dir()
              and p.name not in ("phantom", "pyneal_3vendor_3vol")]
    humans += sorted((dicom / "pyneal_3vendor_3vol").glob("*_env"))
    humans += sorted((SHARED / "real_task").glob("*/*_bold.nii.gz"))
    return humans, sorted(p for p in (dicom / "phantom").iterdir() if p.is_dir())


def real() -> None:
    """Brain-mask Dice and setup time of every real series, and the refusals."""
    print("| series | matrix | brain-mask Dice | affine alone | scaling | kept | setup (s) |")
    print("|---|---|---|---|---|---|---|")
    template, atlas = load_template(), load_atlas()
    for name in sum(shared_series(), []):
        reference = next(iter(open_source(name, tr=2.0)))
        started = time.perf_counter()
        try:
            quality = register_epi(reference, template, atlas, check_rois=False).quality
            row = (f"{quality.dice:.3f} | {quality.affine_dice:.3f} | {quality.scale:.2f} | "
                   f"{quality.method} | "
                   f"{time.perf_counter() - started:.1f}")
        except InputError as exc:
            reason = str(exc).split("refused (")[-1].split("):")[0]
            row = f"refused: {reason} | | | | {time.perf_counter() - started:.1f}"
        print(f"| {name.relative_to(SHARED)} | {'x'.join(map(str, reference.shape))} | {row} |", flush=True)


def truth() -> None:
    """Each ROI's Dice with the known truth, from the EPI alone and through a T1w."""
    reference, labels = known_truth_epi()
    template, atlas = load_template(), load_atlas()
    results = {}
    for path in ("EPI alone", "with T1w"):
        started = time.perf_counter()
        if path == "EPI alone":
            registration = register_epi(reference, template, atlas)
        else:
            registration = register_t1w(reference, synthetic_t1w(), template, atlas)
        seconds = time.perf_counter() - started
        results[path] = (registration, seconds)
    names = results["EPI alone"][0].rois.names
    print("| ROI | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for value, name in sorted(names.items()):
        cells = [f"{dice(r.rois.labels == value, labels == value):.3f}"
                 for r, _ in results.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| brain-mask Dice | " + " | ".join(f"{r.quality.dice:.3f}"
                                             for r, _ in results.values()) + " |")
    print("| setup (s) | " + " | ".join(f"{s:.1f}" for _, s in results.values()) + " |")


def simulator() -> None:
    """The simulator's phantoms: ROI Dice against the planted ROIs."""
    template, atlas = load_template(), load_atlas()
    for shape in ((64, 64, 36), (40, 48, 30)):
        phantom = build_phantom(shape, 3.5)
        reference = Volume(phantom.baseline.astype(np.float32), phantom.affine, index=0, tr=2.0)
        started = time.perf_counter()
        registration = register_epi(reference, template, atlas)
        seconds = time.perf_counter() - started
        cells = ", ".join(
            f"{name} {dice(registration.rois.labels == v, phantom.labels == v):.3f}"
            for v, name in sorted(phantom.roi_names.items()))
        print(f"phantom {shape} at 3.5 mm ({registration.quality.method}, "
              f"brain-mask Dice {registration.quality.dice:.3f}, {seconds:.1f} s): {cells}")


if __name__ == "__main__":
    chosen = sys.argv[1:] or ["real", "truth", "simulator"]
    for part in chosen:
        {"real": real, "truth": truth, "simulator": simulator}[part]()
        print()
