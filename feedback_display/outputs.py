"""What the display writes: BIDS events, its frame-timing sidecar, and screenshots.

All file writing happens on one background thread (:class:`BackgroundWriter`), never on the
drawing thread: a PNG takes tens of milliseconds to encode, longer than a frame.

The rows of ``*_events.tsv`` and its columns are defined in :mod:`feedback_display.events`;
:class:`EventsLog` appends (and flushes) each row as it ends, so a crash keeps what was
shown, and at the end of the run sorts the rows it wrote by onset. Nothing an earlier
attempt at the run wrote is ever truncated or replaced (:mod:`feedback_display.attempts`):
the events file is appended to, and the JSON files are created with
:func:`write_new_json`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from feedback_display.attempts import RunFiles
from feedback_display.events import EVENTS_COLUMNS, events_sidecar, row_cells, sort_key
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
    """The run's BIDS ``*_events.tsv``, written on the background writer; never truncated.

    A new file gets the header. An existing one (written by an earlier attempt at the run,
    see :mod:`feedback_display.attempts`) is appended to: every byte already in it stays as
    it is (a last line cut short by a crash is ended with a newline first, and logged).
    Rows are appended (and flushed) as they end, so a crash keeps them; :meth:`finish`
    sorts this attempt's rows by onset and leaves the rows before them untouched.

    Parameters
    ----------
    path : Path
        The ``.tsv`` file to write (its folder must exist).
    writer : BackgroundWriter
        Thread that does the file I/O.
    attempt : int
        The ``attempt`` column of every row this log writes.

    Attributes
    ----------
    start_offset : int or None
        The byte at which this attempt's rows start, once the file is open.
    """

    def __init__(self, path: Path, writer: BackgroundWriter, attempt: int = 1) -> None:
        self.path = path
        self.attempt = attempt
        self._writer = writer
        self.n_rows = 0
        self.start_offset: int | None = None
        writer.submit(self._open)

    def add(self, row: dict[str, Any]) -> None:
        """Append one finished row (keys from :data:`EVENTS_COLUMNS`; missing ones are n/a)."""
        cells = row_cells({**row, "attempt": self.attempt})
        self.n_rows += 1
        self._writer.submit(self._append, cells)

    def finish(self) -> None:
        """Sort this attempt's rows by onset (queued after every appended row)."""
        self._writer.submit(self._sort)

    def _open(self) -> None:
        """Create the file with its header, or find where this attempt's rows start."""
        header = "\t".join(EVENTS_COLUMNS) + "\n"
        try:
            with self.path.open("x", encoding="utf-8", newline="") as handle:
                handle.write(header)
            self.start_offset = len(header.encode("utf-8"))
            return
        except FileExistsError:
            pass
        with self.path.open("rb+") as handle:
            first = handle.readline()
            if not first:  # created by a display killed before it wrote the header
                handle.write(header.encode("utf-8"))
                first = header.encode("utf-8")
            if first != header.encode("utf-8"):
                raise DisplayError(f"{self.path} exists with other columns; no row is "
                                   f"appended to it. Expected {header.strip()!r}. "
                                   f"Got {first.decode(errors='replace').strip()!r}.")
            end = handle.seek(0, os.SEEK_END)
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                log.warning("%s ended in the middle of a row (a crash while writing it?); "
                            "that row is ended as it is", self.path)
                handle.write(b"\n")
                end += 1
        self.start_offset = end
        log.info("appending attempt %d's rows to %s after its first %d bytes", self.attempt,
                 self.path, end)

    def _append(self, cells: list[str]) -> None:
        if self.start_offset is None:
            return  # the file could not be opened: that error was logged once
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            handle.write("\t".join(cells) + "\n")

    def _sort(self) -> None:
        if self.start_offset is None:
            return
        data = self.path.read_bytes()
        before, lines = data[:self.start_offset], data[self.start_offset:].split(b"\n")
        rows = [line.decode("utf-8").split("\t") for line in lines if line]
        rows.sort(key=sort_key)
        partial = self.path.with_name(self.path.name + ".part")
        with partial.open("wb") as handle:
            handle.write(before)
            for cells in rows:
                handle.write(("\t".join(cells) + "\n").encode("utf-8"))
        os.replace(partial, self.path)


def write_new_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON to a new file, atomically; never replace one.

    Raises
    ------
    DisplayError
        If ``path`` exists with other contents (it is left as it is). The same contents
        are not an error: nothing is written.
    """
    text = json.dumps(content, indent=2, allow_nan=False) + "\n"
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    try:
        os.link(partial, path)  # fails if path exists: an atomic "create, never replace"
    except FileExistsError:
        if path.read_text(encoding="utf-8") != text:
            raise DisplayError(f"{path} exists with other contents; it was left as it is "
                               f"and these were not written.") from None
    except OSError:  # a file system without hard links: create it exclusively instead
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    finally:
        partial.unlink(missing_ok=True)


class RunOutputs:
    """Everything one attempt at a run writes, on one background writer thread.

    The events rows (from the run's start), screenshots, and at the end ``*_events.json``
    and the attempt's summary, as new files: nothing an earlier attempt wrote is replaced.

    Parameters
    ----------
    files : RunFiles or None
        The run's output names; None: no events or summary are written.
    attempt : int
        This attempt's number (the rows' ``attempt``, the summary's name).
    screenshots : Path or None
        Folder of the screenshots; None: none are taken.

    Attributes
    ----------
    n_screenshots : int
        Screenshots queued for writing.
    """

    def __init__(self, files: RunFiles | None, attempt: int = 1,
                 screenshots: Path | None = None) -> None:
        self.files = files
        self.attempt = attempt
        self.screenshots = screenshots
        self.writer = BackgroundWriter()
        self.events: EventsLog | None = None
        self.n_screenshots = 0

    def start_events(self) -> None:
        """The run started: open the events file (with ``files``)."""
        if self.files is not None:
            self.events = EventsLog(self.files.events, self.writer, self.attempt)

    def add(self, row: dict[str, Any]) -> None:
        """Write a finished events row (once the events file is open)."""
        if self.events is not None:
            self.events.add(row)

    def screenshot(self, names: list[str], image: Any) -> None:
        """Write ``image`` as ``<name>.png`` for each name, in the screenshot folder."""
        for name in names:
            self.writer.submit(save_png, Path(self.screenshots) / f"{name}.png", image)
            self.n_screenshots += 1

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Sort the events, write the sidecar and ``summary``; wait until all is written."""
        if self.files is not None and summary is not None:
            if self.events is not None:
                self.events.finish()
                self.writer.submit(write_new_json, self.files.sidecar, events_sidecar())
            self.writer.submit(write_new_json, self.files.summary(self.attempt), summary)
        self.writer.close()
        if self.writer.n_failed:
            log.error("%d display outputs could not be written", self.writer.n_failed)
