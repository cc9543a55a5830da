"""Stop a running server on SIGINT or SIGTERM, however the signal lands.

A Python signal handler runs in the main thread between two bytecodes. A signal that lands
after the serving loop's last check and before it blocks in its poll would wait there until
the next message arrives, and a run could never be ended. So the interpreter is also told
to write every signal to a wake-up socket the moment it lands
(:func:`signal.set_wakeup_fd`), and a watcher thread stops the server from there
(:meth:`rtserver.service.server.Server.stop` is thread-safe). The run then ends as on the
bridge's end-of-run: everything received is flushed first.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger(__name__)

#: The signals that end a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stoppable(Protocol):
    """Anything with a thread-safe ``stop()``, such as a server."""

    def stop(self) -> None:
        """Ask it to finish."""


@contextlib.contextmanager
def stop_on_signals(server: Stoppable) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call ``server.stop()`` (from a watcher thread).

    Call from the main thread. On leaving, the previous handlers and wake-up fd are back.

    Parameters
    ----------
    server : Stoppable
        What to stop.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)

    def watch() -> None:
        with reader:
            while data := reader.recv(16):
                for signum in data:
                    if signum in STOP_SIGNALS:
                        log.info("received %s; finishing the run", signal.Signals(signum).name)
                        server.stop()

    watcher = threading.Thread(target=watch, name="signals", daemon=True)
    watcher.start()
    previous = {signum: signal.signal(signum, lambda *_: None)  # the watcher acts on it
                for signum in STOP_SIGNALS}
    old_fd = signal.set_wakeup_fd(writer.fileno())
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        writer.close()  # the watcher reads the end of the stream and returns
        watcher.join(5)
