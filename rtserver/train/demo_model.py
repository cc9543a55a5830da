"""Regenerate the demo decoder shipped in ``models/``: ``python -m rtserver.train.demo_model``.

The demo (``rtserver demo``, ``make demo``) replays regulation run 1 of the simulated patient
``01`` (seed 1). Its decoder is trained here the way ``rtserver train`` trains any subject's:
on that same simulated subject's localizer, through the online pipeline, with the MNI
atlases registered to the localizer's first volume. The simulator gives every task's runs
their own noise and motion, so the localizer shares nothing with the replayed run but the
subject's planted responses.

Everything is deterministic (simulator seeds, registration, lbfgs): regenerating gives the
same model card and the same numbers (coefficients, calibration, ROIs, reference). The skops
file's bytes still differ, because skops names its members after Python object ids.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from rtserver.config import Config
from rtserver.resources import demo_model_path
from rtserver.service.model_file import save_decoder
from rtserver.sim import simulate_subject
from rtserver.train.training import train_subject

#: The demo subject: a simulated patient, seed 1 (the demo replays its regulation run 1).
SUBJECT, GROUP, SEED = "01", "patient", 1
DEMO_MODEL = demo_model_path()


def train_demo(out: Path = DEMO_MODEL, progress: bool = True) -> tuple[Path, Path]:
    """Simulate the demo subject's localizer, train its decoder, write model and card."""
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "demo-bids"
        simulate_subject(bids, SUBJECT, GROUP, SEED, paradigm="localizer", n_runs=2,
                         progress=progress)
        decoder, scores = train_subject(bids, SUBJECT, config=Config(), progress=progress)
        paths = save_decoder(decoder, out)
    print(f"cross-validated AUC {scores.auc:.3f}, accuracy {scores.accuracy:.3f}; "  # noqa: T201
          f"wrote {paths[0]} and {paths[1]}")
    return paths


def main() -> None:
    """Command line: ``python -m rtserver.train.demo_model [--out FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEMO_MODEL,
                        help=f"model file (default {DEMO_MODEL})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="train_demo: %(message)s")
    train_demo(args.out)


if __name__ == "__main__":
    main()
