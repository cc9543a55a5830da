"""Write a recorded series into a folder the way a scanner's real-time export does.

Used to test a watched folder without a scanner (``tests/``, ``benchmarks/``): files appear
one by one at the acquisition pace, some written in several pieces, one cut short and
completed later, slices out of order within a volume, foreign files in between. The
writer records when each file was complete, so a latency can be measured from there.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportPlan:
    """How to write the files.

    Attributes
    ----------
    groups : list of list of Path
        The source files of each volume, in acquisition order (one file for whole-volume
        formats, one per slice otherwise).
    interval : float
        Seconds between the starts of consecutive volumes (the TR, or less to go faster).
    shuffle_slices : bool
        Write each volume's files in a random order.
    in_pieces : set of int
        Volumes whose files are written in three pieces, flushed, with pauses between.
    late : dict of int to int
        ``{volume: k}``: that volume's first file is written cut short (at ``cut`` bytes)
        and completed only after volume ``volume + k`` has been written.
    skip : set of int
        Volumes never written (a lost file).
    foreign : dict of int to Path
        ``{volume: file}``: copy ``file`` into the folder before that volume.
    cut : int or None
        Size of the cut-short first part; ``None`` cuts at 60 %.
    seed : int
        For the slice order.
    """

    groups: list[list[Path]]
    interval: float = 0.1
    shuffle_slices: bool = False
    in_pieces: set[int] = field(default_factory=set)
    late: dict[int, int] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    foreign: dict[int, Path] = field(default_factory=dict)
    cut: int | None = None
    seed: int = 0


class ExportWriter:
    """Write an :class:`ExportPlan` into ``folder`` from a background thread.

    Attributes
    ----------
    completed : dict of str to float
        Each written file's name and the Unix time at which it was complete.
    """

    def __init__(self, plan: ExportPlan, folder: str | Path) -> None:
        self.plan = plan
        self.folder = Path(folder)
        self.completed: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="export-writer", daemon=True)

    def start(self) -> ExportWriter:
        """Begin writing."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> ExportWriter:
        """Wait until every file is written; re-raise the writer's error."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        """Stop early."""
        self._stop.set()

    def _main(self) -> None:
        try:
            self._write_all()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def _write_all(self) -> None:
        plan = self.plan
        rng = random.Random(plan.seed)
        unfinished: dict[int, tuple[Path, bytes, int]] = {}  # finish after volume -> file
        start = time.monotonic()
        for volume, files in enumerate(plan.groups):
            self._pace(start + volume * plan.interval)
            if self._stop.is_set():
                return
            if volume in plan.foreign:
                source = plan.foreign[volume]
                self._write(self.folder / source.name, source.read_bytes())
            if volume not in plan.skip:
                order = list(files)
                if plan.shuffle_slices:
                    rng.shuffle(order)
                for number, source in enumerate(order):
                    content = source.read_bytes()
                    target = self.folder / source.name
                    if number == 0 and volume in plan.late:
                        cut = plan.cut if plan.cut is not None else int(len(content) * 0.6)
                        self._write(target, content[:cut], record=False)
                        unfinished[volume + plan.late[volume]] = (target, content, cut)
                    elif volume in plan.in_pieces:
                        self._write_in_pieces(target, content)
                    else:
                        self._write(target, content)
            if volume in unfinished:
                target, content, cut = unfinished.pop(volume)
                with target.open("ab") as handle:
                    handle.write(content[cut:])
                self.completed[target.name] = time.time()
        for target, content, cut in unfinished.values():
            with target.open("ab") as handle:
                handle.write(content[cut:])
            self.completed[target.name] = time.time()

    def _pace(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)

    def _write(self, target: Path, content: bytes, record: bool = True) -> None:
        with target.open("wb") as handle:
            handle.write(content)
        if record:
            self.completed[target.name] = time.time()

    def _write_in_pieces(self, target: Path, content: bytes) -> None:
        pieces = [content[: len(content) // 3], content[len(content) // 3: 2 * len(content) // 3],
                  content[2 * len(content) // 3:]]
        with target.open("wb") as handle:
            for number, piece in enumerate(pieces):
                handle.write(piece)
                handle.flush()
                os.fsync(handle.fileno())
                if number < len(pieces) - 1:
                    self._stop.wait(0.06)  # longer than the watcher's settling time
        self.completed[target.name] = time.time()


def groups_by_volume(files: Sequence[Path], volume_of: dict[Path, int]) -> list[list[Path]]:
    """Files grouped per volume, volumes in ascending order."""
    groups: dict[int, list[Path]] = {}
    for path in files:
        groups.setdefault(volume_of[path], []).append(path)
    return [groups[key] for key in sorted(groups)]
