"""The feedback channel's receiving end: one thread owns the SUB socket.

The thread polls the socket with a short timeout, decodes every message with
:func:`rtserver.protocol.decode_feedback` and puts an :class:`Arrival` on a
:class:`queue.Queue`. The drawing thread drains that queue once per frame and so never
blocks on the network. Malformed messages are logged (one line each, up to a limit), handed
over as :class:`Malformed` so the drawing thread can count them, and otherwise ignored.

:func:`processed_volumes` asks the server's results channel, once before the run, how many
volumes it has processed: a display started while the run is going rejoins it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from rtserver import protocol
from rtserver.curve import ClientKeys
from rtserver.errors import ConfigError, ProtocolError, TransportError

log = logging.getLogger(__name__)

DEFAULT_SERVER = protocol.DEFAULT_FEEDBACK
#: The display's client certificate in a CURVE keys folder (``client_display.key_secret``).
CURVE_CLIENT = "display"
#: Malformed messages logged one by one; later ones are only counted.
MAX_LOGGED_MALFORMED = 20
#: Seconds to wait for the results channel's answer to a status request.
STATUS_TIMEOUT = 1.0


@dataclass(frozen=True)
class RunEnd:
    """The server's end-of-run message: it published feedback for ``n_volumes`` volumes."""

    n_volumes: int


@dataclass(frozen=True)
class Malformed:
    """A message that failed validation; ``reason`` is the protocol error's message."""

    reason: str


@dataclass(frozen=True)
class Arrival:
    """One received message and when it arrived (``time.monotonic()`` seconds)."""

    t_arrival: float
    item: protocol.FeedbackEvent | RunEnd | Malformed


def check_endpoint(address: str) -> str:
    """Return ``address`` if it is a ZeroMQ endpoint one can connect to.

    Parameters
    ----------
    address : str
        ``tcp://host:port``, ``ipc://path`` or ``inproc://name``.

    Raises
    ------
    TransportError
        If the address is not of one of those forms.
    """
    if not protocol.is_endpoint(address):
        raise TransportError(
            f"--server should be a ZeroMQ endpoint such as {DEFAULT_SERVER}. Got {address!r}."
        )
    return address


def decode_message(frames: list[bytes], t_arrival: float) -> Arrival:
    """Decode one multipart message into an :class:`Arrival` (never raises on bad input)."""
    try:
        decoded = protocol.decode_feedback(frames)
    except ProtocolError as exc:
        return Arrival(t_arrival, Malformed(str(exc)))
    if isinstance(decoded, int):
        return Arrival(t_arrival, RunEnd(decoded))
    return Arrival(t_arrival, decoded)


class FeedbackSubscriber:
    """Receive feedback events on a background thread.

    Parameters
    ----------
    address : str
        The server's feedback (PUB/XPUB) endpoint to connect to.
    poll_ms : int
        Poll timeout of the receiving thread; bounds how long :meth:`close` waits.
    context : zmq.Context or None
        Context to create the socket in; a private one (terminated on close) if None.
    curve : str or Path or None
        Folder of CURVE certificates (:mod:`rtserver.curve`): the channel is then encrypted
        and the display authenticates with ``client_<curve_client>.key_secret``.
    curve_client : str
        Name of the display's client certificate in ``curve``.

    Raises
    ------
    TransportError
        If ``address`` is not a ZeroMQ endpoint.
    ConfigError
        If ``poll_ms`` is below 1.
    InputError
        If the CURVE certificates cannot be read.

    Attributes
    ----------
    queue : queue.Queue of Arrival
        Received messages, in order of arrival.

    Examples
    --------
    >>> with FeedbackSubscriber("tcp://127.0.0.1:5556") as subscriber:  # doctest: +SKIP
    ...     arrival = subscriber.queue.get(timeout=1.0)
    """

    def __init__(self, address: str = DEFAULT_SERVER, poll_ms: int = 20,
                 context: zmq.Context | None = None, curve: str | Path | None = None,
                 curve_client: str = CURVE_CLIENT) -> None:
        self.address = check_endpoint(address)
        if poll_ms < 1:
            raise ConfigError(f"'poll_ms' should be >= 1. Got {poll_ms!r}.")
        self.keys = ClientKeys.load(curve, curve_client) if curve is not None else None
        self.poll_ms = poll_ms
        self.queue: queue.Queue[Arrival] = queue.Queue()
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._n_malformed_logged = 0
        self._thread = threading.Thread(target=self._run, name="feedback-subscriber",
                                        daemon=True)

    def start(self) -> FeedbackSubscriber:
        """Connect and start receiving.

        Raises
        ------
        TransportError
            If the socket cannot connect to :attr:`address`.
        """
        self._thread.start()
        self._ready.wait(timeout=10.0)
        if self._error is not None:
            self.close()
            raise TransportError(self._error)
        return self

    def close(self) -> None:
        """Stop the receiving thread and close its socket (linger 0)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0 + self.poll_ms / 1000.0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> FeedbackSubscriber:
        """Connect and start receiving (see :meth:`start`)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop receiving (see :meth:`close`)."""
        self.close()

    def _run(self) -> None:
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            if self.keys is not None:
                self.keys.apply(socket)
            socket.setsockopt(zmq.SUBSCRIBE, protocol.FEEDBACK_TOPIC)
            socket.connect(self.address)
        except zmq.ZMQError as exc:
            self._error = f"Cannot connect to {self.address}: {exc}."
            socket.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        try:
            self._receive_until_stopped(socket)
        finally:
            socket.close(linger=0)

    def _receive_until_stopped(self, socket: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(self.poll_ms):
                continue
            while True:
                try:
                    frames = socket.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                arrival = decode_message(frames, time.monotonic())
                if isinstance(arrival.item, Malformed):
                    self._log_malformed(arrival.item)
                self.queue.put(arrival)

    def _log_malformed(self, item: Malformed) -> None:
        self._n_malformed_logged += 1
        if self._n_malformed_logged <= MAX_LOGGED_MALFORMED:
            log.warning("ignored a malformed feedback message: %s", item.reason)
        if self._n_malformed_logged == MAX_LOGGED_MALFORMED:
            log.warning("further malformed messages are counted but not logged")


def processed_volumes(address: str, timeout: float = STATUS_TIMEOUT,
                      context: zmq.Context | None = None,
                      keys: ClientKeys | None = None) -> int | None:
    """Ask the server's results channel how many volumes it has processed.

    Parameters
    ----------
    address : str
        The results (REP) endpoint to connect to.
    timeout : float
        Seconds to wait for the answer.
    context : zmq.Context or None
        Context to create the socket in; a private one (terminated on return) if None.
    keys : ClientKeys or None
        The display's CURVE keys, when the channels are encrypted.

    Returns
    -------
    int or None
        The server's count of processed volumes; None without a valid answer within
        ``timeout`` (no server yet, or one still waiting for its display), logged.
    """
    own_context = context is None
    context = context if context is not None else zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(socket)
    try:
        socket.connect(address)
        socket.send(protocol.encode_status_request())
        if not socket.poll(int(timeout * 1000)):
            log.info("no answer from the results channel %s within %g s", address, timeout)
            return None
        reply = protocol.decode_response(socket.recv())
    except (zmq.ZMQError, ProtocolError) as exc:
        log.warning("no status from the results channel %s: %s", address, exc)
        return None
    finally:
        socket.close(linger=0)
        if own_context:
            context.term()
    n_processed = reply.get("n_processed")
    if (reply["type"] != protocol.STATUS or isinstance(n_processed, bool)
            or not isinstance(n_processed, int) or n_processed < 0):
        log.warning("the results channel %s answered without a count of processed volumes: "
                    "%s", address, reply)
        return None
    log.info("the server has processed %d volumes", n_processed)
    return n_processed
