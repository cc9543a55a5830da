"""Append-only recording of a run, on its own thread, flushed per volume.

Files (BIDS derivatives style, prefix ``sub-<id>_task-<task>_run-<n>``):

- ``_bold.nii.gz``: every volume as received, in order, in its original type and orientation.
  It is written as a multi-member gzip file (which every gzip reader, nibabel included,
  reads as one stream): a first, uncompressed member of fixed size holding the NIfTI header,
  then one compressed member per volume. After each volume the header member is rewritten
  in place with the new volume count, so the file is a valid NIfTI at every moment: a crash
  loses nothing received, and there is no compression pass at the end.
- ``_desc-confounds_timeseries.tsv``: ``trans_x trans_y trans_z rot_x rot_y rot_z
  framewise_displacement`` (mm, radians; fMRIPrep column names).
- ``_desc-hmc_xfm.tsv``: each volume's rigid transform as the first three rows of its 4x4
  world (RAS+, mm) matrix ``M`` (12 numbers a row, row-major: ``m00 m01 m02 m03 m10 ...``).
  Direction: reference -> volume. ``M`` maps a point's world coordinates in the reference
  volume to where that point of the head is in this volume, so ``volume(M x) = reference(x)``
  and ``inv(M)`` realigns the volume (as ``--reslice`` does).
- ``_desc-realigned_bold.nii.gz`` (only with ``[motion] reslice``): every volume resampled
  onto the reference grid with its motion undone (cubic spline, float32, 0 outside).
- ``_desc-roi_timeseries.tsv``: one column per ROI.
- ``_desc-feedback_timeseries.tsv``: ``volume value p_drug decision censored
  t_file_complete t_sent t_received t_published latency_ms``. Times are Unix seconds:
  when the bridge found the volume's last file complete, when it sent the volume (both on
  the bridge's clock; empty when unknown), when the server received it and when it
  published the feedback; ``latency_ms`` is received -> published on the server.
- ``_desc-session.json``: software version, configuration, decoder model card, counters;
  written at the start and rewritten (atomically) at the end.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np

from rtserver.core.stages import MotionEstimate
from rtserver.protocol import FeedbackEvent
from rtserver.rigid import PARAMETER_NAMES
from rtserver.volume import Volume

log = logging.getLogger(__name__)

CONFOUND_COLUMNS = (*PARAMETER_NAMES, "framewise_displacement")
FEEDBACK_COLUMNS = ("volume", "value", "p_drug", "decision", "censored", "t_file_complete",
                    "t_sent", "t_received", "t_published", "latency_ms")
XFM_COLUMNS = tuple(f"m{row}{col}" for row in range(3) for col in range(4))
NIFTI_HEADER_BYTES = 352  # NIfTI-1 header (348) + empty extension flag (4)


def _time(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


class GrowingNifti:
    """A 4D NIfTI file that grows by one volume at a time and is valid at every moment.

    Multi-member gzip: a stored (uncompressed) first member of fixed size holds the header,
    then one compressed member per volume; after each volume the header member is rewritten
    in place with the new count.

    Parameters
    ----------
    path : Path
        The ``.nii.gz`` file to create.
    first : Volume
        The first volume (gives grid, type and TR); it is not written by the constructor.
    dtype : numpy dtype or None
        Type to store; ``None`` keeps the first volume's type.
    """

    def __init__(self, path: Path, first: Volume, dtype: Any = None) -> None:
        header = nib.Nifti1Header()
        header.set_data_dtype(np.dtype(dtype or first.data.dtype).newbyteorder("="))
        header.set_data_shape((*first.shape, 1))
        header.set_zooms((*first.zooms, first.tr))
        header.set_xyzt_units("mm", "sec")
        header.set_qform(first.affine, code=1)
        header.set_sform(first.affine, code=1)
        header.set_slope_inter(1.0, 0.0)
        header["vox_offset"] = NIFTI_HEADER_BYTES
        self._header = header
        self._dtype = header.get_data_dtype()
        self._file: IO[bytes] = path.open("w+b")
        self._file.write(self._header_member(0))
        self.n_volumes = 0

    def append(self, volume: Volume) -> None:
        """Add one volume and make the file on disk a valid NIfTI of all volumes so far."""
        data = np.asarray(volume.data, dtype=self._dtype)
        self._file.seek(0, os.SEEK_END)
        self._file.write(gzip.compress(data.tobytes(order="F"), compresslevel=1, mtime=0))
        self.n_volumes += 1
        self._file.seek(0)
        self._file.write(self._header_member(self.n_volumes))
        self._file.flush()

    def close(self) -> None:
        """Close the file (it is already complete)."""
        self._file.close()

    def _header_member(self, n_volumes: int) -> bytes:
        """The NIfTI header as a stored (level 0) gzip member: its size never changes."""
        self._header["dim"][4] = n_volumes
        block = self._header.binaryblock + b"\x00" * (NIFTI_HEADER_BYTES - 348)
        return gzip.compress(block, compresslevel=0, mtime=0)


@dataclass(frozen=True)
class Record:
    """What the recorder writes for one volume."""

    volume: Volume
    event: FeedbackEvent
    motion: MotionEstimate
    t_sent: float | None = None


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
    """

    def __init__(self, out_dir: str | Path, prefix: str, session: dict[str, Any],
                 reslice: Callable[[Volume, np.ndarray], Volume] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.session = dict(session)
        self._queue: queue.Queue[Record | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._files: dict[str, IO[str]] = {}
        self._reslice = reslice
        self._bold: GrowingNifti | None = None
        self._realigned: GrowingNifti | None = None
        self._n_written = 0
        self.error: BaseException | None = None

    def path(self, suffix: str) -> Path:
        """The output path ``<out_dir>/<prefix>_<suffix>``."""
        return self.out_dir / f"{self.prefix}_{suffix}"

    # ------------------------------------------------------------------ lifecycle
    def start(self, roi_names: list[str]) -> RunRecorder:
        """Open the files, write the headers and start the writer thread."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write_session(status="running")
        columns = {
            "desc-confounds_timeseries.tsv": CONFOUND_COLUMNS,
            "desc-hmc_xfm.tsv": XFM_COLUMNS,
            "desc-roi_timeseries.tsv": tuple(roi_names),
            "desc-feedback_timeseries.tsv": FEEDBACK_COLUMNS,
        }
        for suffix, names in columns.items():
            handle = self.path(suffix).open("w", encoding="utf-8", newline="")
            handle.write("\t".join(names) + "\n")
            handle.flush()
            self._files[suffix] = handle
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        return self

    def put(self, record: Record) -> None:
        """Queue one volume's record (never blocks the caller)."""
        self._queue.put(record)

    def close(self, **counters: Any) -> None:
        """Write everything still queued, compress the BOLD file, finish the session JSON."""
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
        self._write_session(status="complete", n_volumes_recorded=self._n_written, **counters)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                self._write(record)
            except Exception as exc:  # keep the server alive; report at close
                log.exception("could not record volume %d", record.volume.index)
                self.error = exc

    def _write(self, record: Record) -> None:
        event, motion = record.event, record.motion
        if self._bold is None:
            self._bold = GrowingNifti(self.path("bold.nii.gz"), record.volume)
        self._bold.append(record.volume)
        if self._reslice is not None:
            realigned = self._reslice(record.volume, motion.matrix)
            if self._realigned is None:
                self._realigned = GrowingNifti(self.path("desc-realigned_bold.nii.gz"),
                                               realigned, dtype=np.float32)
            self._realigned.append(realigned)
        self._row("desc-confounds_timeseries.tsv",
                  [*(f"{v:.6f}" for v in motion.params), f"{motion.fd:.6f}"])
        self._row("desc-hmc_xfm.tsv", [f"{v:.8f}" for v in motion.matrix[:3].ravel()])
        self._row("desc-roi_timeseries.tsv", [f"{v:.4f}" for v in event.rois.values()])
        self._row("desc-feedback_timeseries.tsv", [
            str(event.volume), "" if event.value is None else f"{event.value:.6f}",
            "" if event.p_drug is None else f"{event.p_drug:.6f}",
            "" if event.decision is None else f"{event.decision:.6f}",
            "1" if event.censored else "0",
            _time(record.volume.t_file_complete), _time(record.t_sent),
            f"{event.t_received:.6f}", f"{event.t_published:.6f}", f"{event.latency_ms:.3f}",
        ])
        self._n_written += 1

    def _row(self, suffix: str, values: list[str]) -> None:
        handle = self._files[suffix]
        handle.write("\t".join(values) + "\n")
        handle.flush()

    def _write_session(self, **fields: Any) -> None:
        target = self.path("desc-session.json")
        temporary = target.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({**self.session, **fields}, indent=2, default=str))
        temporary.replace(target)
