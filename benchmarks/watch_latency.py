"""Latency from a file being complete in a watched folder to its volume reaching the server.

A writer thread puts real scanner files into a folder at a fixed pace (rtserver.scanner.export_writer)
while ``watch_and_send`` follows the folder and sends each volume over ZeroMQ (loopback) to
``rtserver serve`` running as its own process, as bridge and server do in a session. For
every volume the latency is the server's receive time minus the time the writer finished
the volume's last file. Printed: median and p95 (ms), per mode (inotify events, and
polling), for a Siemens mosaic series (one file per volume, from tests/data, cycled to 60
volumes, one every 0.25 s) and, when ../shared/data is here, the Siemens XA30 enhanced
series (one multi-frame file a volume, 20 volumes) and the GE per-slice series (15 files a
volume, one volume a second: its deliberate head motion makes the server work longer on
some volumes). Volume 0 is left out: it is held back 0.25 s in case an earlier volume is
still being found, and the server sets up its reference on it.

    python benchmarks/watch_latency.py [--volumes 60] [--interval 0.25]

Target (issue 3): median <= 20 ms.
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pydicom
from _stats import summary

from rtserver.scanner.export_writer import ExportPlan, ExportWriter, groups_by_volume
from rtserver.scanner.readers import read_file
from rtserver.scanner.watch import watch_and_send
from rtserver.service.bridge import ScannerBridge

ROOT = Path(__file__).resolve().parents[1]
MOSAIC = ROOT / "tests" / "data" / "siemens_mosaic_skyra_10vol"
GE = ROOT.parent / "shared" / "data" / "dicom" / "ge_mr750_deliberate_motion_10vol"
XA30 = ROOT.parent / "shared" / "data" / "dicom" / "siemens_xa30_enhanced_20vol"
ANY_PORT = "tcp://127.0.0.1:*"


def long_mosaic_series(folder: Path, n_volumes: int) -> list[list[Path]]:
    """The 10 real mosaic files cycled to ``n_volumes`` acquisitions (new numbers and UIDs)."""
    folder.mkdir()
    sources = sorted(p for p in MOSAIC.glob("*.dcm") if not p.name.endswith("000000.dcm"))
    groups = []
    for number in range(1, n_volumes + 1):
        dataset = pydicom.dcmread(sources[(number - 1) % len(sources)])
        dataset.AcquisitionNumber = number
        dataset.InstanceNumber = number
        dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        target = folder / f"001_000013_{number:06d}.dcm"
        dataset.save_as(target)
        groups.append([target])
    return groups


def start_server(out: Path) -> tuple[subprocess.Popen, str]:
    """``rtserver serve`` on a free port; returns the process and its volume address."""
    command = [str(Path(sys.executable).parent / "rtserver"), "serve", "--out", str(out),
               "--volumes", ANY_PORT, "--feedback", ANY_PORT, "--results", ANY_PORT]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        match = re.search(r"listening: volumes (\S+),", line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # drain
            return process, match.group(1)
    raise RuntimeError("rtserver serve did not start")


def measure(groups: list[list[Path]], interval: float, poll: float | None,
            work: Path) -> dict[str, list[float]]:
    server, address = start_server(work / "out")
    writer = ExportWriter(ExportPlan(groups=groups, interval=interval), work / "export").start()
    with ScannerBridge(address) as bridge:
        report = watch_and_send(work / "export", bridge.send_volume, poll=poll,
                                n_volumes=len(groups), idle_timeout=30.0)
        bridge.send_end(report.n_sent)
    server.wait(timeout=60)
    writer.join(timeout=60)
    table = next((work / "out").glob("*_desc-feedback_timeseries.tsv"))
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    written = [max(writer.completed[p.name] for p in group) for group in groups]
    figures: dict[str, list[float]] = {"complete": [], "found": [], "sent": []}
    for row in rows[1:]:
        done = written[int(row["volume"])]
        figures["complete"].append((float(row["t_received"]) - done) * 1000.0)
        figures["found"].append((float(row["t_file_complete"]) - done) * 1000.0)
        figures["sent"].append((float(row["t_received"]) - float(row["t_sent"])) * 1000.0)
    return figures


def line(name: str, values: list[float]) -> str:
    return summary(values, digits=1, label=name, width=44)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=60, help="mosaic volumes (default 60)")
    parser.add_argument("--interval", type=float, default=0.25,
                        help="seconds between volumes (default 0.25)")
    parser.add_argument("--poll", type=float, default=0.1,
                        help="polling interval of the polling mode (default 0.1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        series = {"Siemens mosaic 64x64x27": long_mosaic_series(tmp / "mosaic", args.volumes)}
        if GE.exists():
            files = sorted(p for p in GE.iterdir() if p.suffix == ".dcm")
            keys = {p: read_file(p)[0].volume_key for p in files}
            series["GE per-slice 64x64x15 (15 files/volume)"] = groups_by_volume(files, keys)
        if XA30.exists():
            files = sorted(p for p in XA30.iterdir() if p.suffix == ".dcm")
            keys = {p: read_file(p)[0].volume_key for p in files}
            series["Siemens XA30 enhanced 64x64x33"] = groups_by_volume(files, keys)
        intervals = {name: args.interval if "GE" not in name else max(args.interval, 1.0)
                     for name in series}
        for mode, poll in (("inotify", None), (f"polling {args.poll:g} s", args.poll)):
            for name, groups in series.items():
                work = tmp / f"{mode}-{name}".replace(" ", "_").replace("/", "_")
                work.mkdir()
                figures = measure(groups, intervals[name], poll, work)
                print(f"{name}, {mode}:")
                print("  " + line("file complete -> volume at the server", figures["complete"]))
                print("  " + line("file complete -> found complete by watcher", figures["found"]))
                print("  " + line("sent -> received (ZeroMQ, loopback)", figures["sent"]))


if __name__ == "__main__":
    main()
