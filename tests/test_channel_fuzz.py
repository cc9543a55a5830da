"""The volume and results channels fuzzed: every generated message answered, the server up."""

from __future__ import annotations

import itertools
import json

from hypothesis import assume, given

from rtserver import protocol

from .hostile_helpers import FUZZ, ends_the_run, results_requests, volume_messages


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
