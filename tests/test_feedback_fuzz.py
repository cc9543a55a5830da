"""The feedback channel fuzzed: the display's subscriber decodes or counts every message.

Over a thousand hypothesis-generated messages are published on a real PUB socket (an XPUB,
as the server binds, so the test sees the subscription arrive) to
:class:`feedback_display.subscriber.FeedbackSubscriber`, no window needed: random bytes,
random JSON, mutated valid feedback events and run ends, and wrong frame counts. Each
message that passes the topic filter arrives as exactly one :class:`Arrival`, decoded the
way :func:`rtserver.protocol.decode_feedback` decodes it or counted as :class:`Malformed`;
one the filter drops never arrives (a valid event published right after it comes first).
The receiving thread stays alive and a valid event published at the end arrives.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_display.subscriber import (
    MAX_LOGGED_MALFORMED,
    FeedbackSubscriber,
    Malformed,
    RunEnd,
)
from rtserver import protocol
from rtserver.errors import ProtocolError

from .hostile_helpers import ODD_VALUES, encode_json, json_values

ARRIVAL_S = 10.0
TOPIC = protocol.FEEDBACK_TOPIC
EVENT_FIELDS = ["protocol", "type", "volume", "value", "censored", "fd", "rois", "p_drug",
                "decision", "t_received", "t_published", "latency_ms", "withheld", "n_volumes",
                "extra"]


def valid_event(volume: int = 3) -> protocol.FeedbackEvent:
    return protocol.FeedbackEvent(volume=volume, value=0.62, censored=False, fd=0.12,
                                  rois={"brain": 1012.5}, p_drug=0.7, decision=0.85,
                                  t_received=1.7e9, t_published=1.7e9 + 0.05, latency_ms=50.0)


@st.composite
def feedback_messages(draw) -> list[bytes]:
    """A random message for the feedback channel, often close to a valid one."""
    kind = draw(st.sampled_from(["bytes", "topic+bytes", "json", "mutated", "mutated",
                                 "flipped", "frames", "run_end"]))
    if kind == "bytes":  # mostly dropped by the topic filter
        return draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    if kind == "topic+bytes":
        return [TOPIC + draw(st.binary(max_size=8)),
                *draw(st.lists(st.binary(max_size=200), max_size=3))]
    if kind == "json":
        body = draw(json_values() | st.dictionaries(st.sampled_from(EVENT_FIELDS),
                                                    json_values(6), max_size=8))
        return [TOPIC, encode_json(body)]
    good = valid_event(draw(st.integers(0, 20))).to_dict()
    if kind == "run_end":
        good = {"protocol": protocol.PROTOCOL, "type": protocol.RUN_END,
                "n_volumes": draw(st.integers(-2, 200) | ODD_VALUES)}
        return [TOPIC, encode_json(good)]
    if kind == "flipped":
        raw = bytearray(encode_json(good))
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return [TOPIC, bytes(raw)]
    if kind == "frames":
        frames = [TOPIC, encode_json(good)][: draw(st.integers(1, 2))]
        return frames + draw(st.lists(st.binary(max_size=32), min_size=1, max_size=3))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(EVENT_FIELDS))
        if draw(st.booleans()) and name in good:
            del good[name]
        else:
            good[name] = draw(ODD_VALUES | json_values(6)
                              | st.sampled_from([math.nan, math.inf, -math.inf, 1.5, -0.1]))
    return [TOPIC, encode_json(good)]


def expected_of(frames: list[bytes]):
    """What the subscriber should make of ``frames``: None (filtered out), Malformed, or the
    decoded event or run end.
    """
    if not frames[0].startswith(TOPIC):
        return None
    try:
        decoded = protocol.decode_feedback(frames)
    except ProtocolError:
        return Malformed
    return RunEnd(decoded) if isinstance(decoded, int) else decoded


@pytest.fixture
def channel():
    """An XPUB bound on a random loopback port, and a started subscriber connected to it."""
    context = zmq.Context()
    pub = context.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind("tcp://127.0.0.1:*")
    subscriber = FeedbackSubscriber(pub.getsockopt(zmq.LAST_ENDPOINT).decode(), poll_ms=5,
                                    context=context).start()
    assert pub.poll(10000), "the subscription never arrived"
    assert pub.recv() == b"\x01" + TOPIC
    yield pub, subscriber
    subscriber.close()
    pub.close()
    context.term()


FUZZ = settings(max_examples=1200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def test_fuzzed_feedback_every_message_decoded_or_counted_subscriber_stays_up(channel):
    pub, subscriber = channel
    sentinel = protocol.encode_feedback(valid_event(999_999))
    counts = {"sent": 0, "decoded": 0, "malformed": 0, "filtered": 0}

    @FUZZ
    @given(frames=feedback_messages())
    def check(frames):
        expected = expected_of(frames)
        pub.send_multipart(frames)
        counts["sent"] += 1
        if expected is None:  # dropped by the topic filter: the next valid event comes first
            pub.send_multipart(sentinel)
            arrival = subscriber.queue.get(timeout=ARRIVAL_S)
            assert arrival.item == valid_event(999_999), arrival
            counts["filtered"] += 1
            return
        arrival = subscriber.queue.get(timeout=ARRIVAL_S)
        if expected is Malformed:
            assert isinstance(arrival.item, Malformed), (frames, arrival)
            assert arrival.item.reason
            counts["malformed"] += 1
        else:
            assert arrival.item == expected, (frames, arrival)
            if isinstance(arrival.item, protocol.FeedbackEvent):
                value = arrival.item.value
                assert value is None or 0.0 <= value <= 1.0
                assert (value is None) == (arrival.item.withheld is not None)
            counts["decoded"] += 1

    check()
    assert counts["sent"] >= 1000, counts
    assert counts["decoded"] + counts["malformed"] + counts["filtered"] == counts["sent"]
    # Every path was taken: decoded events and run ends, malformed, filtered out.
    assert counts["decoded"] > 20 and counts["malformed"] > 500, counts
    assert counts["filtered"] > 20, counts
    assert subscriber._thread.is_alive()
    assert subscriber.queue.empty()
    pub.send_multipart(protocol.encode_feedback(valid_event(7)))
    assert subscriber.queue.get(timeout=ARRIVAL_S).item == valid_event(7)
    pub.send_multipart(protocol.encode_run_end(8))
    assert subscriber.queue.get(timeout=ARRIVAL_S).item == RunEnd(8)


def test_a_flood_without_waiting_is_counted_whole(channel, caplog):
    """Malformed and valid messages published back to back, nothing waited for between them:
    every one arrives, in order, and the malformed ones are logged in few lines.
    """
    caplog.set_level(logging.WARNING, logger="feedback_display.subscriber")
    pub, subscriber = channel
    messages = []
    for k in range(3000):
        if k % 3 == 0:
            messages.append(protocol.encode_feedback(valid_event(k)))
        elif k % 3 == 1:
            messages.append([TOPIC, b"{" * 5000])
        else:
            messages.append([TOPIC, json.dumps({"protocol": protocol.PROTOCOL,
                                                "type": "feedback", "volume": -k}).encode()])
    for frames in messages:
        pub.send_multipart(frames)
    arrivals = [subscriber.queue.get(timeout=ARRIVAL_S) for _ in messages]
    volumes = [a.item.volume for a in arrivals if isinstance(a.item, protocol.FeedbackEvent)]
    assert volumes == list(range(0, 3000, 3))
    assert sum(isinstance(a.item, Malformed) for a in arrivals) == 2000
    assert subscriber._thread.is_alive()
    lines = [r.getMessage() for r in caplog.records if r.name == "feedback_display.subscriber"]
    assert len(lines) == MAX_LOGGED_MALFORMED + 1, lines[-3:]
    assert max(len(line) for line in lines) < 400
