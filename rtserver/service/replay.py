"""Serve and send in one process: replay a recorded session through the live code path.

The server runs in its own thread with its own sockets; the bridge connects to it over
loopback TCP exactly as a scanner bridge on another machine would.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from rtserver import bids
from rtserver.errors import TransportError
from rtserver.scanner.sources import VolumeSource
from rtserver.service.bridge import ScannerBridge, SendReport
from rtserver.service.server import Counters, Server

log = logging.getLogger(__name__)


class ServerThread:
    """Run a :class:`Server` on a background thread (binding happens in that thread)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.counters: Counters | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="server", daemon=True)

    def _main(self) -> None:
        try:
            self.server.start()
            self.counters = self.server.run()
        except BaseException as exc:  # reported to the main thread
            self.error = exc
            self.server.ready.set()

    def start(self, timeout: float = 120.0) -> ServerThread:
        """Start the thread and wait until the sockets are bound."""
        self._thread.start()
        if not self.server.ready.wait(timeout):
            raise TransportError(f"The server did not start within {timeout:g} s.")
        if self.error is not None:
            raise self.error
        return self

    def join(self, timeout: float | None = None) -> Counters | None:
        """Wait for the run to finish; re-raise the server's error, if any."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.counters

    def stop(self) -> None:
        """Ask the server to finish and flush."""
        self.server.stop()


def replay(source: VolumeSource, server: Server, interval: float | None,
           progress: object | None = None) -> tuple[SendReport, Counters | None]:
    """Replay ``source`` into ``server`` and wait for the run to finish.

    Parameters
    ----------
    source : VolumeSource
        The recorded session.
    server : Server
        A configured, not yet started server; with CURVE on (``config.network.curve``) the
        bridge authenticates with the ``client_bridge`` certificate of the same folder.
    interval : float or None
        Seconds between volumes (``None`` as fast as possible).
    progress : tqdm-like or None
        Updated once per volume.
    """
    thread = ServerThread(server).start()
    try:
        with ScannerBridge(server.endpoints["volumes"],
                           curve=server.config.network.curve) as bridge:
            report = bridge.send_all(source, interval=interval, progress=progress)
        counters = thread.join()
    except BaseException:
        thread.stop()
        thread.join(30)
        raise
    return report, counters


def output_prefix_from_source(path: Path) -> dict[str, str] | None:
    """BIDS entities (subject, task, run) from a source named ``sub-X_task-Y_run-Z_bold``."""
    found = bids.parse_entities(path.name)
    if found is None:
        return None
    run = found.run if re.search(r"_run-\d+", path.name) else None
    return {"subject": found.subject, "task": found.task, "run": run}
