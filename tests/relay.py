"""A recording TCP relay on 127.0.0.1, for tests that look at the bytes on the wire."""

from __future__ import annotations

import re
import selectors
import socket
import threading


class RecordingRelay:
    """Relays TCP connections to ``upstream`` and records the bytes that pass.

    Parameters
    ----------
    upstream : str
        The server's endpoint, ``tcp://host:port``.
    both_ways : bool
        Record the server's replies too (default: only what clients send).
    """

    def __init__(self, upstream: str, both_ways: bool = False) -> None:
        host, port = re.fullmatch(r"tcp://([\d.]+):(\d+)", upstream).groups()
        self.upstream = (host, int(port))
        self.both_ways = both_ways
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.recorded = bytearray()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._peers: dict[socket.socket, tuple[socket.socket, bool]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    return
                if sock is self.listener:
                    self._accept()
                elif sock in self._peers:  # else closed with its peer earlier in this batch
                    self._relay(sock)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.upstream)
        except OSError:  # the server has gone: a client's reconnection
            client.close()
            return
        self._peers[client] = (server, True)
        self._peers[server] = (client, False)
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(server, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        other, from_client = self._peers[sock]
        try:
            data = sock.recv(65536)
        except ConnectionError:
            data = b""
        if not data:
            for end in (sock, other):
                self._selector.unregister(end)
                self._peers.pop(end)
                end.close()
            return
        if from_client or self.both_ways:
            self.recorded += data
        other.sendall(data)

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._wake_w.send(b"x")
        self._thread.join(10)
        for sock in [*self._peers, self.listener, self._wake_r, self._wake_w]:
            sock.close()
