"""The scanner bridge: send each volume once, resend until the server acknowledges it.

The bridge owns one DEALER socket connected to the server's volume channel. Volumes go out
one at a time; each is resent every ``ack_timeout`` seconds until its acknowledgement
arrives (the server drops the duplicates this may cause), and the bridge gives up with a
clear error after ``timeout`` seconds without an answer. Pacing follows an absolute
schedule (volume ``k`` leaves at ``start + k * interval``), so delays do not accumulate.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from rtserver import protocol
from rtserver.curve import ClientKeys
from rtserver.errors import InputError, ProtocolError, TransportError
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: Socket events that mean the server would not shake hands (CURVE refused or mismatched).
_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused the bridge's CURVE certificate: its public key "
    "is not on the server's allow-list",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed the security handshake: both ends should "
    "use CURVE with the same server key, or neither should",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed the security handshake",
}


@dataclass
class SendReport:
    """What a bridge run did."""

    n_sent: int = 0
    n_acknowledged: int = 0
    n_resent: int = 0
    rejected: dict[int, str] | None = None


def read_ahead(volumes: Iterable[Volume], depth: int = 2) -> Iterator[Volume]:
    """Iterate ``volumes`` while a thread reads the next ones (at most ``depth`` ahead).

    Reading a volume from a file (a ``.nii.gz`` is decompressed) then overlaps with
    waiting for the previous one's acknowledgement; memory stays at ``depth`` volumes. An
    error in reading is raised here, at the volume it concerns.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put ``item`` in a slot unless the consumer has gone; False if it has."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for volume in volumes:
                if not offer(volume):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer
            offer(exc)

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class ScannerBridge:
    """Send volumes to a server's volume channel with acknowledgement and resending.

    Parameters
    ----------
    address : str
        The server's volume endpoint, e.g. ``tcp://127.0.0.1:5555``.
    ack_timeout : float
        Seconds to wait for an acknowledgement before resending.
    timeout : float
        Seconds without any acknowledgement after which the bridge gives up.
    context : zmq.Context or None
        Shared context (the global instance when ``None``).
    curve : str or Path or None
        Folder of CURVE certificates (:mod:`rtserver.curve`): the link is then encrypted and
        the bridge authenticates with the certificate ``client_<curve_client>``.
    curve_client : str
        Name of the bridge's client certificate in ``curve``.

    Raises
    ------
    InputError
        If the address is not an endpoint, a timeout is not positive, or the CURVE
        certificates cannot be read.
    """

    def __init__(self, address: str, ack_timeout: float = 1.0, timeout: float = 30.0,
                 context: zmq.Context | None = None, curve: str | Path | None = None,
                 curve_client: str = "bridge") -> None:
        if not protocol.is_endpoint(address):
            raise InputError(
                f"The server's volume endpoint should be a ZeroMQ endpoint like "
                f"tcp://127.0.0.1:5555. Got {address!r}.", setting="to"
            )
        if ack_timeout <= 0 or timeout <= 0:
            raise InputError("Timeouts should be > 0 seconds.")
        self.address = address
        self.ack_timeout = ack_timeout
        self.timeout = timeout
        self._context = context or zmq.Context.instance()
        self._keys = ClientKeys.load(curve, curve_client) if curve is not None else None
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._refused: str | None = None
        self.report = SendReport(rejected={})

    def start(self) -> ScannerBridge:
        """Connect to the server (ZeroMQ connects lazily: the server may come up later)."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # A server that refused the handshake leaves no peer: a send would wait for one.
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.ack_timeout * 1000)))
        if self._keys is not None:
            self._keys.apply(sock)
        events = 0
        for event in _HANDSHAKE_FAILURES:
            events |= event
        self._monitor = sock.get_monitor_socket(events)
        try:
            sock.connect(self.address)
        except zmq.ZMQError as exc:
            self._socket = sock
            self.close()
            raise TransportError(f"Cannot connect to {self.address}: {exc.strerror}.") from None
        self._socket = sock
        return self

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            if self._monitor is not None:
                self._socket.disable_monitor()
                self._monitor.close()
                self._monitor = None
            self._socket.close()
            self._socket = None

    def _handshake_refused(self) -> str | None:
        """Why the server would not shake hands, if it would not (checked without waiting)."""
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event in _HANDSHAKE_FAILURES and self._refused is None:
                self._refused = _HANDSHAKE_FAILURES[event]
                log.warning("the server at %s %s", self.address, self._refused)
        return self._refused

    def __enter__(self) -> ScannerBridge:
        """Connect (see :meth:`start`)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Close the socket."""
        self.close()

    # ------------------------------------------------------------------ sending
    def send_volume(self, volume: Volume) -> dict:
        """Send one volume and wait until it is acknowledged (or rejected).

        Returns
        -------
        dict
            The server's reply (``type`` ``ack`` or ``error``).
        """
        frames = protocol.encode_volume(volume, t_sent=time.time())
        reply = self._send_until_answered(frames, volume.index, f"volume {volume.index}")
        self.report.n_sent += 1
        if reply["type"] == protocol.ERROR:
            self.report.rejected[volume.index] = reply.get("error", "")
            log.error("server rejected volume %d: %s", volume.index, reply.get("error"))
        else:
            self.report.n_acknowledged += 1
        return reply

    def send_end(self, n_volumes: int) -> dict:
        """Tell the server the run is over after ``n_volumes`` volumes."""
        return self._send_until_answered(protocol.encode_end(n_volumes), None, "end of run")

    def send_all(self, volumes: Iterable[Volume], interval: float | None = None,
                 progress: object | None = None) -> SendReport:
        """Send every volume, paced every ``interval`` seconds (``None``: as fast as possible).

        Parameters
        ----------
        volumes : iterable of Volume
            In acquisition order.
        interval : float or None
            Seconds between volumes.
        progress : tqdm-like or None
            Updated once per volume.
        """
        start = time.monotonic()
        count = 0
        for count, volume in enumerate(read_ahead(volumes), start=1):
            if interval is not None:
                delay = start + (count - 1) * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.send_volume(volume)
            if progress is not None:
                progress.update(1)
        self.send_end(count)
        return self.report

    def _send_until_answered(self, frames: list, index: int | None, what: str) -> dict:
        if self._socket is None:
            raise TransportError("The bridge is not started; call start() first.")
        deadline = time.monotonic() + self.timeout
        first = True
        while True:
            if not first:
                self.report.n_resent += 1
                log.info("no acknowledgement for %s after %.1f s; resending", what,
                         self.ack_timeout)
            try:
                self._socket.send_multipart(frames, copy=False)
            except zmq.Again:
                pass  # no server to queue it for (or it refused us): wait, then resend
            first = False
            wait_until = min(deadline, time.monotonic() + self.ack_timeout)
            reply = self._await_reply(index, wait_until)
            if reply is not None:
                return reply
            refused = self._handshake_refused()
            if time.monotonic() >= deadline:
                if refused is not None:
                    raise TransportError(f"The server at {self.address} {refused}; no volume "
                                         f"was accepted within {self.timeout:g} s.")
                raise TransportError(
                    f"The server at {self.address} did not acknowledge {what} within "
                    f"{self.timeout:g} s. Is `rtserver serve` running there?"
                )

    def _await_reply(self, index: int | None, wait_until: float) -> dict | None:
        """The reply about ``index``; older replies (to resent volumes) are skipped."""
        while True:
            remaining = wait_until - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000) + 1):
                return None
            frames = self._socket.recv_multipart()
            try:
                reply = protocol.decode_reply(frames[-1])
            except ProtocolError as exc:
                log.warning("ignored a malformed reply from the server: %s", exc)
                continue
            if reply.get("index") == index:
                return reply
