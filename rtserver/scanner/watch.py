"""Watching a live export folder: files in as the scanner writes them, volumes out in order.

Two parts, each testable alone, with the series assembler of :mod:`rtserver.scanner.assembly`
between them:

* :class:`FolderWatcher` turns file-system events (watchdog: inotify on a local disk, or
  polling for network shares) into files that are ready to read: a file is read once the
  writer closed it, or once its size and time stamp have stopped changing; the reader then
  checks that its content is whole (a DICOM's pixel data, a NIfTI's voxels), and a file
  that is not is read again when it changes.
* :func:`watch_and_send` reads each ready file (:func:`rtserver.scanner.readers.read_file`),
  gives its pieces to a :class:`rtserver.scanner.assembly.SeriesAssembler`, and hands each
  volume it releases to the scanner bridge, with the time its last file was found complete.

Nothing that identifies the patient is passed on: the readers keep only voxels, geometry,
series and volume numbers, and the wire protocol drops any other metadata.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.assembly import SeriesAssembler
from rtserver.scanner.readers import read_file
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: Seconds a file's size and time stamp must stay unchanged before it is read without a
#: close event (inotify reports closes; polling and some network file systems do not).
SETTLE_SECONDS = 0.05
#: Seconds between re-checks of files that were not ready or not complete yet.
RECHECK_SECONDS = 0.02
#: Seconds the first volume of a watched run is held back, in case an earlier one is still
#: settling (watching began while the scanner was writing).
FIRST_HOLD_SECONDS = 0.25
#: Repetition time (s) of the volumes of a watched run while neither the files nor the
#: caller give one.
DEFAULT_TR_SECONDS = 2.0


# --------------------------------------------------------------------------- watching
@dataclass
class _FileState:
    size: int = -1
    mtime_ns: int = -1
    t_changed: float = 0.0
    closed: bool = False
    attempted: tuple[int, int] | None = None  # (size, mtime) of the last failed read


class FolderWatcher:
    """Files of one folder that are ready to be read, from file-system events.

    Parameters
    ----------
    folder : Path
        The export folder (not its subfolders).
    poll : float or None
        Poll the folder every ``poll`` seconds (for network shares, where inotify sees
        nothing); ``None`` uses the operating system's events.
    """

    def __init__(self, folder: str | Path, poll: float | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"The folder to watch should be a folder. Got {self.folder}, which is not "
                             "one.", setting="watch")
        self.poll = poll
        self._events: queue.Queue[tuple[str, bool]] = queue.Queue()
        self._states: dict[str, _FileState] = {}
        self._done: set[str] = set()
        self._observer = None

    def start(self) -> FolderWatcher:
        """Start watching; files already in the folder count as just created."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        events = self._events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's event type
                if event.is_directory or event.event_type in ("deleted", "opened",
                                                              "closed_no_write"):
                    return
                path = getattr(event, "dest_path", "") or event.src_path
                events.put((os.fsdecode(path), event.event_type == "closed"))

        observer = PollingObserver(timeout=self.poll) if self.poll else Observer()
        observer.schedule(Handler(), str(self.folder), recursive=False)
        observer.start()
        self._observer = observer
        # Files already there: complete if they have not changed for a while (as if closed).
        now = time.time()
        for entry in sorted(os.scandir(self.folder), key=lambda e: _natural_key(e.name)):
            if entry.is_file():
                old = now - entry.stat().st_mtime > SETTLE_SECONDS
                self._events.put((entry.path, old))
        return self

    def stop(self) -> None:
        """Stop the observer thread."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5.0)
            self._observer = None

    def ready(self, timeout: float) -> list[tuple[Path, float]]:
        """Files ready to read now, with the time they were found ready (Unix seconds).

        Waits up to ``timeout`` seconds for an event when nothing is pending.
        """
        wait = timeout if not self._states else min(timeout, RECHECK_SECONDS)
        try:
            first = self._events.get(timeout=max(wait, 0.0))
        except queue.Empty:
            first = None
        touched = [] if first is None else [first]
        while True:
            try:
                touched.append(self._events.get_nowait())
            except queue.Empty:
                break
        for path, closed in touched:
            if path in self._done or _hidden(path):
                continue
            state = self._states.setdefault(path, _FileState())
            state.closed = state.closed or closed
            # A file read together with a sibling (a PAR with its REC) is tried again when
            # the sibling changes.
            stem = os.path.splitext(path)[0]
            for other, sibling in self._states.items():
                if other != path and os.path.splitext(other)[0] == stem:
                    sibling.attempted = None
        now_wall, now = time.time(), time.monotonic()
        ready = []
        for path, state in list(self._states.items()):
            try:
                stat = os.stat(path)
            except FileNotFoundError:  # deleted or renamed away before it was read
                del self._states[path]
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            if signature != (state.size, state.mtime_ns):
                state.size, state.mtime_ns, state.t_changed = *signature, now
            if signature == state.attempted:
                continue  # read before at exactly this size and time: wait for a change
            settled = now - state.t_changed >= SETTLE_SECONDS
            if stat.st_size > 0 and (state.closed or settled):
                ready.append((Path(path), now_wall))
        return sorted(ready, key=lambda item: _natural_key(item[0].name))

    def retry(self, path: Path) -> None:
        """Mark a file that could not be used as it is: read it again once it changes."""
        state = self._states.get(str(path))
        if state is not None:
            state.closed = False
            state.attempted = (state.size, state.mtime_ns)

    def finish(self, path: Path) -> None:
        """Mark a file as read: ignore its further events."""
        self._states.pop(str(path), None)
        self._done.add(str(path))

    @property
    def n_waiting(self) -> int:
        """Files seen but not yet read."""
        return len(self._states)


def _hidden(path: str) -> bool:
    return os.path.basename(path).startswith(".")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------- the loop
@dataclass
class WatchReport:
    """What a watched run did."""

    n_sent: int = 0
    n_files: int = 0
    n_skipped: int = 0  # files not used: foreign, other series, repeats
    missing: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def watch_and_send(folder: str | Path, send: Callable[[Volume], object], *,
                   poll: float | None = None, file_format: str | None = None,
                   n_slices: int | None = None, series_number: int | None = None,
                   n_volumes: int | None = None, idle_timeout: float | None = 60.0,
                   missing_after: float | None = None, tr: float | None = None,
                   stop: threading.Event | None = None,
                   progress: object | None = None) -> WatchReport:
    """Watch an export folder and send each volume once, in acquisition order.

    Parameters
    ----------
    folder : str or Path
        The folder the scanner writes into.
    send : callable
        Called with each :class:`Volume` (e.g. ``ScannerBridge.send_volume``).
    poll : float or None
        Poll every ``poll`` seconds instead of using inotify.
    file_format : str or None
        Force the readers' interpretation of the files (``--format``).
    n_slices, series_number, missing_after
        See :class:`rtserver.scanner.assembly.SeriesAssembler`.
    n_volumes : int or None
        Stop after this many volumes (sent or reported missing).
    idle_timeout : float or None
        Stop when no file has arrived for this many seconds after the first volume.
    tr : float or None
        The TR (s) of every volume, whatever the files state; ``None`` takes the files'
        TR, or 2 s (with a warning) when they state none.
    stop : threading.Event or None
        Set it to end the run from another thread (e.g. on SIGINT).
    progress : tqdm-like or None
        Updated once per volume sent.

    Returns
    -------
    WatchReport
    """
    watcher = FolderWatcher(folder, poll=poll).start()
    assembler = SeriesAssembler(n_slices=n_slices, missing_after=missing_after,
                                series_number=series_number, first_hold=FIRST_HOLD_SECONDS,
                                tr=tr, default_tr=DEFAULT_TR_SECONDS)
    run = _Run(send, progress, stop, n_volumes, idle_timeout)
    try:
        while not run.done(assembler):
            for path, t_ready in watcher.ready(timeout=0.2):
                if _take_file(path, t_ready, file_format, watcher, assembler, run.skipped, run.rejected):
                    run.report.n_files += 1
                    run.last_activity = time.monotonic()
            # After the whole batch: files found together (e.g. already in the folder when
            # the watch began) all count before the first volume goes.
            run.deliver(assembler.pop_ready(time.time()))
        run.deliver(assembler.flush())
    finally:
        watcher.stop()
    return run.finish(watcher, assembler)


@dataclass
class _Run:
    """The state of one watched run: its report so far, its last file, and the files not used."""

    send: Callable[[Volume], object]
    progress: object | None
    stop: threading.Event | None
    n_volumes: int | None
    idle_timeout: float | None
    report: WatchReport = field(default_factory=WatchReport)
    #: When the run began or last read a file (monotonic seconds).
    last_activity: float = field(default_factory=time.monotonic)
    #: Unreadable or foreign files, with the reason (watched, should they change).
    skipped: dict[str, str] = field(default_factory=dict)
    #: Readable files of another series, repeats, late volumes, with the reason.
    rejected: dict[str, str] = field(default_factory=dict)

    def deliver(self, volumes: list[Volume]) -> None:
        """Send released volumes, noting each one's latency from its file being complete."""
        for volume in volumes:
            self.send(volume)
            self.report.n_sent += 1
            self.report.latencies_ms.append((time.time() - volume.t_file_complete) * 1000.0)
            if self.progress is not None:
                self.progress.update(1)

    def done(self, assembler: SeriesAssembler) -> bool:
        """Tell whether the run should end: stopped, every volume accounted for, or idle too long."""
        if self.stop is not None and self.stop.is_set():
            return True
        if self.n_volumes is not None and self.report.n_sent + len(assembler.missing) >= self.n_volumes:
            return True
        return (self.idle_timeout is not None and self.report.n_sent > 0
                and time.monotonic() - self.last_activity > self.idle_timeout)

    def finish(self, watcher: FolderWatcher, assembler: SeriesAssembler) -> WatchReport:
        """Complete the report once the watch has stopped (warning of files that never became whole)."""
        report = self.report
        report.n_skipped = len(self.skipped) + len(self.rejected)
        report.missing = list(assembler.missing)
        incomplete = watcher.n_waiting - len(self.skipped)
        if incomplete > 0:
            log.warning("%d files never became complete", incomplete)
        return report


def _take_file(path: Path, t_ready: float, file_format: str | None, watcher: FolderWatcher,
               assembler: SeriesAssembler, skipped: dict[str, str], rejected: dict[str, str]) -> bool:
    """Read a ready file and give its pieces to the assembler; False if it is not read yet.

    A file still being written, or foreign or unreadable as it stands, is watched again
    (``skipped`` keeps the reason of the latter, logged once); pieces the assembler refuses
    (another series, repeats, late volumes) are logged and noted in ``rejected``.
    """
    try:
        pieces = read_file(path, file_format)
    except IncompleteFileError:
        watcher.retry(path)  # still being written
        return False
    except InputError as exc:  # foreign or unreadable as it stands
        watcher.retry(path)  # (read again should it change)
        if skipped.get(path.name) != str(exc):
            skipped[path.name] = str(exc)
            log.info("skipped %s: %s", path.name, exc)
        return False
    watcher.finish(path)
    skipped.pop(path.name, None)
    for piece in pieces:
        try:
            assembler.add(piece, t_ready)
        except ForeignFileError as exc:
            rejected[path.name] = str(exc)
            log.info("skipped %s: %s", path.name, exc)
    return True
