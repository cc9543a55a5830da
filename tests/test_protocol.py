"""Wire protocol v1: round trips, and a rejection test for every header field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserver import protocol
from rtserver.errors import ProtocolError
from rtserver.volume import Volume

AFFINE = [[3.0, 0, 0, -90], [0, 3.0, 0, -120], [0, 0, 4.0, -50], [0, 0, 0, 1]]


def make_volume(shape=(4, 5, 3), dtype="<i2", index=7) -> Volume:
    data = np.arange(np.prod(shape), dtype=np.dtype(dtype)).reshape(shape)
    return Volume(data, AFFINE, index=index, tr=1.5, t_file_complete=123.5, meta={"file": "x.dcm"})


def frames_with(header_changes: dict, drop: str | None = None) -> list:
    header_bytes, buffer = protocol.encode_volume(make_volume(), t_sent=124.0)
    header = json.loads(header_bytes)
    header.update(header_changes)
    if drop:
        del header[drop]
    return [json.dumps(header).encode(), bytes(buffer)]


# --------------------------------------------------------------------------- round trips
@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 9),) * 3),
    dtype=st.sampled_from(sorted(protocol.ALLOWED_DTYPES)),
    index=st.integers(0, 10**6),
    tr=st.floats(0.1, 10.0),
)
def test_volume_round_trip_is_exact(shape, dtype, index, tr):
    rng = np.random.default_rng(index)
    data = (rng.random(shape) * 100).astype(np.dtype(dtype))
    volume = Volume(data, AFFINE, index=index, tr=tr)
    frames = protocol.encode_volume(volume, t_sent=1.0)
    decoded, header = protocol.decode_volume([bytes(f) for f in frames])
    assert decoded.index == index
    assert decoded.tr == tr
    assert decoded.data.dtype == data.dtype
    assert np.array_equal(decoded.data, data)
    assert np.array_equal(decoded.affine, volume.affine)
    assert header["protocol"] == protocol.PROTOCOL


def test_non_contiguous_volume_is_sent_in_c_order():
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5, order="F")
    volume = Volume(data, AFFINE, index=0, tr=2.0)
    decoded, _ = protocol.decode_volume(protocol.encode_volume(volume))
    assert np.array_equal(decoded.data, data)


def test_feedback_round_trip():
    event = protocol.FeedbackEvent(volume=3, value=0.75, censored=False, fd=0.12,
                                   rois={"nacc": 1001.5}, t_received=10.0, t_published=10.004,
                                   latency_ms=4.0)
    decoded = protocol.decode_feedback(protocol.encode_feedback(event))
    assert decoded == event


def test_run_end_round_trip():
    assert protocol.decode_feedback(protocol.encode_run_end(140)) == 140


def test_end_and_replies_round_trip():
    header = protocol.parse_header(protocol.encode_end(12)[0], [protocol.END])
    assert protocol.decode_end(header) == 12
    ack = protocol.decode_reply(protocol.encode_reply(protocol.ACK, 5, status="received"))
    assert (ack["type"], ack["index"], ack["status"]) == ("ack", 5, "received")


def test_results_round_trip():
    request = protocol.decode_request(protocol.encode_result_request(9))
    assert request["volume"] == 9
    event = protocol.FeedbackEvent(volume=9, value=0.5, censored=True, fd=0.9)
    reply = protocol.decode_response(protocol.encode_result(event))
    assert reply["event"] == event
    status = protocol.decode_response(protocol.encode_status(n_processed=3))
    assert status["n_processed"] == 3


# --------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"protocol": "rtfmri/0"}, "'protocol' should be 'rtfmri/1'"),
        ({"type": "volumes"}, "'type' should be one of"),
        ({"index": -1}, "'index' should be an integer >= 0"),
        ({"index": 1.5}, "'index' should be an integer"),
        ({"index": True}, "'index' should be an integer"),
        ({"shape": [4, 5]}, "'shape' should be a list of 3 positive integers"),
        ({"shape": [4, 0, 3]}, "'shape' should be a list of 3 positive integers"),
        ({"shape": "4x5x3"}, "'shape' should be a list of 3"),
        ({"shape": [1000, 1000, 1000]}, "'shape' should hold at most"),
        ({"dtype": "object"}, "'dtype' should be one of"),
        ({"dtype": "<c16"}, "'dtype' should be one of"),
        ({"affine": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "'affine' should be an invertible 4x4"),
        ({"affine": [[0] * 4] * 3 + [[0, 0, 0, 1]]}, "'affine' should be an invertible 4x4"),
        ({"affine": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]}, "last row"),
        ({"affine": "eye"}, "'affine' should be"),
        ({"tr": 0}, "'tr' should be > 0"),
        ({"tr": "2"}, "'tr' should be a finite number"),
        ({"t_file_complete": "now"}, "'t_file_complete' should be a finite number"),
        ({"t_sent": [1]}, "'t_sent' should be a finite number"),
        ({"nbytes": 119}, "'nbytes' should be 120"),
        ({"nbytes": 0}, "'nbytes' should be an integer >= 1"),
        ({"meta": "x"}, "'meta' should be a JSON object"),
    ],
)
def test_every_volume_header_field_is_checked(changes, match):
    with pytest.raises(ProtocolError, match=match):
        protocol.decode_volume(frames_with(changes))


@pytest.mark.parametrize("name", ["index", "shape", "dtype", "affine", "tr", "nbytes"])
def test_missing_required_field_is_named(name):
    with pytest.raises(ProtocolError, match=f"missing the field '{name}'"):
        protocol.decode_volume(frames_with({}, drop=name))


def test_buffer_of_wrong_size_is_rejected():
    header, buffer = protocol.encode_volume(make_volume())
    with pytest.raises(ProtocolError, match="Voxel frame should be 120 bytes.*Got 118"):
        protocol.decode_volume([header, bytes(buffer)[:-2]])


def test_wrong_frame_count_is_rejected():
    header, _ = protocol.encode_volume(make_volume())
    with pytest.raises(ProtocolError, match="should have 2 frames"):
        protocol.decode_volume([header])


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\xff\xfe garbage", "UTF-8 JSON"),
        (b"{not json", "UTF-8 JSON"),
        (b"[1, 2, 3]", "JSON object. Got a JSON list"),
        (b" " * (protocol.MAX_HEADER_BYTES + 1), "at most 65536 bytes"),
    ],
)
def test_undecodable_headers_are_rejected(frame, match):
    with pytest.raises(ProtocolError, match=match):
        protocol.parse_header(frame, [protocol.VOLUME])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"value": 1.5}, "'value' should be in \\[0, 1\\]"),
        ({"value": None}, "'value' should be a finite number"),
        ({"censored": 1}, "'censored' should be true or false"),
        ({"volume": -2}, "'volume' should be an integer"),
        ({"rois": [1]}, "'rois' should be a JSON object"),
        ({"fd": "x"}, "'fd' should be a finite number"),
    ],
)
def test_every_feedback_field_is_checked(changes, match):
    event = protocol.FeedbackEvent(volume=1, value=0.5, censored=False, fd=0.0)
    header = {**event.to_dict(), **changes}
    with pytest.raises(ProtocolError, match=match):
        protocol.decode_feedback([protocol.FEEDBACK_TOPIC, json.dumps(header).encode()])


def test_request_of_negative_volume_is_rejected():
    frame = json.dumps({"protocol": protocol.PROTOCOL, "type": "result_request",
                        "volume": -1}).encode()
    with pytest.raises(ProtocolError, match="'volume' should be an integer >= 0"):
        protocol.decode_request(frame)


def test_pickled_header_is_rejected_not_loaded():
    """A pickle on the wire is just undecodable bytes: it is never unpickled."""
    payload = b"\x80\x04\x95\x06\x00\x00\x00\x00\x00\x00\x00K\x01\x85\x94."  # pickle of (1,)
    with pytest.raises(ProtocolError, match="UTF-8 JSON"):
        protocol.parse_header(payload, [protocol.VOLUME])


def test_only_non_identifying_metadata_goes_on_the_wire():
    """File names and free text can hold a patient's name: only WIRE_META keys are sent,
    and a receiver drops anything else it is sent.
    """
    volume = Volume(np.zeros((2, 2, 2), np.int16), AFFINE, index=0, tr=2.0, meta={
        "file": "DOE_JANE_001.dcm", "PatientName": "Doe^Jane", "kind": "siemens-mosaic",
        "series_number": 5, "volume_key": 7, "n_files": 1, "series_description": "x"})
    header = json.loads(bytes(protocol.encode_volume(volume)[0]))
    assert header["meta"] == {"kind": "siemens-mosaic", "series_number": 5, "volume_key": 7,
                              "n_files": 1}
    assert protocol.wire_meta({"kind": "Doe^Jane", "n_files": "3", "volume_key": True}) == {}
    header["meta"]["PatientID"] = "PID123"
    frames = [json.dumps(header).encode(), np.zeros((2, 2, 2), np.int16).tobytes()]
    decoded, _ = protocol.decode_volume(frames)
    assert "PatientID" not in decoded.meta
