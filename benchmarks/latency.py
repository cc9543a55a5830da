"""Per-volume latency of a replayed 64x64x36 run: volume received -> feedback published.

Simulates a regulation run (140 volumes, 64x64x36 at 3.5 mm, with motion), replays it as
fast as possible through the real server (ZeroMQ over loopback, recorder thread writing
every output) and prints the median, p95 and p99 of the server's ``latency_ms``, the
replay throughput, and the cost of ``Pipeline.step`` alone.

    python benchmarks/latency.py [--repeats 3] [--shape 64,64,36] [--model FILE]

With ``--model`` (e.g. models/demo_decoder.skops, trained on this benchmark's simulated
subject 01 at the default shape) the server decodes every volume: signal model, decoder and
feedback value are then part of the latency.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from _stats import summary

from rtserver.config import Config
from rtserver.scanner.sources import open_source
from rtserver.service.replay import replay
from rtserver.service.server import Server
from rtserver.service.session import Session
from rtserver.sim import simulate_subject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="replays to pool (default 3)")
    parser.add_argument("--shape", default="64,64,36", help="EPI matrix (default 64,64,36)")
    parser.add_argument("--voxel", type=float, default=3.5, help="voxel size in mm (3.5)")
    parser.add_argument("--model", help="trained decoder (skops) the server decodes with")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subject = simulate_subject(tmp / "bids", "01", "patient", seed=7, shape=shape,
                                   voxel_size=args.voxel)
        run = subject.runs[0]
        config = Config().with_overrides(
            network={"volumes": "tcp://127.0.0.1:*", "feedback": "tcp://127.0.0.1:*",
                     "results": "tcp://127.0.0.1:*"},
            roi={"mask": None if args.model else str(run.rois), "target": "nacc"},
            feedback={"paradigm": "regulation"},
            decoder={"model": args.model},
        )
        source = open_source(run.bold)
        print(f"run: {source.n_volumes} volumes of {shape} at {args.voxel} mm "
              f"({source.path.name})")

        latencies, first, rates = [], [], []
        for repeat in range(args.repeats):
            out = tmp / f"out{repeat}"
            server = Server(config, out)
            start = time.perf_counter()
            replay(source, server, interval=None)
            rates.append(source.n_volumes / (time.perf_counter() - start))
            table = next(out.glob("*_desc-feedback_timeseries.tsv"))
            with table.open(newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
            latencies += [float(row["latency_ms"]) for row in rows[1:]]
            first.append(float(rows[0]["latency_ms"]))

        print(f"received -> published (server, {args.repeats} replays, volume 0 excluded):")
        print(f"  {summary(latencies)}")
        print(f"volume 0 received -> published: {', '.join(f'{v:.1f}' for v in first)} ms "
              f"(TR {source.tr:g} s; the reference is "
              f"{'known at setup' if args.model else 'volume 0 itself'})")
        print(f"replay as fast as possible: {np.median(rates):.0f} volumes/s "
              f"(send, acknowledge, process, publish, record)")

        volumes = list(source)
        session = Session.from_config(config)
        pipeline = session.pipeline()
        pipeline.step(volumes[0])
        steps = []
        for volume in volumes[1:]:
            start = time.perf_counter()
            pipeline.step(volume)
            steps.append((time.perf_counter() - start) * 1000.0)
        motion = session.pipeline()
        motion.step(volumes[0])
        motion_ms = []
        for volume in volumes[1:]:
            start = time.perf_counter()
            motion.motion.partial_fit(volume)
            motion_ms.append((time.perf_counter() - start) * 1000.0)
        print(f"Pipeline.step alone:      {summary(steps)}")
        print(f"motion correction alone:  {summary(motion_ms)}")


if __name__ == "__main__":
    main()
