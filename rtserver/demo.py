"""``rtserver demo``: a whole session on one machine, each part in its own process.

1. simulate a patient's regulation run (a BIDS dataset with known truth);
2. start ``rtserver serve`` (waiting for the display to subscribe) with the demo decoder
   shipped in ``models/`` (trained on the same simulated patient's localizer by
   ``python -m rtserver.train.demo_model``); without that file, the feedback is the NAcc's
   percent signal change;
3. start ``feedback-display`` (windowed, saving a screenshot per feedback event);
4. start ``rtserver send`` replaying the simulated run at an accelerated TR;
5. wait for all three, and print where the outputs and screenshots are.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from rtserver.bids import prefix as bids_prefix
from rtserver.errors import TransportError
from rtserver.resources import demo_model_path
from rtserver.train.demo_model import GROUP, SEED, SUBJECT

log = logging.getLogger(__name__)

TASK = "regulation"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run_demo(out: Path, speed: float = 8.0, display: bool = True, timeout: float = 600.0) -> int:
    """Run the demo session under ``out``; return 0 when every part succeeded.

    Parameters
    ----------
    out : Path
        Folder for the simulated dataset (``bids/``), the run's outputs (``output/``) and
        the display's screenshots (``screenshots/``).
    speed : float
        Replay this many times faster than the acquisition TR.
    display : bool
        Start the PsychoPy display (needs a screen or Xvfb).
    timeout : float
        Seconds after which a part still running counts as failed.
    """
    from rtserver.sim import simulate_subject

    out = Path(out).resolve()
    bids, output, screenshots = out / "bids", out / "output", out / "screenshots"
    for folder in (output, screenshots):
        if folder.exists():
            for stale in folder.iterdir():
                stale.unlink()
    log.info("1/4 simulating a %s's %s run into %s", GROUP, TASK, bids)
    simulated = simulate_subject(bids, SUBJECT, GROUP, SEED, paradigm=TASK, progress=True)
    run = simulated.runs[0]
    if display and not os.environ.get("DISPLAY"):
        log.warning("no screen (DISPLAY unset): running without the display; "
                    "use `make demo`, which starts a virtual screen")
        display = False
    volumes, feedback, results = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    server_cmd = [
        _script("rtserver"), "serve", "--out", str(output), "--volumes", volumes,
        "--feedback", feedback, "--results", results, "--paradigm", TASK,
        "--subject", SUBJECT, "--task", TASK, "--run", "1",
        "--wait-display", "60" if display else "0",
    ]
    demo_model = demo_model_path()
    if demo_model.exists():
        log.info("feedback from the demo decoder %s", demo_model)
        server_cmd += ["--model", str(demo_model)]
    else:
        log.warning("no demo decoder at %s (python -m rtserver.train.demo_model writes it); the "
                    "feedback is the NAcc's percent signal change", demo_model)
        server_cmd += ["--roi", str(run.rois), "--target", "nacc"]
    display_cmd = [
        _script("feedback-display"), "--paradigm", TASK, "--server", feedback,
        "--out", str(output), "--windowed", "--screenshots", str(screenshots),
        "--subject", SUBJECT, "--run", "1",
    ]
    bridge_cmd = [_script("rtserver"), "send", str(run.bold), "--to", volumes,
                  "--speed", f"{speed:g}", "--timeout", "120"]
    log.info("2/4 starting the server (%s)", volumes)
    processes = {"server": subprocess.Popen(server_cmd)}
    try:
        if display:
            log.info("3/4 starting the display (subscribing to %s)", feedback)
            processes["display"] = subprocess.Popen(display_cmd)
        log.info("4/4 replaying %s at %gx real time", run.bold.name, speed)
        processes["bridge"] = subprocess.Popen(bridge_cmd)
        codes = {}
        for name in ("bridge", "server", "display"):
            if name in processes:
                try:
                    codes[name] = processes[name].wait(timeout)
                except subprocess.TimeoutExpired:
                    raise TransportError(f"the {name} did not finish within {timeout:g} s") from None
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)
    failed = [name for name, code in codes.items() if code != 0]
    _print_summary(out, output, screenshots, bids, display)
    if failed:
        log.error("demo failed: %s exited with an error", ", ".join(failed))
        return 1
    return 0


def _print_summary(out: Path, output: Path, screenshots: Path, bids: Path,
                   display: bool) -> None:
    feedback = output / f"{bids_prefix(SUBJECT, TASK, 1)}_desc-feedback_timeseries.tsv"
    latencies = []
    if feedback.exists():
        with feedback.open(newline="") as handle:
            latencies = [float(row["latency_ms"]) for row in csv.DictReader(handle, delimiter="\t")]
    shots = sorted(screenshots.glob("*.png")) if screenshots.exists() else []
    lines = [
        "",
        "Demo finished.",
        f"  simulated session (BIDS):  {bids}",
        f"  run outputs:               {output}",
    ]
    if latencies:
        lines.append(f"  volumes processed:         {len(latencies)}; latency received->published "
                     f"median {np.median(latencies):.1f} ms, p95 "
                     f"{np.percentile(latencies, 95):.1f} ms")
    if display:
        lines.append(f"  display screenshots:       {screenshots} ({len(shots)} PNG files)")
    print("\n".join(lines))  # noqa: T201 - the demo's report to the user
