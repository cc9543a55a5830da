"""Soak: a long run through bridge, server and display as separate processes.

A simulated 64x64x36 regulation run is cycled into a ``--volumes``-long 4D NIfTI (2,000 by
default) and a paradigm of the same length is written; then ``rtserver serve``,
``feedback-display`` (windowed, under the current X display or ``xvfb-run``) and
``rtserver send --speed`` run as real processes. Every half second the resident memory of
the server and of the bridge is read from ``/proc``. It prints:

- volumes sent, recorded by the server (its feedback table's rows) and lost;
- the server's memory after warm-up (10 % of the run) and at the end, and the change;
- the bridge's peak memory, against the size of the 4D file and of one volume (a bridge
  that streams holds a few volumes, not the run);
- the display's frame timing and dropped frames, and its rows in ``*_events.tsv``.

    xvfb-run -a python benchmarks/soak.py [--volumes 2000] [--speed 40]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _stats import summary

from rtserver.sim import simulate_subject

BIN = Path(sys.executable).parent
LISTENING = re.compile(r"listening: volumes (\S+), feedback (\S+), results (\S+)")
CYCLE = (("fixation", None, 10.0), ("look", "drug", 20.0), ("fixation", None, 10.0),
         ("reappraise", "drug", 20.0), ("fixation", None, 10.0), ("savor", "food", 20.0))


def soak_paradigm(path: Path, n_volumes: int, tr: float = 2.0) -> None:
    """A regulation-like paradigm of exactly ``n_volumes`` volumes, without ratings."""
    lines = ['name = "soak"', 'task = "regulation"', f"tr = {tr}", ""]
    remaining, k = n_volumes * tr, 0
    while remaining > 0:
        condition, cue, duration = CYCLE[k % len(CYCLE)]
        duration = min(duration, remaining)
        lines += ["[[blocks]]", f'condition = "{condition}"', f"duration = {duration}"]
        if cue:
            lines += [f'cue = "{cue}"', 'feedback = "continuous"']
        lines.append("")
        remaining -= duration
        k += 1
    path.write_text("\n".join(lines), encoding="utf-8")


def long_run(path: Path, source: Path, n_volumes: int) -> int:
    """Cycle a simulated run's volumes into an ``n_volumes``-long 4D NIfTI; bytes/volume."""
    image = nib.load(source)
    data = np.asanyarray(image.dataobj)
    cycled = data[..., np.arange(n_volumes) % data.shape[3]]
    out = nib.Nifti1Image(cycled, image.affine, image.header)
    out.header.set_data_shape(cycled.shape)
    nib.save(out, path)
    return int(np.prod(data.shape[:3])) * data.dtype.itemsize


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (MB), or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024.0 if match else None


class Sampler(threading.Thread):
    """Reads the memory of some processes every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self.done = threading.Event()

    def run(self) -> None:
        """Sample until :attr:`done` is set."""
        start = time.monotonic()
        while not self.done.wait(self.interval):
            for name, pid in self.pids.items():
                value = rss_mb(pid)
                if value is not None:
                    self.samples[name].append((time.monotonic() - start, value))


def wait_for_line(process: subprocess.Popen, pattern: re.Pattern, timeout: float) -> re.Match:
    """Read a process's stderr until a line matches (stderr keeps draining afterwards)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        match = pattern.search(line)
        if match:
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
            return match
    raise SystemExit(f"{process.args[0]} never printed {pattern.pattern!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=2000, help="run length (2000)")
    parser.add_argument("--speed", type=float, default=40.0,
                        help="replay speed-up over TR 2 s (default 40: 0.05 s a volume)")
    args = parser.parse_args()
    display_prefix = [] if os.environ.get("DISPLAY") else ["xvfb-run", "-a"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = simulate_subject(tmp / "bids", "01", "patient", seed=11,
                               paradigm="regulation").runs[0]
        bold = tmp / "sub-01_task-regulation_run-1_bold.nii.gz"
        one_volume = long_run(bold, run.bold, args.volumes)
        paradigm = tmp / "soak.toml"
        soak_paradigm(paradigm, args.volumes)
        out = tmp / "out"
        any_port = "tcp://127.0.0.1:*"
        server = subprocess.Popen(
            [str(BIN / "rtserver"), "serve", "--out", str(out), "--paradigm", str(paradigm),
             "--roi", str(run.rois), "--target", "nacc", "--volumes", any_port,
             "--feedback", any_port, "--results", any_port, "--wait-display", "60"],
            stderr=subprocess.PIPE, text=True)
        volumes, feedback, _ = wait_for_line(server, LISTENING, 60).groups()
        display = subprocess.Popen(
            [*display_prefix, str(BIN / "feedback-display"), "--paradigm", str(paradigm),
             "--server", feedback, "--out", str(out), "--windowed", "--start-on", "server",
             "--skip-ratings", "--timeout", "600"],
            stderr=subprocess.DEVNULL)
        started = time.monotonic()
        bridge = subprocess.Popen(
            [str(BIN / "rtserver"), "send", str(bold), "--to", volumes, "--speed",
             str(args.speed), "--timeout", "120"], stderr=subprocess.DEVNULL)
        sampler = Sampler({"server": server.pid, "bridge": bridge.pid})
        sampler.start()
        bridge_code = bridge.wait()
        server_code = server.wait(timeout=120)
        display_code = display.wait(timeout=120)
        seconds = time.monotonic() - started
        sampler.done.set()
        sampler.join()
        report(args, out, sampler.samples, one_volume, bold.stat().st_size, seconds,
               (bridge_code, server_code, display_code))
        shutil.rmtree(tmp / "bids", ignore_errors=True)


def report(args: argparse.Namespace, out: Path, samples: dict, one_volume: int,
           file_bytes: int, seconds: float, codes: tuple[int, int, int]) -> None:
    """Print the soak's figures."""
    table = next(out.glob("*_desc-feedback_timeseries.tsv"))
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    indices = {int(row["volume"]) for row in rows}
    print(f"{args.volumes} volumes at {args.speed:g}x (one every {2.0 / args.speed:.3f} s), "
          f"{seconds:.0f} s; exit codes bridge {codes[0]}, server {codes[1]}, display "
          f"{codes[2]}")
    print(f"recorded by the server: {len(rows)} rows, {len(indices)} distinct volumes; "
          f"lost {args.volumes - len(indices)}")
    print("latency received -> published: "
          + summary([float(row["latency_ms"]) for row in rows[1:]]))
    server = np.array([v for _, v in samples["server"]])
    warm = max(1, len(server) // 10)
    early, late = float(np.median(server[warm:2 * warm])), float(np.median(server[-warm:]))
    print(f"server memory: {early:.0f} MB after warm-up, {late:.0f} MB at the end "
          f"({100 * (late - early) / early:+.1f} %), peak {server.max():.0f} MB")
    bridge = np.array([v for _, v in samples["bridge"]])
    print(f"bridge memory: peak {bridge.max():.0f} MB for a {file_bytes / 1e6:.0f} MB file "
          f"({args.volumes * one_volume / 1e6:.0f} MB of voxels, {one_volume / 1e6:.2f} MB "
          "a volume)")
    summary_file = next(out.glob("*_desc-display.json"), None)
    if summary_file is not None:
        display = json.loads(summary_file.read_text())
        print(f"display: {display.get('n_frames')} frames, interval median "
              f"{display.get('frame_interval_ms_median')} ms, p99 "
              f"{display.get('frame_interval_ms_p99')} ms, dropped "
              f"{display.get('dropped_frames')}, feedback events received "
              f"{display.get('n_feedback_events_received')}")
    events = next(out.glob("*_events.tsv"), None)
    if events is not None:
        print(f"display events rows: {len(events.read_text().splitlines()) - 1}")


if __name__ == "__main__":
    main()
