"""A served loopback server to send crafted messages to, and the strategies that generate them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import zmq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rtserver import protocol
from rtserver.config import Config
from rtserver.errors import ProtocolError
from rtserver.service.replay import ServerThread
from rtserver.service.server import Server
from rtserver.volume import Volume

ANY_PORT = "tcp://127.0.0.1:*"
PREFIX = "sub-01_task-regulation_run-1"
REPLY_MS = 10000
#: Longest error message a reply may carry: values are shown truncated, never whole.
MAX_ERROR_CHARS = 400


def loopback_config() -> Config:
    return Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                            "results": ANY_PORT})


class Harness:
    """A server on its own thread, a DEALER on its volume channel, a SUB on its feedback."""

    def __init__(self, out: Path, context: zmq.Context, blob: Volume) -> None:
        self.out = out
        self.blob = blob
        self.context = context
        self.server = Server(loopback_config(), out, context=context)
        self.thread = ServerThread(self.server).start()
        self.dealer = self._socket(zmq.DEALER, "volumes")
        self.sub = self._socket(zmq.SUB, "feedback")
        self.sub.setsockopt(zmq.SUBSCRIBE, protocol.FEEDBACK_TOPIC)
        self.req = self._socket(zmq.REQ, "results")
        assert self.server.subscribed.wait(10), "the feedback subscription never arrived"

    def _socket(self, kind: int, channel: str) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.server.endpoints[channel])
        return sock

    def volume(self, index: int, data: np.ndarray | None = None) -> Volume:
        """A valid volume of the run's grid (the blob, or ``data`` on its grid)."""
        return Volume(self.blob.data if data is None else data, self.blob.affine,
                      index=index, tr=self.blob.tr)

    def send(self, frames: list) -> dict:
        """Send one message on the volume channel; return the server's decoded reply."""
        self.dealer.send_multipart(frames)
        assert self.dealer.poll(REPLY_MS), f"the server did not answer ({self.thread.error!r})"
        return protocol.decode_reply(self.dealer.recv_multipart()[-1])

    def send_volume(self, volume: Volume) -> dict:
        return self.send(protocol.encode_volume(volume))

    def request(self, frames: list) -> dict:
        """Send one request on the results channel; return the decoded reply."""
        self.req.send_multipart(frames)
        assert self.req.poll(REPLY_MS), f"the server did not answer ({self.thread.error!r})"
        return protocol.decode_response(self.req.recv())

    def feedback(self) -> protocol.FeedbackEvent | int:
        assert self.sub.poll(REPLY_MS), "no feedback was published"
        return protocol.decode_feedback(self.sub.recv_multipart())

    def alive(self) -> bool:
        return self.thread._thread.is_alive() and self.thread.error is None

    def finish(self, n_volumes: int) -> dict:
        """End the run with the bridge's end-of-run message; return the session JSON."""
        assert self.send(protocol.encode_end(n_volumes))["status"] == "end"
        self.thread.join(timeout=30)
        return json.loads(self.session_path.read_text())

    @property
    def session_path(self) -> Path:
        return self.out / f"{PREFIX}_desc-session.json"

    def close(self) -> None:
        self.server.stop()
        self.thread._thread.join(timeout=30)
        for sock in (self.dealer, self.sub, self.req):
            sock.close()


def header_of(volume: Volume) -> dict:
    return json.loads(bytes(protocol.encode_volume(volume)[0]))


def crafted(volume: Volume, **changes) -> list:
    """The volume's frames with header fields replaced (JSON-encodable values)."""
    header_bytes, buffer = protocol.encode_volume(volume)
    header = {**json.loads(bytes(header_bytes)), **changes}
    return [json.dumps(header).encode(), bytes(buffer)]


def assert_refused(reply: dict, *words: str) -> None:
    """An error reply, short, whose message names the problem."""
    assert reply["type"] == "error", reply
    message = reply["error"]
    assert len(message) <= MAX_ERROR_CHARS, message
    for word in words:
        assert word in message, message


def json_values(max_leaves: int = 12):
    scalars = (st.none() | st.booleans() | st.integers() | st.floats()
               | st.text(max_size=12))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=max_leaves)


VOLUME_FIELDS = ["protocol", "type", "index", "shape", "dtype", "affine", "tr",
                 "t_file_complete", "t_sent", "nbytes", "meta", "n_volumes", "extra"]
ODD_VALUES = st.sampled_from([None, -1, 0, 1, 2**31, 2**63, 2**64, protocol.MAX_VOLUMES,
                              1e308, -0.0, "", "volume", "end", "<f4", [], {}, [[]],
                              [32, 32, 20], [32, 32, 1], [[1, 0, 0, 0]] * 4, True])


def encode_json(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def volume_messages(draw, good: list[bytes], new_index) -> list[bytes]:
    """A random message for the volume channel, often close to a valid volume.

    ``new_index()`` gives each odd-valued volume an index not used before (drawn indices
    cluster on a few small values, which would make most of them duplicates).
    """
    header = json.loads(good[0])
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "mutated", "bytes-flipped",
                                 "frames", "frames", "voxels"]))
    if kind == "voxels":
        return odd_volume(draw, header, new_index())
    if kind == "bytes":
        return draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    if kind == "json":
        body = draw(json_values() | st.dictionaries(st.sampled_from(VOLUME_FIELDS),
                                                    json_values(6), max_size=8))
        return [encode_json(body), *draw(st.lists(st.binary(max_size=64), max_size=2))]
    if kind == "bytes-flipped":
        raw = bytearray(good[0])
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return [bytes(raw), good[1]]
    if kind == "frames":
        frames = [good[0], good[1]][: draw(st.integers(1, 2))]
        return frames + draw(st.lists(st.binary(max_size=32), min_size=0, max_size=3))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(VOLUME_FIELDS))
        if draw(st.booleans()) and name in header:
            del header[name]
        else:
            header[name] = draw(ODD_VALUES | json_values(6))
    voxels = draw(st.sampled_from(["good", "short", "random"]))
    if voxels == "good":
        buffer = good[1]
    elif voxels == "short":
        buffer = good[1][: draw(st.integers(0, len(good[1]) - 1))]
    else:
        buffer = np.random.default_rng(draw(st.integers(0, 2**32))).bytes(len(good[1]))
    return [encode_json(header), buffer]


def odd_volume(draw, header: dict, index: int) -> list[bytes]:
    """A valid header of the run's grid, at a new index, with odd voxel values."""
    shape = tuple(header["shape"])
    dtype = draw(st.sampled_from(["<f4", ">f4", "<f8", "<i2", "|u1"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    fill = draw(st.sampled_from(["bytes", "nan", "inf", "zero", "constant", "huge", "noise",
                                 "half-nan", "one-slice"]))
    if fill == "bytes":  # any bit pattern: NaNs, infinities, denormals, huge numbers
        data = np.frombuffer(rng.bytes(math.prod(shape) * np.dtype(dtype).itemsize), dtype)
    else:
        data = rng.normal(1000.0, 100.0, shape)
        if fill == "one-slice":
            data[:, :, 1:] = 0.0
        values = {"nan": np.nan, "inf": -np.inf, "zero": 0.0, "constant": 7.0, "huge": 3e38}
        if fill in values:
            data[...] = values[fill]
        elif fill == "half-nan":
            data[: shape[0] // 2] = np.nan
        with np.errstate(invalid="ignore", over="ignore"):
            data = data.astype(dtype)
    header = {**header, "index": index, "dtype": dtype, "nbytes": int(data.nbytes)}
    return [encode_json(header), data.tobytes()]


def ends_the_run(frames: list[bytes]) -> bool:
    """True for a valid end-of-run message (which would rightly stop the server)."""
    try:
        header = protocol.parse_header(frames[0], [protocol.END])
        protocol.decode_end(header)
    except ProtocolError:
        return False
    return len(frames) == 1


FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@st.composite
def results_requests(draw) -> list[bytes]:
    """A random request for the results channel."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "frames"]))
    if kind == "bytes":
        return draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    if kind == "json":
        return [encode_json(draw(json_values()))]
    good = {"protocol": protocol.PROTOCOL,
            "type": draw(st.sampled_from(["result_request", "status_request"])),
            "volume": draw(st.integers(-2, 3) | ODD_VALUES)}
    if kind == "frames":
        return [encode_json(good), *draw(st.lists(st.binary(max_size=16), min_size=1,
                                                  max_size=3))]
    name = draw(st.sampled_from(["protocol", "type", "volume", "extra"]))
    good[name] = draw(ODD_VALUES | json_values(6))
    return [encode_json(good)]


