"""Append-only recording of a run, on its own thread, flushed per volume; resumable.

Files (BIDS derivatives style, prefix ``sub-<id>_task-<task>_run-<n>``). Row ``N`` of every
table is volume ``N``: each table starts with a ``volume`` column and ends with a ``missing``
column, and a volume that never arrived keeps its row (``missing`` 1, values empty).

- ``_bold.nii.gz``: every volume as received, in order, in its original type and orientation
  (:mod:`rtserver.service.growing_nifti`: valid at every moment, so a crash loses nothing
  written). A missing volume keeps its place as a volume of zeros.
- ``_desc-confounds_timeseries.tsv``: ``volume trans_x trans_y trans_z rot_x rot_y rot_z
  framewise_displacement missing`` (mm, radians; fMRIPrep column names).
- ``_desc-hmc_xfm.tsv``: each volume's rigid transform as the first three rows of its 4x4
  world (RAS+, mm) matrix ``M`` (12 numbers a row, row-major: ``m00 m01 m02 m03 m10 ...``).
  Direction: reference -> volume. ``M`` maps a point's world coordinates in the reference
  volume to where that point of the head is in this volume, so ``volume(M x) = reference(x)``
  and ``inv(M)`` realigns the volume (as ``--reslice`` does).
- ``_desc-realigned_bold.nii.gz`` (only with ``[motion] reslice``): every volume resampled
  onto the reference grid with its motion undone (cubic spline, float32, 0 outside).
- ``_desc-roi_timeseries.tsv``: one column per ROI.
- ``_desc-feedback_timeseries.tsv``: ``volume value p_drug decision censored
  t_file_complete t_sent t_received t_published latency_ms missing``. Times are Unix
  seconds: when the bridge found the volume's last file complete, when it sent the volume
  (both on the bridge's clock; empty when unknown), when the server received it and when it
  published the feedback; ``latency_ms`` is received -> published on the server. ``value``
  is empty when the feedback was withheld.
- ``_desc-session.json``: software version, configuration, decoder model card, status and
  counters; rewritten atomically at the start, on resume and at the end.

Nothing is overwritten: files are created exclusively; a run taken up again after a crash
(:meth:`RunRecorder.resume`) keeps every volume whose outputs were all written and cuts off
only the tail of the one being written when the process died (it was never acknowledged).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from rtserver.core.stages import MotionEstimate
from rtserver.errors import InputError
from rtserver.protocol import FeedbackEvent
from rtserver.rigid import PARAMETER_NAMES
from rtserver.service.growing_nifti import GrowingNifti
from rtserver.volume import Volume

log = logging.getLogger(__name__)

CONFOUND_COLUMNS = ("volume", *PARAMETER_NAMES, "framewise_displacement", "missing")
FEEDBACK_COLUMNS = ("volume", "value", "p_drug", "decision", "censored", "t_file_complete",
                    "t_sent", "t_received", "t_published", "latency_ms", "missing")
XFM_COLUMNS = ("volume", *(f"m{row}{col}" for row in range(3) for col in range(4)), "missing")
TABLES = ("desc-confounds_timeseries.tsv", "desc-hmc_xfm.tsv", "desc-roi_timeseries.tsv",
          "desc-feedback_timeseries.tsv")


def _time(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Record:
    """What the recorder writes for one volume."""

    volume: Volume
    event: FeedbackEvent
    motion: MotionEstimate
    t_sent: float | None = None


@dataclass(frozen=True)
class Missing:
    """Volumes ``first .. last`` that never arrived: rows and fill volumes are written."""

    first: int
    last: int


def table_columns(suffix: str, roi_names: list[str]) -> tuple[str, ...]:
    """The columns of one of the run's tables."""
    return {"desc-confounds_timeseries.tsv": CONFOUND_COLUMNS, "desc-hmc_xfm.tsv": XFM_COLUMNS,
            "desc-roi_timeseries.tsv": ("volume", *roi_names, "missing"),
            "desc-feedback_timeseries.tsv": FEEDBACK_COLUMNS}[suffix]


class RunRecorder:
    """Write a run's outputs as it goes, from a background thread.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    prefix : str
        BIDS prefix ``sub-<id>_task-<task>_run-<n>``.
    session : dict
        Contents of the session JSON (version, config, model card).
    reslice : callable or None
        ``reslice(volume, matrix) -> Volume`` on the reference grid; when given, the
        realigned run is recorded too (on this thread, off the processing path).
    on_recorded : callable or None
        Called from the writer thread as ``on_recorded(index, ok)`` once a volume's
        outputs are all written (``ok``) or could not be (``ok`` False: the disk is full,
        the folder went away); the server acknowledges the volume then.
    """

    def __init__(self, out_dir: str | Path, prefix: str, session: dict[str, Any],
                 reslice: Callable[[Volume, np.ndarray], Volume] | None = None,
                 on_recorded: Callable[[int, bool], None] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.session = dict(session)
        self._queue: queue.Queue[Record | Missing | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._files: dict[str, IO[str]] = {}
        self._reslice = reslice
        self._on_recorded = on_recorded
        self._bold: GrowingNifti | None = None
        self._realigned: GrowingNifti | None = None
        self._n_written = 0
        self._n_rows = 0
        self._n_columns: dict[str, int] = {}
        self._unfilled = 0  # missing volumes before the first one that gives the grid
        self.error: BaseException | None = None

    def path(self, suffix: str) -> Path:
        """The output path ``<out_dir>/<prefix>_<suffix>``."""
        return self.out_dir / f"{self.prefix}_{suffix}"

    # ------------------------------------------------------------------ lifecycle
    def start(self, roi_names: list[str]) -> RunRecorder:
        """Create the files (none may exist), write the headers, start the writer thread."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in TABLES:
            columns = table_columns(suffix, roi_names)
            handle = self.path(suffix).open("x", encoding="utf-8", newline="")
            handle.write("\t".join(columns) + "\n")
            handle.flush()
            self._files[suffix] = handle
            self._n_columns[suffix] = len(columns)
        self._write_session(status="running")
        return self._start_thread()

    def resume(self, roi_names: list[str], n_volumes: int, first: Volume,
               realigned: Volume | None = None) -> RunRecorder:
        """Take up a run a crash left: keep its first ``n_volumes`` rows and volumes.

        Parameters
        ----------
        roi_names : list of str
            The run's ROI columns (the ROI table's header must match).
        n_volumes : int
            Volumes (rows) to keep, as :func:`rtserver.service.run_folder.inspect` found.
        first : Volume
            A volume of the run (the BOLD file's grid and type).
        realigned : Volume or None
            A realigned volume, when the run records the realigned series.
        """
        for suffix in TABLES:
            _truncate_rows(self.path(suffix), n_volumes)
            self._files[suffix] = self.path(suffix).open("a", encoding="utf-8", newline="")
            self._n_columns[suffix] = len(table_columns(suffix, roi_names))
        if n_volumes:
            self._bold = GrowingNifti(self.path("bold.nii.gz"), first).resume(n_volumes)
            if realigned is not None and self.path("desc-realigned_bold.nii.gz").exists():
                self._realigned = GrowingNifti(self.path("desc-realigned_bold.nii.gz"),
                                               realigned, dtype=np.float32).resume(n_volumes)
        self._n_rows = n_volumes
        self._write_session(status="running")
        return self._start_thread()

    def put(self, record: Record | Missing) -> None:
        """Queue one volume's record, or a range of missing volumes (never blocks)."""
        self._queue.put(record)

    def close(self, status: str = "complete", **counters: Any) -> None:
        """Write everything still queued, close the files, finish the session JSON."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        for nifti in (self._bold, self._realigned):
            if nifti is not None:
                nifti.close()
        self._bold = self._realigned = None
        self._write_session(status=status, n_volumes_recorded=self._n_written,
                            n_rows=self._n_rows, **counters)

    def _start_thread(self) -> RunRecorder:
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        return self

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, Missing):
                self._guarded(self._write_missing, item, f"{item.first}-{item.last}")
            else:
                ok = self._guarded(self._write, item, item.volume.index)
                if self._on_recorded is not None:
                    self._on_recorded(item.volume.index, ok)

    def _guarded(self, write: Callable[[Any], None], item: Any, index: int | str) -> bool:
        """Run one write; a failure is logged once, kept in :attr:`error`, never raised."""
        try:
            write(item)
        except Exception as exc:  # the server goes on; the failure is reported
            if self.error is None:
                log.error("recording failed at volume %s: %s; feedback goes on, what was "
                          "written stays readable", index, exc)
            self.error = exc
            return False
        return True

    def _write(self, record: Record) -> None:
        event, motion, volume = record.event, record.motion, record.volume
        if self._bold is None:
            self._bold = self._created("bold.nii.gz", volume, None)
        self._bold.append(volume)
        if self._reslice is not None:
            realigned = self._reslice(volume, motion.matrix)
            if self._realigned is None:
                self._realigned = self._created("desc-realigned_bold.nii.gz", realigned,
                                                np.float32)
            self._realigned.append(realigned)
        index = str(volume.index)
        self._row("desc-confounds_timeseries.tsv",
                  [index, *(f"{v:.6f}" for v in motion.params), f"{motion.fd:.6f}", "0"])
        self._row("desc-hmc_xfm.tsv",
                  [index, *(f"{v:.8f}" for v in motion.matrix[:3].ravel()), "0"])
        self._row("desc-roi_timeseries.tsv",
                  [index, *(f"{v:.4f}" for v in event.rois.values()), "0"])
        self._row("desc-feedback_timeseries.tsv", [
            index, _number(event.value), _number(event.p_drug), _number(event.decision),
            "1" if event.censored else "0",
            _time(volume.t_file_complete), _time(record.t_sent),
            f"{event.t_received:.6f}", f"{event.t_published:.6f}", f"{event.latency_ms:.3f}",
            "0",
        ])
        self._n_written += 1
        self._n_rows += 1

    def _created(self, suffix: str, volume: Volume, dtype: Any) -> GrowingNifti:
        """A new image file, with the fill volumes of missing volumes that came first."""
        nifti = GrowingNifti(self.path(suffix), volume, dtype=dtype).create()
        for _ in range(self._unfilled):
            nifti.append_fill()
        return nifti

    def _write_missing(self, missing: Missing) -> None:
        for index in range(missing.first, missing.last + 1):
            if self._bold is None:
                self._unfilled += 1  # filled when the first volume gives the grid
            for nifti in (self._bold, self._realigned):
                if nifti is not None:
                    nifti.append_fill()
            for suffix, handle in self._files.items():
                empty = [""] * (self._n_columns[suffix] - 2)
                handle.write("\t".join([str(index), *empty, "1"]) + "\n")
                handle.flush()
            self._n_rows += 1

    def _row(self, suffix: str, values: list[str]) -> None:
        handle = self._files[suffix]
        handle.write("\t".join(values) + "\n")
        handle.flush()

    def _write_session(self, **fields: Any) -> None:
        target = self.path("desc-session.json")
        temporary = target.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({**self.session, **fields}, indent=2, default=str))
        temporary.replace(target)


def _truncate_rows(path: Path, n_rows: int) -> None:
    """Keep a table's header and its first ``n_rows`` complete rows; cut off the rest."""
    with path.open("r+b") as handle:
        keep = 0
        for _ in range(n_rows + 1):
            line = handle.readline()
            if not line.endswith(b"\n"):
                raise InputError(f"{path} has fewer than {n_rows} complete rows.")
            keep += len(line)
        handle.truncate(keep)
