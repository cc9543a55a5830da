"""The demo, end to end: simulator, server, display and bridge as separate processes.

Ground truth: the feedback the server published must follow the response the simulator
planted in the target ROI.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from rtserver.paradigm import Paradigm
from rtserver.simulate import condition_regressors

from .conftest import command

pytestmark = pytest.mark.display


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a screen: run under xvfb-run "
                    "(make test does)")
def test_demo_runs_and_feedback_follows_the_planted_signal(tmp_path, processes):
    out = tmp_path / "demo"
    code, stderr = processes([command("rtserver"), "demo", "--out", str(out),
                              "--speed", "20"]).finish(timeout=240)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    prefix = "sub-01_task-regulation_run-1"
    output = out / "output"
    with (output / f"{prefix}_desc-feedback_timeseries.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    paradigm = Paradigm.from_file("regulation")
    assert [int(row["volume"]) for row in rows] == list(range(paradigm.n_volumes))

    truth = json.loads((out / "bids" / "derivatives" / "simulator" / "sub-01" / "func"
                        / f"{prefix}_desc-truth.json").read_text())
    amplitudes = truth["amplitudes_percent"]["nacc"]
    regressors = condition_regressors(paradigm)
    planted = sum(amplitude * np.asarray(regressors[name])
                  for name, amplitude in amplitudes.items())
    value = np.array([float(row["value"]) for row in rows])
    kept = np.array([row["censored"] == "0" for row in rows])
    kept[:10] = False  # the baseline is still forming
    r = np.corrcoef(value[kept], planted[kept])[0, 1]
    assert r > 0.8, f"feedback correlates only r={r:.2f} with the planted response"

    shots = sorted((out / "screenshots").glob("volume-*.png"))
    assert shots, "the display saved no screenshot"
    assert (output / f"{prefix}_events.tsv").exists()
    display = json.loads((output / f"{prefix}_desc-display.json").read_text())
    assert isinstance(display["dropped_frames"], int)
