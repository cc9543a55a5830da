"""Earlier starts of the display for the same run, found in its output folder.

A display killed, crashed or quit during a run and started again with the same output
folder loses nothing it wrote and rejoins the run instead of starting it again. Each start
is an *attempt*, numbered 1, 2, ...; the rule, with one events file per run as BIDS wants:

- ``*_events.tsv`` is never truncated: a new file gets the header, an existing one is
  appended to, and every byte before this attempt's first row stays as it was. Each row
  says which attempt wrote it (the ``attempt`` column, described in ``*_events.json``).
  An attempt sorts its own rows by onset when it ends; rows of an attempt that was killed
  stay in the order they ended.
- ``*_events.json`` is written if it is missing, never replaced.
- The summary of attempt 1 is ``*_desc-display.json``; that of attempt ``k`` is
  ``*_desc-displayAttempt<k>.json``. None is ever replaced.
- The attempt's number is one more than the highest found: in the events file's
  ``attempt`` column, among the summaries, and 1 if the events file exists at all (it is
  created when a run starts, so an attempt killed before its first row ended counts too).
- An events file means an earlier attempt started the run: this attempt *rejoins* it
  (no rating before the run, no wait for the trigger; see :mod:`feedback_display.rejoin`).
  If the latest earlier attempt's summary says the run was complete (``paradigm_end`` or
  ``run_end``), the folder is refused: the run is over and a new run needs a new name.
- An events file whose header is not this display's columns is refused: appending would
  mix two layouts.

:func:`find_attempt` reads the folder (before any window opens); nothing here writes.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from feedback_display.events import EVENTS_COLUMNS
from rtserver.errors import DisplayError

log = logging.getLogger(__name__)

#: How an attempt ends when it showed the whole run (see ``RunResult.ended_by``).
COMPLETE = ("paradigm_end", "run_end")
#: The header line of ``*_events.tsv``.
EVENTS_HEADER = "\t".join(EVENTS_COLUMNS) + "\n"
_NUMBERED_SUMMARY = re.compile(r"_desc-displayAttempt(?P<attempt>[0-9]+)\.json$")


@dataclass(frozen=True)
class RunFiles:
    """The names of a run's display outputs in ``out``.

    Parameters
    ----------
    out : Path
        The output folder.
    prefix : str
        ``sub-<subject>_task-<task>_run-<run>`` (:func:`rtserver.bids.prefix`).
    """

    out: Path
    prefix: str

    @property
    def events(self) -> Path:
        """``<prefix>_events.tsv``."""
        return self.out / f"{self.prefix}_events.tsv"

    @property
    def sidecar(self) -> Path:
        """``<prefix>_events.json``."""
        return self.out / f"{self.prefix}_events.json"

    def summary(self, attempt: int) -> Path:
        """The summary of attempt ``attempt``: ``_desc-display.json``, then numbered."""
        desc = "display" if attempt == 1 else f"displayAttempt{attempt}"
        return self.out / f"{self.prefix}_desc-{desc}.json"

    def summaries(self) -> dict[int, Path]:
        """The summaries in the folder, by attempt number."""
        found = {1: self.summary(1)} if self.summary(1).exists() else {}
        for path in self.out.glob(f"{self.prefix}_desc-displayAttempt*.json"):
            match = _NUMBERED_SUMMARY.search(path.name)
            if match is not None:
                found[int(match.group("attempt"))] = path
        return found


@dataclass(frozen=True)
class Attempt:
    """One start of the display, among the earlier ones for the same run.

    Attributes
    ----------
    number : int
        1 for the first start, then 2, 3, ...
    run_started : bool
        True if an earlier attempt started the run (its events file exists): this one
        rejoins it.
    previous_ended_by : str or None
        How the latest earlier attempt ended, from its summary; None without one (a display
        that was killed writes none).
    """

    number: int = 1
    run_started: bool = False
    previous_ended_by: str | None = None

    @property
    def rejoins(self) -> bool:
        """True if this attempt joins a run an earlier one started."""
        return self.run_started


def events_attempts(path: Path) -> list[int]:
    """The ``attempt`` of every complete row of an events file written by this display.

    Raises
    ------
    DisplayError
        If the file's header is not this display's columns.
    """
    with path.open(encoding="utf-8", newline="") as handle:
        header = handle.readline()
        if not header:  # created by a display killed before it wrote the header
            return []
        if header != EVENTS_HEADER:
            raise DisplayError(
                f"{path} exists with other columns; nothing was written. Expected "
                f"{EVENTS_HEADER.strip()!r}. Got {header.strip()!r}.")
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [int(row[-1]) for row in rows
                if len(row) == len(EVENTS_COLUMNS) and row[-1].isdigit()]


def summary_ended_by(path: Path) -> str | None:
    """``ended_by`` of a summary file; None if it cannot be read."""
    try:
        ended_by = json.loads(path.read_text(encoding="utf-8")).get("ended_by")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("cannot read %s (%s); taken as an attempt that did not finish the run",
                    path, exc)
        return None
    return ended_by if isinstance(ended_by, str) else None


def find_attempt(files: RunFiles | None) -> Attempt:
    """The number of the attempt starting now, and whether it rejoins a run going on.

    Parameters
    ----------
    files : RunFiles or None
        The run's outputs (the folder need not exist); None when nothing is written.

    Returns
    -------
    Attempt
        Number 1 without earlier outputs (or without ``files``).

    Raises
    ------
    DisplayError
        If the events file has other columns, or the latest earlier attempt completed the
        run.
    """
    if files is None:
        return Attempt()
    run_started = files.events.exists()
    numbers = events_attempts(files.events) if run_started else []
    if run_started:
        numbers.append(1)
    summaries = files.summaries() if files.out.is_dir() else {}
    numbers += list(summaries)
    previous = max(numbers, default=0)
    ended_by = summary_ended_by(summaries[previous]) if previous in summaries else None
    if run_started and ended_by in COMPLETE:
        raise DisplayError(
            f"The run in {files.events} is complete (attempt {previous} ended by "
            f"{ended_by}); nothing was written. Expected a run still going or no events "
            f"file: give a new run another run number or output folder.")
    if previous:
        log.info("attempt %d at this run (%s)", previous + 1,
                 "rejoining it" if run_started else "the run has not started")
    return Attempt(number=previous + 1, run_started=run_started, previous_ended_by=ended_by)
