"""What the display writes: BIDS events, its frame-timing sidecar, and screenshots.

All file writing happens on one background thread (:class:`BackgroundWriter`), never on the
drawing thread: a PNG takes tens of milliseconds to encode, longer than a frame.

``*_events.tsv`` (BIDS) has one row per thing shown: each block (its instruction is on screen
for the whole block), each cue picture, each feedback value, each period without feedback,
each intermittent result and each rating. ``*_events.json`` describes its columns
(:data:`EVENTS_COLUMN_DESCRIPTIONS`):

============= ============================================================================
onset         seconds from the run start (the trigger, or the server's first volume) to the
              flip of the first frame that showed the row; negative for the rating before
              the run.
duration      seconds until the flip that removed it.
trial_type    the block's ``trial_type`` (``fixation``, ``look_drug``, ``reappraise_drug``,
              ...), ``cue_drug`` / ``cue_food`` / ``cue_neutral`` for a picture,
              ``feedback``, ``feedback_unavailable`` (bar at rest, no feedback from the
              server), ``feedback_intermittent``, ``rating_before``, ``rating_after``,
              ``rating`` (a rating block in the run).
block         1-based number of the paradigm block.
frame         frame count since the run start at which the row was first shown.
volume        the 0-based volume whose feedback is shown (intermittent: ``first-last``).
value         the feedback value in [0, 1] (intermittent: the block's mean).
censored      1 if the value was censored for motion, else 0.
stim_file     the cue picture, relative to the picture folder.
response      the rating (0-100) once confirmed; ``n/a`` without a response.
response_time seconds from the rating scale's onset to the confirming key press.
instruction   the block's instruction text (block rows).
============= ============================================================================

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

EVENTS_COLUMNS = ("onset", "duration", "trial_type", "block", "frame", "volume", "value",
                  "censored", "stim_file", "response", "response_time", "instruction")

EVENTS_COLUMN_DESCRIPTIONS = {
    "onset": "Seconds from the run start (the scanner trigger, or the arrival of the server's "
             "first feedback event minus its volume index times the TR) to the flip of the "
             "first frame that showed this row. Negative for the rating before the run.",
    "duration": "Seconds from the row's first frame to the flip that removed it.",
    "trial_type": "The paradigm block's trial_type; cue_<category> for a cue picture; "
                  "feedback (a value shown by the thermometer), feedback_unavailable (no "
                  "feedback from the server: the bar rests at baseline in a neutral colour), "
                  "feedback_intermittent (a block's mean shown after it); rating_before, "
                  "rating_after (craving scale outside the scanned run), rating (a rating "
                  "block of the run).",
    "block": "1-based number of the paradigm block the row belongs to.",
    "frame": "Frame count since the run start at which the row was first shown.",
    "volume": "0-based volume index whose feedback is shown (intermittent rows: first-last "
              "volume of the block).",
    "value": "Feedback value in [0, 1] shown by the thermometer (0.5 is baseline); for "
             "intermittent rows the mean of the block's uncensored values.",
    "censored": "1 if the value was censored for motion (grey bar, 'Hold still').",
    "stim_file": "Cue picture shown, relative to the picture folder.",
    "response": "Rating on the 0-100 visual analogue scale, once confirmed; n/a without a "
                "confirmed response.",
    "response_time": "Seconds from the rating scale's first frame to the confirming key "
                     "press.",
    "instruction": "Instruction text shown during the block.",
}


def events_sidecar() -> dict[str, dict[str, str]]:
    """The BIDS ``*_events.json`` sidecar: a description (and units) of every column."""
    units = {"onset": "s", "duration": "s", "response_time": "s"}
    return {column: {"Description": text, **({"Units": units[column]} if column in units
                                              else {})}
            for column, text in EVENTS_COLUMN_DESCRIPTIONS.items()}


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
        kind = {name: order for order, name in enumerate(("cue", "feedback", "rating"))}

        def order(cells: list[str]) -> tuple[float, int]:
            prefix = cells[2].split("_")[0]
            return float(cells[0]), kind.get(prefix, -1)

        body.sort(key=order)
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
