"""Shared fixtures: tiny synthetic images (built here) and real scanner files (tests/data)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rtserver.volume import Volume

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
SIEMENS_MOSAIC = DATA / "siemens_mosaic_skyra_10vol"
SIEMENS_NIFTI = DATA / "nifti" / "siemens_skyra_rtcloud_facematching_10vol.nii.gz"
TRUNCATED_DICOM = DATA / "siemens_mosaic_skyra_10vol_truncated_001_000013_000005.dcm"
SHARED_DATA = TESTS.parent.parent / "shared" / "data"
BIN = Path(sys.executable).parent

#: A 28 s run: fixation, a drug-cue block, fixation, a food-savoring block, fixation.
TINY_PARADIGM = """
name = "tiny"
task = "tiny"
tr = 2.0

[[blocks]]
condition = "fixation"
duration = 4.0

[[blocks]]
condition = "look"
cue = "drug"
duration = 8.0

[[blocks]]
condition = "fixation"
duration = 4.0

[[blocks]]
condition = "savor"
cue = "food"
duration = 8.0

[[blocks]]
condition = "fixation"
duration = 4.0
"""


def command(name: str) -> str:
    """Path of one of this project's console scripts in the running environment."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} is not installed in {BIN}; run `make test`.")
    return str(path)


@pytest.fixture
def blob_volume() -> Volume:
    """A smooth, head-sized 32x32x20 blob at 3 mm, with structure to register on."""
    rng = np.random.default_rng(42)
    shape = (32, 32, 20)
    grid = np.indices(shape).astype(np.float64)
    centre = (np.array(shape) - 1) / 2
    radius = np.sqrt((((grid.T - centre) / (np.array(shape) / 2.6)) ** 2).sum(-1)).T
    image = 1000.0 * (radius < 1.0) + 300.0 * ndimage.gaussian_filter(
        rng.normal(size=shape), 1.5) * (radius < 1.0)
    image = ndimage.gaussian_filter(image, 0.8)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -np.array(shape) * 1.5
    return Volume(image.astype(np.float32), affine, index=0, tr=2.0)


class RunningProcess:
    """A started CLI process whose stderr is read line by line until a pattern appears.

    stderr is read from the raw file descriptor into our own buffer: a buffered
    ``readline`` after ``select`` could swallow several lines, and ``select`` would then
    wait for data that was already read.
    """

    def __init__(self, args: list[str], **kwargs) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, **kwargs)
        self.stderr_lines: list[str] = []
        self._partial = b""

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        """Read stderr until a line matches ``pattern`` (fails on exit or timeout)."""
        regex = re.compile(pattern)
        checked = 0
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while True:
            for line in self.stderr_lines[checked:]:
                checked += 1
                match = regex.search(line)
                if match:
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            self.stderr_lines += [line.decode(errors="replace") + "\n" for line in lines]
        self.kill()
        pytest.fail(f"{self.args[0]} never printed {pattern!r}; stderr:\n"
                    + "".join(self.stderr_lines))

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        """Wait for exit; return the exit code and all of stderr."""
        try:
            _, rest = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.args[0]} did not exit within {timeout} s; stderr:\n"
                        + "".join(self.stderr_lines))
        tail = (self._partial + rest).decode(errors="replace")
        return self.proc.returncode, "".join(self.stderr_lines) + tail

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def processes():
    """Start CLI processes; every one still running at the end of the test is killed."""
    started: list[RunningProcess] = []

    def start(args: list[str], **kwargs) -> RunningProcess:
        process = RunningProcess(args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def served(tmp_path, blob_volume):
    """A real server on loopback ports, with a DEALER to send it crafted messages."""
    import zmq

    from .hostile_helpers import Harness

    context = zmq.Context()
    harness = Harness(tmp_path / "out", context, blob_volume)
    yield harness
    harness.close()
    context.term()


@pytest.fixture(scope="module")
def tiny_paradigm(tmp_path_factory) -> Path:
    """:data:`TINY_PARADIGM` as a file."""
    path = tmp_path_factory.mktemp("paradigm") / "tiny.toml"
    path.write_text(TINY_PARADIGM, encoding="utf-8")
    return path


def wait_for_file(path: Path, condition, timeout: float = 60.0, alive=None) -> None:
    """Wait until ``condition(path)`` holds, woken by file-system events (watchdog).

    The condition is checked now and at every change in the file's folder; ``alive()``
    (optional) is checked too, so a process that died fails the wait at once.
    """
    import threading

    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    changed = threading.Event()

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            changed.set()

    path.parent.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    observer.schedule(Wake(), str(path.parent))
    observer.start()
    try:
        deadline = time.monotonic() + timeout
        while not condition(path):
            if alive is not None:
                assert alive(), f"the process writing {path.name} has stopped"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{path} did not reach the awaited state within {timeout} s")
            changed.wait(min(remaining, 1.0))  # a periodic recheck guards a missed event
            changed.clear()
    finally:
        observer.stop()
        observer.join()
