"""Time ``rtserver.scanner.readers.read_file`` per file, for each kind of scanner file there is data for.

Every file under ../shared/data/dicom (when present) and tests/data is read once to warm up
and to learn its kind (files that are foreign or incomplete are left out); then each kind's
files are read ``--repeats`` times over, and each file's best time is kept. Printed per kind
(and per folder within it): the number of files and the median and maximum of those best
times, in ms per file. Kinds without data (e.g. non-Siemens enhanced DICOM) are skipped.

    python benchmarks/readers.py [--repeats 5]

Budget (issue 3): the whole "file complete -> volume at the server" median is 20 ms.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from rtserver.errors import InputError
from rtserver.scanner.readers import KINDS, read_file

ROOT = Path(__file__).resolve().parents[1]
#: Where the data is, by the short name printed before its folders.
FOLDERS = {"shared": ROOT.parent / "shared" / "data" / "dicom", "tests": ROOT / "tests" / "data"}
NAME_WIDTH = 58


def files_by_kind(folders: list[Path]) -> dict[str, list[Path]]:
    """Every readable file under ``folders``, by the kind of its first piece (reading each once)."""
    found: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(path for path in folder.rglob("*") if path.is_file()):
            try:
                pieces = read_file(path)
            except InputError:  # foreign, incomplete or broken: not what is timed here
                continue
            found[pieces[0].kind].append(path)
    return found


def best_times(paths: list[Path], repeats: int) -> np.ndarray:
    """Each file's fastest ``read_file`` over ``repeats`` passes through all of them (ms)."""
    best = np.full(len(paths), np.inf)
    for _ in range(repeats):
        for index, path in enumerate(paths):
            start = time.perf_counter()
            read_file(path)
            best[index] = min(best[index], time.perf_counter() - start)
    return best * 1000.0


def folder_name(folder: Path) -> str:
    """A folder's path below the data folder that holds it (its end, if too long)."""
    for label, root in FOLDERS.items():
        if folder.is_relative_to(root):
            name = f"{label}/{folder.relative_to(root)}".rstrip("/.")
            return name if len(name) <= NAME_WIDTH - 2 else "..." + name[-(NAME_WIDTH - 5):]
    return folder.name


def line(name: str, times: np.ndarray, width: int = NAME_WIDTH) -> str:
    return (f"{name:<{width}s} {len(times):5d} files   median {np.median(times):7.2f} ms   "
            f"max {times.max():7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="passes over the files (default 5)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats should be at least 1. Got {args.repeats}.")
    found = files_by_kind(list(FOLDERS.values()))
    print(f"read_file, best of {args.repeats} passes, ms per file")
    for kind in KINDS:
        paths = found.get(kind)
        if not paths:
            print(f"{kind:<{NAME_WIDTH}s} no data: skipped")
            continue
        times = best_times(paths, args.repeats)
        print(line(kind, times))
        folders = sorted({path.parent for path in paths})
        if len(folders) > 1:
            for folder in folders:
                mask = np.array([path.parent == folder for path in paths])
                print("  " + line(folder_name(folder), times[mask], NAME_WIDTH - 2))


if __name__ == "__main__":
    main()
