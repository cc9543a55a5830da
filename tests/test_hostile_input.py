"""Hostile and odd input never stops the server.

Every case goes through a real server on real loopback sockets (random ports): crafted
frames from a raw DEALER socket on the volume channel, and from a REQ socket on the
results channel. Each case must be answered with an error that names the problem, be
counted in the session JSON, and leave the server up: the next valid volume is processed.
Then property-based fuzzing (hypothesis) of both channels: over a thousand generated
messages each, every one answered, the server still up, and a valid volume processed after.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from feedback_display.feedback_state import BarState, FeedbackState
from feedback_display.thermometer import BASELINE_VALUE
from rtserver import protocol
from rtserver.config import Config
from rtserver.errors import ProtocolError
from rtserver.service import run_info as server_module
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


@pytest.fixture
def served(tmp_path, blob_volume):
    context = zmq.Context()
    harness = Harness(tmp_path / "out", context, blob_volume)
    yield harness
    harness.close()
    context.term()


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


# ------------------------------------------------------------------ the failures
def test_a_5000_digit_integer_in_the_header_is_refused(served):
    header, buffer = protocol.encode_volume(served.volume(0))
    raw = bytes(header).replace(b'"index":0', b'"index":' + b"7" * 5000)
    assert b"7" * 5000 in raw
    assert_refused(served.send([raw, bytes(buffer)]), "number", "5000")
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    session = served.finish(1)
    assert session["n_malformed"] == 1 and session["n_processed"] == 1


def test_30000_nested_brackets_are_refused_before_parsing(served):
    raw = b'{"protocol":"rtfmri/1","type":"volume","x":' + b"[" * 30000 + b"]" * 30000 + b"}"
    assert len(raw) <= protocol.MAX_HEADER_BYTES
    assert_refused(served.send([raw, b"1234"]), "nested", "30001")
    assert_refused(served.send([b"{" * 60000]), "nested")
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert served.finish(1)["n_malformed"] == 2


def test_brackets_inside_strings_do_not_count_as_nesting(served):
    header = header_of(served.volume(0))
    header["meta"] = {"kind": "[" * 40}  # a string: fine for the parser, dropped by meta
    _, buffer = protocol.encode_volume(served.volume(0))
    assert served.send([json.dumps(header).encode(), bytes(buffer)])["status"] == "recorded"
    assert served.finish(1)["n_malformed"] == 0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"dtype": ["<f4"]}, ["'dtype'", "['<f4']"]),
        ({"dtype": {"a": 1}}, ["'dtype'"]),
        ({"type": ["volume"]}, ["'type'"]),
        ({"protocol": {"v": 1}}, ["'protocol'"]),
        ({"shape": [32, 32, [20]]}, ["'shape'"]),
        ({"affine": [[1, 0, 0, 0]] * 4 + [{}]}, ["'affine'"]),
        ({"affine": [["1", 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, ["'affine'"]),
        ({"tr": [2.0]}, ["'tr'"]),
        ({"nbytes": "81920"}, ["'nbytes'"]),
        ({"meta": [1]}, ["'meta'"]),
    ],
)
def test_every_field_is_type_checked_not_only_its_value(served, changes, words):
    assert_refused(served.send(crafted(served.volume(0), **changes)), *words)
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert served.finish(1)["n_malformed"] == 1


def test_index_2_to_the_64_is_refused_before_any_acknowledgement(served):
    reply = served.send(crafted(served.volume(0), index=2**64))
    assert_refused(reply, "'index'", str(protocol.MAX_VOLUMES - 1))
    assert not served.sub.poll(200), "nothing may be published for a refused volume"
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert served.alive()
    session = served.finish(1)
    assert session["n_malformed"] == 1 and session["n_received"] == 1


@pytest.mark.parametrize("shape", [(64, 64, 1), (1, 32, 20), (32, 1, 20)])
def test_a_single_slice_first_volume_is_refused_with_expected_and_got(served, shape):
    thin = np.ones(shape, np.float32)
    reply = served.send_volume(Volume(thin, served.blob.affine, index=0, tr=2.0))
    assert_refused(reply, "'shape'", "at least 2", str(list(shape)))
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert served.alive()
    assert served.finish(1)["n_malformed"] == 1


@pytest.mark.parametrize(
    ("affine", "words"),
    [
        ("[[3,0,0,0],[0,3,0,0],[0,0,0,0],[0,0,0,1]]", ["'affine'", "singular"]),
        ("[[3,0,0,0],[0,3,0,0],[0,0,1e999,0],[0,0,0,1]]", ["'affine'", "finite"]),
        ("[[1e6,1e6,0,0],[1e6,1000000.001,0,0],[0,0,1,0],[0,0,0,1]]", ["'affine'", "singular"]),
        ("[[3,0,0,0],[0,3,0,0],[0,0,3,0]]", ["'affine'", "4x4"]),
    ],
)
def test_degenerate_geometry_is_refused(served, affine, words):
    header, buffer = protocol.encode_volume(served.volume(0))
    raw = bytes(header).decode()
    original = json.dumps(np.asarray(served.blob.affine).tolist(), separators=(",", ":"))
    assert original in raw
    raw = raw.replace(original, affine)
    assert_refused(served.send([raw.encode(), bytes(buffer)]), *words)
    for tr in (0, -2.0, 1e-300, 1e300):
        assert_refused(served.send(crafted(served.volume(0), tr=tr)), "'tr'")
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert served.finish(1)["n_malformed"] == 5


def test_nan_and_infinity_are_not_json(served):
    header, buffer = protocol.encode_volume(served.volume(0))
    raw = bytes(header).replace(b'"tr":2.0', b'"tr":NaN')
    assert b"NaN" in raw
    assert_refused(served.send([raw, bytes(buffer)]), "NaN")
    raw = bytes(header).replace(b'"tr":2.0', b'"tr":-Infinity')
    assert_refused(served.send([raw, bytes(buffer)]), "-Infinity")
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert served.finish(1)["n_malformed"] == 2


@pytest.mark.parametrize("index", [2_147_483_648, 10**7, protocol.MAX_VOLUMES])
def test_an_index_beyond_the_run_bound_is_refused_and_nothing_is_materialised(
        served, index, caplog):
    caplog.set_level(logging.WARNING, logger="rtserver.service.server")
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert_refused(served.send(crafted(served.volume(0), index=index)), "'index'",
                   f"<= {protocol.MAX_VOLUMES - 1}")
    assert served.send_volume(served.volume(1))["status"] == "recorded"
    served.request([protocol.encode_status_request()])  # the volume has been recorded
    assert max(len(record.getMessage()) for record in caplog.records) < 300
    session = served.finish(2)
    assert session["n_malformed"] == 1 and session["n_processed"] == 2
    assert session["gaps"] == [] and session["missing"] == []


def test_a_gap_is_recorded_as_a_range_in_one_short_log_line(served, caplog):
    caplog.set_level(logging.WARNING, logger="rtserver.service.server")
    last = protocol.MAX_VOLUMES - 1
    for index in (0, 5, last):
        assert served.send_volume(served.volume(index))["status"] == "recorded"
    # The serving thread acknowledges, then records; a status request queues behind that.
    status = served.request([protocol.encode_status_request()])
    assert status["gaps"] == [[1, 4], [6, last - 1]]
    gap_lines = [r.getMessage() for r in caplog.records if "not arrived" in r.getMessage()]
    assert gap_lines == ["volumes 1-4 have not arrived (gap before volume 5)",
                         f"volumes 6-{last - 1} have not arrived (gap before volume {last})"]
    session = served.finish(protocol.MAX_VOLUMES)
    assert session["gaps"] == [[1, 4], [6, last - 1]]
    assert session["missing"] == [[1, 4], [6, last - 1]]
    assert session["n_missing"] == protocol.MAX_VOLUMES - 3
    assert served.session_path.stat().st_size < 20_000


def test_an_end_of_run_beyond_the_bound_is_refused_and_the_session_stays_small(served):
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    assert_refused(served.send(protocol.encode_end(2 * 10**7)), "'n_volumes'",
                   str(protocol.MAX_VOLUMES))
    end = json.dumps({"protocol": protocol.PROTOCOL, "type": "end", "n_volumes": 3}).encode()
    assert_refused(served.send([end, b"extra"]), "1 frame", "Got 2")
    assert served.alive()
    assert served.send_volume(served.volume(1))["status"] == "recorded"
    session = served.finish(protocol.MAX_VOLUMES)
    assert session["n_malformed"] == 2
    assert session["missing"] == [[2, protocol.MAX_VOLUMES - 1]]
    assert served.session_path.stat().st_size < 20_000


def test_a_flood_of_malformed_messages_is_answered_but_logged_in_few_short_lines(
        served, caplog):
    caplog.set_level(logging.WARNING, logger="rtserver.service.server")
    header, buffer = protocol.encode_volume(served.volume(0))
    huge = bytes(header).replace(b'"index":0', b'"index":' + b"7" * 5000)
    for _ in range(250):
        assert_refused(served.send([huge, bytes(buffer)]), "number")
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    served.request([protocol.encode_status_request()])
    lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == server_module.LOGGED_REFUSALS + 2  # 20 lines, then the 100th, 200th
    assert "(100 so far)" in lines[-2] and max(len(line) for line in lines) < 300
    assert served.finish(1)["n_malformed"] == 250


# ------------------------------------------------------------------ non-finite voxels
def test_one_nan_voxel_is_counted_recorded_as_received_and_feedback_stays_finite(served):
    data = served.blob.data.copy()
    centre = tuple(n // 2 for n in data.shape)
    data[centre] = np.nan
    for index in range(4):
        volume = served.volume(index, data if index == 2 else None)
        assert served.send_volume(volume)["status"] == "recorded"
        event = served.feedback()
        assert event.volume == index
        assert event.value is not None and math.isfinite(event.value)
        assert all(math.isfinite(v) for v in event.rois.values())
        assert math.isfinite(event.fd)
    session = served.finish(4)
    assert session["status"] == "complete"
    assert served.thread.error is None
    assert (session["n_processed"], session["n_rejected"]) == (4, 0)
    assert session["n_nonfinite_volumes"] == 1 and session["n_nonfinite_voxels"] == 1
    bold = np.asanyarray(nib.load(served.out / f"{PREFIX}_bold.nii.gz").dataobj)
    assert np.isnan(bold[(*centre, 2)]) and np.isnan(bold[..., 2]).sum() == 1
    assert np.array_equal(bold[..., 2], data, equal_nan=True)


def test_a_nan_background_is_set_aside_not_rejected(served):
    data = served.blob.data.copy()
    background = data < 0.5
    assert background.sum() > 1000 and not background[16, 16, 10]
    data[background] = np.nan
    data[0, 0, 0] = np.inf
    n_bad = int(background.sum()) + (0 if background[0, 0, 0] else 1)
    for index in range(3):
        assert served.send_volume(served.volume(index, data))["status"] == "recorded"
        event = served.feedback()
        assert event.value is not None and math.isfinite(event.value)
        assert event.censored is False and event.fd == pytest.approx(0.0, abs=0.01)
    session = served.finish(3)
    assert (session["n_processed"], session["n_rejected"]) == (3, 0)
    assert session["n_nonfinite_volumes"] == 3
    assert session["n_nonfinite_voxels"] == 3 * n_bad


def test_a_volume_without_finite_roi_signal_has_its_feedback_withheld(served):
    """All NaN, or NaN over half the brain: recorded as received, kept out of the baseline,
    and published with ``value`` null and a reason, never NaN and never made up.
    """
    half = served.blob.data.copy()
    half[:16] = np.nan
    sent = [None, None, np.full(served.blob.shape, np.nan, np.float32), half, None]
    for index, data in enumerate(sent):
        assert served.send_volume(served.volume(index, data))["status"] == "recorded"
        event = served.feedback()
        if data is None:
            assert event.withheld is None and math.isfinite(event.value)
        else:
            assert event.value is None and event.p_drug is None
            assert "% of ROI 'brain' was not finite" in event.withheld, event.withheld
    session = served.finish(len(sent))
    assert (session["n_processed"], session["n_withheld"], session["n_rejected"]) == (5, 2, 0)
    assert session["n_nonfinite_volumes"] == 2
    rows = (served.out / f"{PREFIX}_desc-feedback_timeseries.tsv").read_text().splitlines()
    assert [row.split("\t")[1] == "" for row in rows[1:]] == [False, False, True, True, False]


def test_absurd_finite_voxels_are_rejected_and_the_next_volume_processed(served):
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    huge = np.full(served.blob.shape, 3e38, np.float32)
    assert_refused(served.send_volume(served.volume(1, huge)), "Volume 1")
    served.feedback()  # volume 0's
    assert served.send_volume(served.volume(2))["status"] == "recorded"
    event = served.feedback()
    assert event.volume == 2 and math.isfinite(event.value)
    assert served.finish(3)["n_rejected"] == 1


def test_a_withheld_value_travels_as_null_with_a_reason():
    event = protocol.FeedbackEvent(volume=3, value=None, censored=False, fd=0.1,
                                   withheld="non-finite feedback value")
    decoded = protocol.decode_feedback(protocol.encode_feedback(event))
    assert decoded.value is None and decoded.withheld == "non-finite feedback value"
    header = {**event.to_dict(), "withheld": None}
    with pytest.raises(ProtocolError, match="'value' should be a finite number"):
        protocol.decode_feedback([protocol.FEEDBACK_TOPIC, json.dumps(header).encode()])


def test_the_display_shows_the_neutral_state_for_a_withheld_value():
    """A withheld value moves the bar to baseline in the neutral colour (one
    ``feedback_unavailable`` row), leaves intermittent means alone, and the next value
    is shown as usual.
    """
    def event(volume, value, withheld=None):
        return protocol.FeedbackEvent(volume=volume, value=value, censored=False, fd=0.1,
                                      withheld=withheld)

    state, bar = FeedbackState(stale_after=5.0), BarState(animation_frames=2)
    state.receive(event(1, 0.9), 0.0)
    assert bar.continuous(state, 0.01, 0.0, 2, 1).row["value"] == 0.9
    bar.continuous(state, 0.02, 0.0, 2, 2)
    state.receive(event(2, None, "100% of ROI 'brain' was not finite"), 0.1)
    frames = [bar.continuous(state, 0.11 + i / 60, 0.0, 2, 3 + i) for i in range(3)]
    assert frames[0].row == {"trial_type": "feedback_unavailable", "block": 2, "frame": 3}
    assert [f.fill for f in frames] == ["unavailable"] * 3
    assert frames[-1].value == BASELINE_VALUE
    assert state.block_mean(0, 5) == pytest.approx(0.9)
    state.receive(event(3, 0.2), 0.2)
    shown = bar.continuous(state, 0.21, 0.0, 2, 10)
    assert shown.fill == "value" and shown.row["value"] == 0.2
    state.receive(event(4, None, "withheld"), 0.3)
    bar.follow_unseen(state, 0.31, 0.0)
    bar.follow_unseen(state, 0.32, 0.0)
    assert bar.animator.value == BASELINE_VALUE


# ------------------------------------------------------------------ fuzzing
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


def test_fuzzed_volume_channel_every_message_answered_server_stays_up(served):
    first = served.volume(0)
    good = [bytes(frame) for frame in protocol.encode_volume(first)]
    assert served.send(good)["status"] == "recorded"
    received = {0}
    n_sent = 0

    @FUZZ
    @given(frames=volume_messages(good, itertools.count(1_000).__next__))
    def check(frames):
        nonlocal n_sent
        assume(not ends_the_run(frames))
        reply = served.send(frames)
        n_sent += 1
        assert reply["type"] in ("ack", "error"), reply
        assert len(json.dumps(reply)) < 1000
        if reply.get("status") == "recorded":
            received.add(reply["index"])

    check()
    assert n_sent >= 1000
    assert served.alive()
    # Volumes are taken in acquisition order: the next valid one follows the last processed.
    unused = max(received) + 1
    assert served.send_volume(served.volume(unused))["status"] == "recorded"
    status = served.request([protocol.encode_status_request()])
    assert status["n_malformed"] + status["n_rejected"] + status["n_duplicates"] + len(
        received) >= n_sent
    # Every path was taken: refused by the checks, refused by the pipeline, processed.
    assert status["n_malformed"] > 500 and status["n_rejected"] > 0, status
    assert status["n_processed"] > 5, status


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


def test_fuzzed_results_channel_every_request_answered_server_stays_up(served):
    assert served.send_volume(served.volume(0))["status"] == "recorded"
    n_sent = 0

    @FUZZ
    @given(frames=results_requests())
    def check(frames):
        nonlocal n_sent
        reply = served.request(frames)
        n_sent += 1
        assert reply["type"] in ("result", "status", "error"), reply
        if reply["type"] == "result":
            assert reply["event"].volume == 0

    check()
    assert n_sent >= 1000
    assert served.alive()
    assert served.send_volume(served.volume(1))["status"] == "recorded"
    answer = served.request([protocol.encode_result_request(1)])
    assert answer["event"].volume == 1
