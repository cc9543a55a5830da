"""The server's sockets: binding, the loopback rule and CURVE, the volume channel's header."""

from __future__ import annotations

import logging
import threading

import zmq

from rtserver import protocol
from rtserver.config import NetworkConfig
from rtserver.curve import CurveServer, is_loopback
from rtserver.errors import ConfigError, ProtocolError, TransportError

log = logging.getLogger(__name__)


def bind(socket: zmq.Socket, endpoint: str) -> str:
    """Bind ``socket`` and return the endpoint actually bound (ports may be ``*``).

    Raises
    ------
    TransportError
        If the endpoint cannot be bound (in use, bad address).
    """
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise TransportError(f"Cannot bind {endpoint}: {exc.strerror}.") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def channel_security(network: NetworkConfig) -> CurveServer | None:
    """Check who can reach the server's channels; return their CURVE side, if any.

    Returns
    -------
    CurveServer or None
        The server's keys and allow-list when ``network.curve`` is set, else ``None``.

    Raises
    ------
    ConfigError
        If an endpoint reaches beyond the loopback without CURVE and ``network.insecure``
        is not set.
    InputError
        If the CURVE certificates are missing or damaged.
    """
    if network.curve is not None:
        return CurveServer(network.curve)
    exposed = {name: getattr(network, name) for name in ("volumes", "feedback", "results")
               if not is_loopback(getattr(network, name))}
    if not exposed:
        return None
    names = ", ".join(f"{endpoint} ({name})" for name, endpoint in exposed.items())
    if not network.insecure:
        raise ConfigError(
            f"Refusing to bind {names} without CURVE: beyond the loopback anyone could send "
            f"volumes and read the feedback. Expected a CURVE keys folder (network.curve) or "
            f"an explicit network.insecure = true; got neither.",
            setting="network.curve,network.insecure")
    log.warning("binding %s WITHOUT CURVE (insecure): anyone who can reach it can send "
                "volumes and read the feedback", names)
    return None


def volume_channel_header(payload: list) -> dict:
    """Decode and check the header of a volume-channel message (a volume, or the end)."""
    if not payload:
        raise ProtocolError("A message should have at least a header frame. Got none.")
    header = protocol.parse_header(payload[0].bytes, [protocol.VOLUME, protocol.END])
    if header["type"] == protocol.END and len(payload) != 1:
        raise ProtocolError(f"An end-of-run message should have 1 frame (the header). "
                            f"Got {len(payload)}.")
    return header


class Wakers:
    """Wake the socket thread from any thread, through its control (PULL) socket.

    Each calling thread gets one PUSH socket, made on its first call and kept (a socket
    is never used by two threads); :meth:`close` closes them all once those threads are
    done.

    Parameters
    ----------
    context : zmq.Context
        The server's context.
    endpoint : str
        The control socket's ``inproc://`` endpoint.
    """

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self._context = context
        self._endpoint = endpoint
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()

    def wake(self, message: bytes) -> None:
        """Send ``message`` to the socket thread (dropped if the run is already over)."""
        socket = getattr(self._local, "socket", None)
        if socket is None:
            socket = self._context.socket(zmq.PUSH)
            socket.setsockopt(zmq.LINGER, 1000)
            socket.connect(self._endpoint)
            self._local.socket = socket
            with self._lock:
                self._sockets.append(socket)
        try:
            socket.send(message, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the run is over: nobody reads the control socket any more

    def recorded(self, index: int, ok: bool) -> None:
        """Tell the socket thread the recorder wrote volume ``index`` (or failed to)."""
        self.wake(b"rec %d %d" % (index, int(ok)))

    def close(self) -> None:
        """Close every socket made (call when the threads that used them are done)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for socket in sockets:
            socket.close()
