"""How long the simulator takes to write one 200-volume run (64x64x36, 3.5 mm, with motion).

Run: ``PYTHONPATH=. python benchmarks/simulate.py``. Prints the median of a few runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from rtserver.paradigm import Paradigm
from rtserver.sim import simulate_subject

N_VOLUMES = 200
REPEATS = 3


def two_hundred_volume_paradigm(folder: str) -> Paradigm:
    """The regulation paradigm's blocks repeated and cut to 200 volumes (400 s at TR 2)."""
    base = Paradigm.from_file("regulation")
    text = [f'name = "bench"\ntask = "bench"\ntr = {base.tr}\n']
    total = 0.0
    while total < N_VOLUMES * base.tr:
        for event in base.events():
            duration = min(event["duration"], N_VOLUMES * base.tr - total)
            if duration <= 0:
                break
            condition, _, cue = event["trial_type"].partition("_")
            block = f'\n[[blocks]]\ncondition = "{condition}"\nduration = {duration}\n'
            if cue:
                block += f'cue = "{cue}"\n'
            text.append(block)
            total += duration
    path = Path(folder) / "bench.toml"
    path.write_text("".join(text), encoding="utf-8")
    return Paradigm.from_file(path)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paradigm = two_hundred_volume_paradigm(folder)
    timings = []
    for repeat in range(REPEATS):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            simulate_subject(out, "B01", "patient", repeat, paradigm=paradigm)
            timings.append(time.perf_counter() - start)
    print(f"simulate_subject, 1 run of {paradigm.n_volumes} volumes, 64x64x36 at 3.5 mm: "
          f"median {statistics.median(timings):.2f} s over {REPEATS} "
          f"(min {min(timings):.2f} s, max {max(timings):.2f} s)")


if __name__ == "__main__":
    main()
