"""What the display writes: BIDS events, its frame-timing sidecar, and screenshots.

All file writing happens on one background thread (:class:`BackgroundWriter`), never on the
drawing thread: a PNG takes tens of milliseconds to encode, longer than a frame.

The rows of ``*_events.tsv`` and its columns are defined in :mod:`feedback_display.events`;
:class:`EventsLog` appends (and flushes) each row as it ends, so a crash keeps what was
shown, and at the end of the run rewrites the file sorted by onset.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from feedback_display.events import EVENTS_COLUMNS, row_cells, sort_key
from rtserver.errors import DisplayError

log = logging.getLogger(__name__)


def screenshot_stem(volume: int) -> str:
    """Screenshot of a volume's feedback, without the suffix: ``volume-0005``."""
    return f"volume-{volume:04d}"


def screenshot_name(volume: int) -> str:
    """File name of the screenshot of a volume's feedback: ``volume-0005.png``."""
    return f"{screenshot_stem(volume)}.png"


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


def make_folders(*folders: str | os.PathLike | None) -> None:
    """Create the output folders given (None: not asked for).

    Raises
    ------
    DisplayError
        If a folder cannot be created.
    """
    for folder in folders:
        if folder is None:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DisplayError(f"Cannot create folder {folder}: {exc.strerror}.") from None


def save_png(path: Path, image: Any) -> None:
    """Write a PIL image as PNG, atomically (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".part")
    image.save(partial, format="PNG")
    os.replace(partial, path)


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
        cells = row_cells(row)
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
        body.sort(key=sort_key)
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
