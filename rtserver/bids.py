"""BIDS names and files: every entity string this project builds or parses, in one place.

A run's files start with ``sub-<label>[_ses-<label>]_task-<label>_run-<index>``; raw data go
to ``sub-<label>/[ses-<label>/]func/``, derivatives to ``derivatives/<pipeline>/`` with the
same layout. Labels are alphanumeric (BIDS forbids ``_`` and ``-`` inside them).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from rtserver.errors import InputError

#: The BIDS specification version of the datasets this project writes.
BIDS_VERSION = "1.9.0"

_LABEL = re.compile(r"[A-Za-z0-9]+")
_ENTITIES = re.compile(r"sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?"
                       r"_task-(?P<task>[A-Za-z0-9]+)(?:_acq-[A-Za-z0-9]+)?(?:_run-(?P<run>\d+))?")
_BOLD = re.compile(r"_bold\.nii(\.gz)?$")


def label(value: object, entity: str = "sub") -> str:
    """A BIDS label: alphanumeric, any leading ``<entity>-`` dropped.

    Raises
    ------
    InputError
        If the value is not alphanumeric (BIDS allows nothing else).
    """
    text = str(value).removeprefix(f"{entity}-")
    if not _LABEL.fullmatch(text):
        raise InputError(f"A BIDS {entity} label should be letters and digits only. "
                         f"Got {value!r}.")
    return text


def participant_id(subject: str) -> str:
    """The ``participant_id`` of a subject label: ``sub-<label>``."""
    return f"sub-{label(subject)}"


@dataclass(frozen=True)
class RunEntities:
    """The entities that name one run: ``sub-<subject>[_ses-<session>]_task-<task>_run-<run>``."""

    subject: str
    task: str
    run: int = 1
    session: str | None = None

    @property
    def prefix(self) -> str:
        """The start of every file name of the run."""
        session = f"_ses-{self.session}" if self.session else ""
        return f"sub-{self.subject}{session}_task-{self.task}_run-{self.run}"

    def folder(self, root: str | Path, datatype: str = "func") -> Path:
        """``root/sub-<subject>[/ses-<session>]/<datatype>``."""
        path = Path(root) / f"sub-{self.subject}"
        if self.session:
            path = path / f"ses-{self.session}"
        return path / datatype

    def path(self, root: str | Path, suffix: str, datatype: str = "func") -> Path:
        """A file of the run, e.g. ``suffix="bold.nii.gz"`` or ``"desc-truth.json"``."""
        return self.folder(root, datatype) / f"{self.prefix}_{suffix}"


def prefix(subject: str, task: str, run: int, session: str | None = None) -> str:
    """``sub-<subject>[_ses-<session>]_task-<task>_run-<run>``."""
    return RunEntities(subject=subject, task=task, run=run, session=session).prefix


def parse_entities(name: str) -> RunEntities | None:
    """The run entities in a file name (``sub-X_task-Y_run-Z_bold...``), or ``None``."""
    match = _ENTITIES.search(name)
    if match is None:
        return None
    run = match.group("run")
    return RunEntities(subject=match.group("subject"), task=match.group("task"),
                       run=int(run) if run else 1, session=match.group("session"))


def is_bold(path: str | Path) -> bool:
    """True for a ``*_bold.nii`` or ``*_bold.nii.gz`` file name."""
    return _BOLD.search(Path(path).name) is not None


def events_path(bold: str | Path) -> Path:
    """The ``*_events.tsv`` beside a ``*_bold.nii[.gz]``."""
    return Path(_BOLD.sub("_events.tsv", str(bold)))


def find_runs(root: str | Path, subject: str, task: str,
              session: str | None = None) -> list[tuple[int, Path]]:
    """``(run, bold file)`` of a subject's runs of a task in a BIDS dataset, by run number.

    Sessions are searched too when ``session`` is ``None``.
    """
    subject = label(subject)
    base = Path(root) / f"sub-{subject}"
    folders = [base / "func"] + sorted(base.glob("ses-*/func"))
    if session is not None:
        folders = [base / f"ses-{label(session, 'ses')}" / "func"]
    runs = []
    for folder in folders:
        for path in sorted(folder.glob("*_bold.nii*")) if folder.is_dir() else []:
            found = parse_entities(path.name)
            if (found is not None and is_bold(path) and found.subject == subject
                    and found.task == task and (session is None or found.session == session)):
                runs.append((found.run, path))
    return sorted(runs)


def read_events(path: str | Path) -> list[dict]:
    """Read a BIDS ``*_events.tsv`` (``onset``, ``duration``, ``trial_type``).

    Raises
    ------
    InputError
        If the file is missing or lacks a column or a number.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError as exc:
        raise InputError(f"Cannot read events file {path}: {exc.strerror}.") from None
    events = []
    for number, row in enumerate(rows, start=2):
        try:
            events.append({"onset": float(row["onset"]), "duration": float(row["duration"]),
                           "trial_type": row["trial_type"].strip()})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"{path} line {number}: expected numbers in 'onset' and "
                             f"'duration' and a 'trial_type'. Got {dict(row)}.") from None
    return events
