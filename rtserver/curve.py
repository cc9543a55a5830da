"""CurveZMQ on every link: certificates, the server's allow-list, and the sockets' options.

The "ironhouse" pattern of ZeroMQ's security guide, with pyzmq's :mod:`zmq.auth`:

- one folder of certificates in pyzmq's own format (:func:`zmq.auth.create_certificates`),
  made by :func:`make_keys`: ``server.key`` / ``server.key_secret`` and, for each client,
  ``client_<name>.key`` / ``client_<name>.key_secret``;
- the server holds its secret certificate and every client's public one: the public
  ``client_*.key`` files of the folder are its allow-list, read when it starts;
- each client (the bridge, the display, a results reader) holds its own secret certificate
  and the server's public one;
- every channel is encrypted, and a client whose key is not on the allow-list (or that
  does not speak CURVE) fails the handshake: none of its messages reaches the server.

The server side is :class:`CurveServer` (one ZAP authenticator per ZeroMQ context, started
and stopped with the server); a client side is :class:`ClientKeys`. Both are set on a socket
before it binds or connects. :func:`is_loopback` tells which endpoints stay on the machine.

This module is a shared definition: the server, the bridge and the display use it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.base import Authenticator
from zmq.auth.thread import ThreadAuthenticator

from rtserver.errors import ConfigError, InputError, TransportError

log = logging.getLogger(__name__)

#: Certificate name of the server (``server.key`` and ``server.key_secret``).
SERVER = "server"
#: Client certificates are named ``client_<name>``; their public halves are the allow-list.
CLIENT_PREFIX = "client_"
#: The clients :func:`make_keys` makes by default: the bridge, the display, a results reader.
DEFAULT_CLIENTS = ("bridge", "display", "results")
#: ZAP domain of the server's sockets (the authenticator answers for this domain only).
ZAP_DOMAIN = "rtserver"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: Where libzmq looks for the ZAP handler of a context (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]", "lo"}
_SETTING = "network.curve"


# --------------------------------------------------------------------------- certificates
@dataclass
class KeysReport:
    """What :func:`make_keys` did: the certificate files it wrote and the ones it kept."""

    folder: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def client_name(name: str) -> str:
    """Return the certificate name of client ``name`` (``bridge`` -> ``client_bridge``).

    Parameters
    ----------
    name : str
        Letters, digits, ``_`` and ``-``; an existing ``client_`` prefix is kept.

    Raises
    ------
    ConfigError
        If ``name`` holds other characters.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"A client name should be letters, digits, '_' or '-' (at most 64). "
                          f"Got {name!r}.")
    return name if name.startswith(CLIENT_PREFIX) else CLIENT_PREFIX + name


def make_keys(folder: str | Path, clients: tuple[str, ...] | list[str] = DEFAULT_CLIENTS
              ) -> KeysReport:
    """Make the server's certificate and each client's in ``folder`` (pyzmq's format).

    Existing certificates are kept, never overwritten: running it again adds only the
    clients that are missing. Secret certificates are readable by their owner only.

    Parameters
    ----------
    folder : str or Path
        Created if needed.
    clients : sequence of str
        Client names (see :func:`client_name`).

    Returns
    -------
    KeysReport
        The files written and the files kept.

    Raises
    ------
    ConfigError
        If a client name is invalid.
    InputError
        If the folder cannot be written, or holds only one half of a certificate.
    """
    folder = Path(folder)
    names = [SERVER] + [client_name(name) for name in clients]
    try:
        if not folder.is_dir():
            folder.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise InputError(f"Cannot create the keys folder {folder}: {exc.strerror}.",
                         setting=_SETTING) from None
    report = KeysReport(folder)
    for name in dict.fromkeys(names):
        public, secret = folder / (name + PUBLIC_SUFFIX), folder / (name + SECRET_SUFFIX)
        if public.exists() and secret.exists():
            report.kept += [public, secret]
            continue
        if public.exists() or secret.exists():
            half = public if public.exists() else secret
            raise InputError(f"{folder} holds {half.name} without its other half; expected "
                             f"both {public.name} and {secret.name} or neither. Remove it "
                             f"to make a new pair.", setting=_SETTING)
        try:
            zmq.auth.create_certificates(folder, name)
            os.chmod(secret, 0o600)
        except OSError as exc:
            raise InputError(f"Cannot write certificates in {folder}: {exc.strerror}.",
                             setting=_SETTING) from None
        report.created += [public, secret]
    return report


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    """Read the (public, secret) keys of one certificate file, with expected/got errors."""
    made_by = "as made by `rtserver keys`"
    if not path.is_file():
        raise InputError(f"The CURVE keys folder {path.parent} should hold {path.name} "
                         f"({made_by}). Got no such file.", setting=_SETTING)
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} should be a ZeroMQ CURVE certificate ({made_by}). "
                         f"Got: {exc}.", setting=_SETTING) from None
    if len(public) != 40 or (secret and (secret_key is None or len(secret_key) != 40)):
        raise InputError(f"{path} should hold a 40-character {'secret' if secret else 'public'} "
                         f"key ({made_by}). Got none or a damaged one.", setting=_SETTING)
    if secret and path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users; it should be private (chmod 600)", path)
    return public, secret_key


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The CURVE keys setting should name a folder of certificates (as "
                         f"made by `rtserver keys`). Got {str(folder)!r}, which is not a "
                         f"folder.", setting=_SETTING)
    return folder


def load_allow_list(folder: str | Path) -> dict[bytes, str]:
    """Read the clients the server lets in: every ``client_*.key`` of ``folder``.

    Returns
    -------
    dict
        Public key (Z85, 40 bytes) -> client certificate name.

    Raises
    ------
    InputError
        If the folder does not exist, a certificate is damaged, or there is no client.
    """
    folder = _folder(folder)
    allowed = {}
    for path in sorted(folder.glob(CLIENT_PREFIX + "*" + PUBLIC_SUFFIX)):
        public, _ = _load(path, secret=False)
        allowed[public] = path.name[:-len(PUBLIC_SUFFIX)]
    if not allowed:
        raise InputError(f"The CURVE keys folder {folder} should hold at least one client "
                         f"certificate ({CLIENT_PREFIX}*{PUBLIC_SUFFIX}). Got none.",
                         setting=_SETTING)
    return allowed


# --------------------------------------------------------------------------- clients
@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the server's public key, to set on a connecting socket.

    Use :meth:`load`; the secret key is never shown in a ``repr``.
    """

    name: str
    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes

    @classmethod
    def load(cls, folder: str | Path, name: str) -> ClientKeys:
        """Read client ``name``'s secret certificate and the server's public one.

        Parameters
        ----------
        folder : str or Path
            Holds ``server.key`` and ``client_<name>.key_secret``.
        name : str
            The client (``bridge``, ``display``, ...; see :func:`client_name`).

        Raises
        ------
        InputError
            If a certificate is missing or damaged.
        ConfigError
            If ``name`` is invalid.
        """
        folder = _folder(folder)
        full = client_name(name)
        public, secret = _load(folder / (full + SECRET_SUFFIX), secret=True)
        server_public, _ = _load(folder / (SERVER + PUBLIC_SUFFIX), secret=False)
        return cls(full, public, secret, server_public)

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client of the server (call before ``connect``)."""
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
        socket.curve_serverkey = self.server_public


def secure_client(socket: zmq.Socket, folder: str | Path, name: str) -> ClientKeys:
    """Make ``socket`` a CURVE client with client ``name``'s certificate from ``folder``.

    Returns
    -------
    ClientKeys
        The keys set on the socket.
    """
    keys = ClientKeys.load(folder, name)
    keys.apply(socket)
    return keys


# --------------------------------------------------------------------------- server
class _AllowList:
    """The authenticator's credentials provider: a client key is in, or it is refused."""

    def __init__(self, allowed: dict[bytes, str], folder: Path) -> None:
        self.allowed = allowed
        self.folder = folder
        self.refused: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def callback(self, domain: str, key: bytes) -> bool:
        """Admit a known key, refuse (and log once) any other; run by the authenticator's thread."""
        if key in self.allowed:
            log.debug("CURVE client %s admitted", self.allowed[key])
            return True
        with self._lock:
            self.refused[key] = self.refused.get(key, 0) + 1
            first = self.refused[key] == 1
        if first:  # a refused peer reconnects again and again: one line per key
            log.warning("refused a CURVE client whose public key %s is not on the allow-list "
                        "of %s", key.decode("ascii", "replace"), self.folder)
        return False


class _UnbindOnStop(Authenticator):
    """Release the ZAP endpoint at once when stopping (closing a socket releases it later)."""

    def stop(self) -> None:
        """Unbind the ZAP socket (its thread has ended), then close it."""
        if self.zap_socket is not None:
            try:
                self.zap_socket.unbind(ZAP_ENDPOINT)
            except zmq.ZMQError:
                pass  # never bound: the endpoint belongs to another authenticator
        super().stop()


class _Authenticator(ThreadAuthenticator, _UnbindOnStop):
    """pyzmq's thread authenticator, restartable at once in the same context.

    ``ThreadAuthenticator.stop`` joins its thread and then calls the next ``stop`` in line,
    :class:`_UnbindOnStop`'s, so the endpoint is free as soon as ``stop`` returns. The
    control pipe gets a unique name: pyzmq names it after ``id(self)``, which a new object
    can reuse before the old pipe's endpoint is released.
    """

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context, log=logging.getLogger("zmq.auth"))
        self.pipe_endpoint = f"inproc://rtserver-zap-pipe-{uuid.uuid4().hex}"


class CurveServer:
    """The server side of CURVE: its key pair, the allow-list and one ZAP authenticator.

    Parameters
    ----------
    folder : str or Path
        Holds ``server.key_secret`` and the clients' ``client_*.key``.

    Raises
    ------
    InputError
        If a certificate is missing or damaged, or there is no client certificate.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = _folder(folder)
        self.public, self.secret = _load(self.folder / (SERVER + SECRET_SUFFIX), secret=True)
        self._allow = _AllowList(load_allow_list(self.folder), self.folder)
        self._authenticator: _Authenticator | None = None

    @property
    def clients(self) -> list[str]:
        """Names of the clients on the allow-list."""
        return sorted(self._allow.allowed.values())

    @property
    def n_refused(self) -> int:
        """Handshakes refused so far (unknown client keys)."""
        return sum(self._allow.refused.values())

    def start(self, context: zmq.Context) -> CurveServer:
        """Start the ZAP authenticator of ``context`` (one per context).

        Raises
        ------
        TransportError
            If another authenticator already serves ``context``.
        """
        if self._authenticator is not None:
            return self
        authenticator = _Authenticator(context)
        authenticator.configure_curve_callback(domain=ZAP_DOMAIN,
                                               credentials_provider=self._allow)
        try:
            authenticator.start()
        except zmq.ZMQError as exc:
            authenticator.stop()
            raise TransportError(f"Cannot start the CURVE authenticator: the ZeroMQ context "
                                 f"should have none yet. Got: {exc.strerror}.") from None
        self._authenticator = authenticator
        log.info("CURVE on: %d clients allowed (%s) from %s", len(self.clients),
                 ", ".join(self.clients), self.folder)
        return self

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server that checks the allow-list (call before ``bind``).

        The socket refuses every client if the authenticator is not running.
        """
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no authenticator: no admission

    def stop(self) -> None:
        """Stop the authenticator (after the sockets it serves are closed)."""
        authenticator, self._authenticator = self._authenticator, None
        if authenticator is not None:
            authenticator.stop()
            if self.n_refused:
                log.warning("CURVE refused %d handshakes from %d unknown keys", self.n_refused,
                            len(self._allow.refused))


# --------------------------------------------------------------------------- endpoints
def is_loopback(endpoint: str) -> bool:
    """Tell whether binding ``endpoint`` keeps the socket on this machine.

    ``ipc://`` and ``inproc://`` are local; a ``tcp://`` endpoint is local only on a
    127.x.x.x address, ``::1``, ``localhost`` or the ``lo`` interface. ``*``, ``0.0.0.0``,
    any other address or interface name reaches beyond the machine.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return host in _LOOPBACK_HOSTS or re.fullmatch(r"127(\.\d{1,3}){3}", host) is not None
