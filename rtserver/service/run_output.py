"""A run's output: a new folder, a resumed run, or a new attempt; never an overwrite.

:class:`RunOutput` sits between the server and its recorder. Before the server binds, it
reads what the folder holds (:func:`rtserver.service.run_folder.inspect`): a finished run is
refused (or, when asked, a new ``attempt-<k>`` folder beside it is used); an unfinished one
is resumed: its recorded volumes go through the pipeline again, without publishing, so the
motion reference and every online state are what they were, and recording appends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rtserver.core.pipeline import Pipeline
from rtserver.errors import InputError
from rtserver.service import run_folder
from rtserver.service.recording import TABLES, Missing, Record, RunRecorder

log = logging.getLogger(__name__)


class RunOutput:
    """Where and how a run is recorded.

    Parameters
    ----------
    out_dir : Path
        The folder asked for.
    prefix : str
        The run's BIDS prefix.
    restart : bool
        Record a new attempt beside a run the folder already holds, instead of refusing a
        finished one or resuming an unfinished one.
    on_recorded : callable
        ``on_recorded(index, ok)``, called from the recorder's thread (see
        :class:`~rtserver.service.recording.RunRecorder`).
    """

    def __init__(self, out_dir: Path, prefix: str, restart: bool,
                 on_recorded: Callable[[int, bool], None]) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.restart = restart
        self.on_recorded = on_recorded
        self.state = run_folder.RunState(kind="new")
        self.recorder: RunRecorder | None = None

    def prepare(self) -> Path:
        """Decide the folder: new, resumed or a new attempt; return it.

        Raises
        ------
        InputError
            If the folder holds a finished run of this prefix and no restart was asked.
        """
        state = run_folder.inspect(self.out_dir, self.prefix)
        if state.kind != "new" and self.restart:
            self.out_dir = run_folder.next_attempt(self.out_dir)
            log.info("recording a new attempt in %s", self.out_dir)
            state = run_folder.RunState(kind="new")
        elif state.kind == "finished":
            raise InputError(
                f"{self.out_dir} already holds the finished run {self.prefix} (status "
                f"{state.session.get('status')!r}); nothing is overwritten. Expected a new "
                "output folder, or a restart to record a new attempt beside it.",
                setting="restart")
        elif state.kind == "unfinished" and state.n_rows == 0:
            self._remove_empty_run()
            state = run_folder.RunState(kind="new")
        self.state = state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    @property
    def resuming(self) -> bool:
        """Whether an unfinished run is taken up again."""
        return self.state.kind == "unfinished"

    def resume(self, pipeline: Pipeline, session: Callable[[], dict[str, Any]],
               reslice: bool) -> int:
        """Run the recorded volumes through ``pipeline`` (no publishing); open the recorder.

        Returns
        -------
        int
            The number of volumes (rows, missing ones included) already recorded.
        """
        state = self.state
        first = None
        for volume in run_folder.recorded_volumes(self.out_dir, self.prefix, state):
            first = first or volume
            pipeline.step(volume)
        realigned = (pipeline.motion.reslice(first, np.eye(4)) if reslice and first
                     else None)
        info = session()
        info["resumed"] = [*state.session.get("resumed", []),
                           {"at_volume": state.n_rows, "started": info.get("started")}]
        info["started"] = state.session.get("started", info.get("started"))
        self.recorder = RunRecorder(
            self.out_dir, self.prefix, info,
            reslice=pipeline.motion.reslice if reslice else None,
            on_recorded=self.on_recorded,
        ).resume(pipeline.roi_names, state.n_rows, first, realigned)
        log.info("resumed %s at volume %d (%d volumes recorded before, %d of them missing)",
                 self.prefix, state.n_rows, state.n_rows, len(state.missing))
        return state.n_rows

    def record(self, record: Record, pipeline: Pipeline,
               session: Callable[[], dict[str, Any]], reslice: bool,
               gap: tuple[int, int] | None) -> None:
        """Queue a volume's record, after the rows of the volumes missing before it."""
        if self.recorder is None:
            self.recorder = RunRecorder(
                self.out_dir, self.prefix, session(),
                reslice=pipeline.motion.reslice if reslice else None,
                on_recorded=self.on_recorded,
            ).start(pipeline.roi_names)
        if gap is not None:
            self.recorder.put(Missing(*gap))
        self.recorder.put(record)

    def close(self, status: str, last_index: int, **counters: Any) -> None:
        """Record the missing tail (up to ``counters["n_expected"]``), flush, finish."""
        if self.recorder is None:
            return
        n_expected = counters.get("n_expected")
        if n_expected is not None and n_expected > last_index + 1:
            self.recorder.put(Missing(last_index + 1, n_expected - 1))
        self.recorder.close(status=status, **counters)
        if self.recorder.error is not None:
            log.error("recording failed: %s", self.recorder.error)

    def _remove_empty_run(self) -> None:
        """Remove the files of a run that recorded no volume (a crash before the first)."""
        for suffix in (*TABLES, "bold.nii.gz", "desc-realigned_bold.nii.gz",
                       "desc-session.json"):
            path = self.out_dir / f"{self.prefix}_{suffix}"
            if path.exists():
                path.unlink()
