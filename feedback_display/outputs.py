"""What the display writes: BIDS events, its frame-timing sidecar, and screenshots.

All file writing happens on one background thread (:class:`BackgroundWriter`), never on the
drawing thread: a PNG takes tens of milliseconds to encode, longer than a frame.

``*_events.tsv`` (BIDS) has one row per block shown and one per feedback value shown:

=========== ===============================================================================
onset       seconds from the run start: the arrival of the first feedback event at the
            display. Each row's onset is the time of the first frame (flip) that showed it.
duration    seconds until the next row of the same kind was shown (or the run ended).
trial_type  the block's ``trial_type`` (``fixation``, ``look_drug``, ``reappraise_drug``...)
            or ``feedback`` for a feedback value.
volume      the 0-based volume index (for a block row: of the first event shown in it).
value       the feedback value (``n/a`` for block rows).
censored    1 if the value was censored for motion, else 0 (``n/a`` for block rows).
instruction the block's instruction text (block rows), ``n/a`` otherwise.
=========== ===============================================================================

Rows are appended (and flushed) as each one ends, so a crash keeps what was shown; at the
end of the run the file is rewritten sorted by onset.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVENTS_COLUMNS = ("onset", "duration", "trial_type", "volume", "value", "censored",
                  "instruction")

EVENTS_COLUMN_DESCRIPTIONS = {
    "onset": "Seconds from the run start (arrival of the first feedback event at the "
             "display) to the first frame that showed this row.",
    "duration": "Seconds until the next row of the same kind was shown, or the run ended.",
    "trial_type": "The paradigm block's trial_type, or 'feedback' for a feedback value.",
    "volume": "0-based volume index (block rows: the first volume shown in the block).",
    "value": "Feedback value in [0, 1] shown by the thermometer (0.5 is baseline).",
    "censored": "1 if the value was censored for motion (grey bar, 'Hold still').",
    "instruction": "Instruction text shown during the block.",
}

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def check_label(name: str, value: str) -> str:
    """Return ``value`` if it is a BIDS label (letters and digits only); else raise."""
    if not _LABEL.match(value):
        raise ValueError(f"--{name} should be letters and digits only (a BIDS label). "
                         f"Got {value!r}.")
    return value


def bids_prefix(subject: str, task: str, run: int) -> str:
    """``sub-<subject>_task-<task>_run-<run>``, the start of every file name of a run."""
    return f"sub-{subject}_task-{task}_run-{run}"


def screenshot_name(volume: int) -> str:
    """File name of the screenshot of a volume's feedback: ``volume-0005.png``."""
    return f"volume-{volume:04d}.png"


class BackgroundWriter:
    """One thread that runs file-writing jobs in the order they were submitted.

    Failures are logged, counted in :attr:`n_failed`, and do not stop later jobs.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="display-writer")
        self.n_failed = 0

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Queue ``job(*args)`` to run on the writer thread."""
        self._executor.submit(job, *args).add_done_callback(self._check)

    def _check(self, future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            self.n_failed += 1
            log.error("could not write a display output: %s", exc)

    def close(self) -> None:
        """Wait for every queued job to finish."""
        self._executor.shutdown(wait=True)


def save_png(path: Path, image: Any) -> None:
    """Write a PIL image as PNG, atomically (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".part")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\t", " ").replace("\n", " ")


class EventsLog:
    """The run's BIDS ``*_events.tsv``, written on the background writer.

    Parameters
    ----------
    path : Path
        The ``.tsv`` file to write (its folder must exist).
    writer : BackgroundWriter
        Thread that does the file I/O.
    """

    def __init__(self, path: Path, writer: BackgroundWriter) -> None:
        self.path = path
        self._writer = writer
        self.n_rows = 0
        writer.submit(self._write_header)

    def add(self, row: dict[str, Any]) -> None:
        """Append one finished row (keys from :data:`EVENTS_COLUMNS`; missing ones are n/a)."""
        cells = [_cell(row.get(column)) for column in EVENTS_COLUMNS]
        self.n_rows += 1
        self._writer.submit(self._append, cells)

    def finish(self) -> None:
        """Rewrite the file sorted by onset (queued after every appended row)."""
        self._writer.submit(self._sort)

    def _write_header(self) -> None:
        with self.path.open("w", encoding="utf-8", newline="") as handle:
            handle.write("\t".join(EVENTS_COLUMNS) + "\n")

    def _append(self, cells: list[str]) -> None:
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            handle.write("\t".join(cells) + "\n")

    def _sort(self) -> None:
        with self.path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        header, body = rows[0], rows[1:]
        body.sort(key=lambda cells: (float(cells[0]), cells[2] == "feedback"))
        partial = self.path.with_name(self.path.name + ".part")
        with partial.open("w", encoding="utf-8", newline="") as handle:
            for cells in [header, *body]:
                handle.write("\t".join(cells) + "\n")
        os.replace(partial, self.path)


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON, atomically."""
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
