"""The scanner bridge: send each volume once, resend until the server acknowledges it.

The bridge owns one DEALER socket connected to the server's volume channel. Volumes go out
one at a time; each is resent every ``ack_timeout`` seconds until its acknowledgement
arrives (the server drops the duplicates this may cause), and the bridge gives up with a
clear error after ``timeout`` seconds without an answer. Pacing follows an absolute
schedule (volume ``k`` leaves at ``start + k * interval``), so delays do not accumulate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import zmq

from rtserver import protocol
from rtserver.errors import InputError, ProtocolError, TransportError
from rtserver.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class SendReport:
    """What a bridge run did."""

    n_sent: int = 0
    n_acknowledged: int = 0
    n_resent: int = 0
    rejected: dict[int, str] | None = None


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
    """

    def __init__(self, address: str, ack_timeout: float = 1.0, timeout: float = 30.0,
                 context: zmq.Context | None = None) -> None:
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
        self._socket: zmq.Socket | None = None
        self.report = SendReport(rejected={})

    def start(self) -> ScannerBridge:
        """Connect to the server (ZeroMQ connects lazily: the server may come up later)."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.address)
        except zmq.ZMQError as exc:
            sock.close()
            raise TransportError(f"Cannot connect to {self.address}: {exc.strerror}.") from None
        self._socket = sock
        return self

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> ScannerBridge:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
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
        for count, volume in enumerate(volumes, start=1):
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
            self._socket.send_multipart(frames, copy=False)
            first = False
            wait_until = min(deadline, time.monotonic() + self.ack_timeout)
            reply = self._await_reply(index, wait_until)
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
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
