"""What an output folder already holds for a run, and where a new attempt goes.

A run's folder is never overwritten. Before a server records, :func:`inspect` reads what is
there for its prefix:

- nothing: a new run;
- an unfinished run (its session JSON says ``running`` or ``interrupted``: the server was
  killed, or stopped before the end): it is resumed. The number of volumes kept is the
  number whose outputs were all written (every table's complete rows and the BOLD file's
  complete volumes agree on it); the tail of a volume being written when the process died
  was never acknowledged, and the bridge sends it again;
- a finished run (``complete`` or ``incomplete``): refused, unless a new attempt is asked
  for, which goes to the first free ``attempt-<k>`` folder beside it (:func:`next_attempt`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtserver.errors import InputError
from rtserver.scanner.readers import iter_nifti_volumes, load_nifti
from rtserver.service.growing_nifti import member_ends
from rtserver.service.recording import TABLES
from rtserver.volume import Volume

UNFINISHED = ("running", "interrupted")
FINISHED = ("complete", "incomplete")


@dataclass(frozen=True)
class RunState:
    """What a folder holds for one run.

    Attributes
    ----------
    kind : str
        ``"new"``, ``"unfinished"`` or ``"finished"``.
    n_rows : int
        Volumes (rows) whose outputs were all written.
    missing : frozenset of int
        Indices among them recorded as missing (their rows say ``missing`` 1).
    session : dict
        The session JSON as it was.
    """

    kind: str
    n_rows: int = 0
    missing: frozenset[int] = field(default_factory=frozenset)
    session: dict = field(default_factory=dict)


def _complete_rows(path: Path) -> list[bytes]:
    """A table's complete data rows (a last line without its newline is left out)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return lines[1:-1]  # header first; after the last newline: "" or a cut-off row


def inspect(out_dir: str | Path, prefix: str) -> RunState:
    """Read what ``out_dir`` holds for the run ``prefix``.

    Raises
    ------
    InputError
        If the folder holds the run's files but its session JSON cannot be read.
    """
    out_dir = Path(out_dir)
    session_file = out_dir / f"{prefix}_desc-session.json"
    tables = [out_dir / f"{prefix}_{suffix}" for suffix in TABLES]
    bold = out_dir / f"{prefix}_bold.nii.gz"
    if not session_file.exists() and not any(p.exists() for p in [*tables, bold]):
        return RunState(kind="new")
    try:
        session = json.loads(session_file.read_text(encoding="utf-8"))
        status = session["status"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{out_dir} holds files of {prefix} but its session file "
                         f"{session_file.name} cannot be read ({exc}); give another output "
                         "folder.", setting="out") from None
    if status in FINISHED:
        return RunState(kind="finished", session=session)
    if status not in UNFINISHED:
        raise InputError(f"{session_file} has status {status!r}; expected one of "
                         f"{UNFINISHED + FINISHED}.", setting="out")
    rows = [_complete_rows(table) for table in tables]
    n_bold = max(0, len(member_ends(bold)) - 1) if bold.exists() else 0
    n_rows = min(n_bold, *(len(r) for r in rows))
    feedback = rows[TABLES.index("desc-feedback_timeseries.tsv")][:n_rows]
    missing = frozenset(int(row.split(b"\t", 1)[0]) for row in feedback
                        if row.rstrip(b"\r").endswith(b"\t1"))
    return RunState(kind="unfinished", n_rows=n_rows, missing=missing, session=session)


def next_attempt(out_dir: str | Path) -> Path:
    """The first ``attempt-<k>`` folder (k >= 2) in ``out_dir`` that does not exist."""
    k = 2
    while (Path(out_dir) / f"attempt-{k}").exists():
        k += 1
    return Path(out_dir) / f"attempt-{k}"


def recorded_volumes(out_dir: str | Path, prefix: str, state: RunState) -> Iterator[Volume]:
    """The volumes a run recorded, in order, the missing ones left out.

    Parameters
    ----------
    out_dir : str or Path
        The run's folder.
    prefix : str
        The run's BIDS prefix.
    state : RunState
        What :func:`inspect` found (its first ``n_rows`` volumes are read).
    """
    path = Path(out_dir) / f"{prefix}_bold.nii.gz"
    if state.n_rows == 0:
        return
    image = load_nifti(path)
    tr = float(image.header.get_zooms()[3])
    for index, data in enumerate(iter_nifti_volumes(image, path)):
        if index >= state.n_rows:
            return
        if index not in state.missing:
            yield Volume(np.ascontiguousarray(data), image.affine, index=index, tr=tr)
