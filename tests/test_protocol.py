"""Wire protocol v1: round trips, and a rejection test for every header field."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserver import protocol, protocol_checks
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
    shape=st.tuples(*(st.integers(2, 9),) * 3),  # at least 2 voxels along each axis
    dtype=st.sampled_from(sorted(protocol.ALLOWED_DTYPES)),
    index=st.integers(0, protocol.MAX_VOLUMES - 1),
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


# --------------------------------------------------------------------------- hostile headers
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=16)
VOLUME_FIELDS = ["protocol", "type", "index", "shape", "dtype", "affine", "tr",
                 "t_file_complete", "t_sent", "nbytes", "meta"]


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=512) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_frame_is_a_header_or_a_protocol_error(frame):
    """Bytes or JSON of any shape: a dict comes back, or ProtocolError, never anything else."""
    try:
        header = protocol.parse_header(frame, [protocol.VOLUME, protocol.END])
    except ProtocolError as exc:
        header = {"error": str(exc)}
    if "error" in header:
        assert len(header["error"]) < 400
    else:
        assert header["protocol"] == protocol.PROTOCOL


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(VOLUME_FIELDS), value=JSON_VALUES)
def test_any_field_value_is_a_volume_or_a_protocol_error(name, value):
    """One field of a valid header replaced by any JSON value: a volume whose header
    round-trips, or a ProtocolError whose message is short; never another exception.
    """
    try:
        frames = frames_with({name: value})
    except ValueError:  # json cannot write it (an integer too long for str())
        return
    try:
        volume, header = protocol.decode_volume(frames)
    except ProtocolError as exc:
        volume, header = None, {"error": str(exc)}
    if volume is None:
        assert len(header["error"]) < 400
    else:
        again, _ = protocol.decode_volume(protocol.encode_volume(volume, header["t_sent"]))
        assert np.array_equal(again.data, volume.data) and again.index == volume.index


@settings(max_examples=50, deadline=None)
@given(depth=st.integers(1, 40), in_string=st.integers(0, 200))
def test_nesting_is_bounded_and_brackets_in_strings_do_not_count(depth, in_string):
    text = ("[" * depth + "]" * depth).encode()
    frame = (b'{"protocol":"rtfmri/1","type":"end","n_volumes":1,"s":"'
             + b"[{" * in_string + b'\\"[","x":' + text + b"}")
    if depth + 1 <= protocol_checks.MAX_JSON_DEPTH:
        assert protocol.parse_header(frame, [protocol.END])["x"] is not None
    else:
        with pytest.raises(ProtocolError, match=f"nested at most 16 deep. Got {depth + 1}"):
            protocol.parse_header(frame, [protocol.END])


@pytest.mark.parametrize(
    "frame",
    [b'"\\' * 32000, b'"' * 65000, b"[" * 65000, b'["' * 32000, b"{" * 65536,
     b'{"a":' + b"1" * 65000 + b"}", b'{"a":"' + b"\\u0000" * 10000 + b'"}'],
)
def test_pathological_headers_are_refused_in_linear_time(frame):
    """The bounds are checked in time linear in the frame: none of these takes a second
    (a backtracking string scan took 24 s on the first).
    """
    start = time.perf_counter()
    try:
        protocol.parse_header(frame, [protocol.VOLUME])
    except ProtocolError:
        pass
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b'"index":' + b"9" * 41, "at most 40 characters. Got a number of 41 characters"),
        (b'"index":' + b"9" * 5000, "Got a number of 5000 characters: '99999"),
        (b'"tr":' + b"1." + b"0" * 39, "Got a number of 41 characters"),
        (b'"tr":NaN', "without NaN or Infinity. Got NaN"),
        (b'"tr":Infinity', "Got Infinity"),
        (b'"tr":-Infinity', "Got -Infinity"),
    ],
)
def test_overlong_numbers_and_nan_are_refused_while_parsing(text, match):
    header, buffer = protocol.encode_volume(make_volume())
    raw = bytes(header).replace(b'"tr":1.5', text)
    with pytest.raises(ProtocolError, match=match) as info:
        protocol.decode_volume([raw, bytes(buffer)])
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dtype": ["<i2"]}, "'dtype' should be one of .* Got \\['<i2'\\]"),
        ({"dtype": {"<i2": 1}}, "'dtype' should be one of"),
        ({"type": ["volume"]}, "'type' should be one of"),
        ({"protocol": ["rtfmri/1"]}, "'protocol' should be 'rtfmri/1'"),
        ({"index": 2**64}, "'index' should be an integer >= 0 and <= 32766. Got 18446744073709551616"),
        ({"index": protocol.MAX_VOLUMES}, "'index' should be an integer >= 0 and <= 32766"),
        ({"shape": [4, 5, 1]}, "'shape' should have at least 2 voxels along each axis.*Got \\[4, 5, 1\\]"),
        ({"shape": [4, 5, [3]]}, "'shape' should be a list of 3 positive integers"),
        ({"affine": [[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 1e-9, 0], [0, 0, 0, 1]]},
         "singular or nearly singular"),
        ({"affine": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, "1", 0], [0, 0, 0, 1]]},
         "not a finite number"),
        ({"affine": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, True]]},
         "not a finite number"),
        ({"tr": 1e-3}, "'tr' should be from 0.01 to 1000.0 seconds"),
        ({"tr": 1e5}, "'tr' should be from 0.01 to 1000.0 seconds"),
        ({"meta": [1, 2]}, "'meta' should be a JSON object"),
    ],
)
def test_every_field_type_and_bound_is_checked(changes, match):
    with pytest.raises(ProtocolError, match=match) as info:
        protocol.decode_volume(frames_with(changes))
    assert len(str(info.value)) < 400


def test_long_values_are_shown_truncated_in_messages():
    with pytest.raises(ProtocolError) as info:
        protocol.decode_volume(frames_with({"dtype": "x" * 5000}))
    assert "'xxxxxxxxx" in str(info.value) and "(5002 characters)" in str(info.value)
    assert len(str(info.value)) < 400


def test_run_length_and_index_bounds_are_inclusive_where_documented():
    last = protocol.MAX_VOLUMES - 1
    assert protocol.decode_volume(frames_with({"index": last}))[0].index == last
    header = protocol.parse_header(protocol.encode_end(protocol.MAX_VOLUMES)[0], [protocol.END])
    assert protocol.decode_end(header) == protocol.MAX_VOLUMES
    header = protocol.parse_header(protocol.encode_end(protocol.MAX_VOLUMES + 1)[0],
                                   [protocol.END])
    with pytest.raises(ProtocolError, match="'n_volumes' should be an integer >= 0 and <= 32767"):
        protocol.decode_end(header)
    assert protocol.decode_request(protocol.encode_result_request(last))["volume"] == last
    with pytest.raises(ProtocolError, match="'volume' should be an integer"):
        protocol.decode_request(protocol.encode_result_request(protocol.MAX_VOLUMES))


@settings(max_examples=100, deadline=None)
@given(value=st.none() | st.floats(0.0, 1.0), censored=st.booleans(),
       reason=st.text(min_size=1, max_size=protocol.MAX_REASON_CHARS))
def test_feedback_value_round_trips_finite_or_withheld(value, censored, reason):
    event = protocol.FeedbackEvent(volume=2, value=value, censored=censored, fd=0.3,
                                   withheld=reason if value is None else None)
    assert protocol.decode_feedback(protocol.encode_feedback(event)) == event
    reply = protocol.decode_response(protocol.encode_result(event))
    assert reply["event"] == event


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"value": None, "withheld": ""}, "'withheld' should be null or a reason"),
        ({"value": None, "withheld": 3}, "'withheld' should be null or a reason"),
        ({"value": None, "withheld": "x" * 201}, "'withheld' should be null or a reason"),
        ({"value": 0.4, "withheld": "why"}, "'value' should be null when 'withheld'"),
        ({"value": float("nan")}, "without NaN or Infinity"),
    ],
)
def test_a_withheld_value_is_null_with_a_reason(changes, match):
    event = protocol.FeedbackEvent(volume=1, value=0.5, censored=False, fd=0.0)
    header = json.dumps({**event.to_dict(), **changes}).encode()
    with pytest.raises(ProtocolError, match=match):
        protocol.decode_feedback([protocol.FEEDBACK_TOPIC, header])
