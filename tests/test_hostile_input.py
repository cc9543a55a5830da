"""Hostile and odd input never stops the server.

Every case goes through a real server on real loopback sockets (random ports): crafted
frames from a raw DEALER socket on the volume channel, and from a REQ socket on the
results channel. Each case must be answered with an error that names the problem, be
counted in the session JSON, and leave the server up: the next valid volume is processed.
Then property-based fuzzing (hypothesis) of both channels: over a thousand generated
messages each, every one answered, the server still up, and a valid volume processed after.
"""

from __future__ import annotations

import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest

from feedback_display.feedback_state import BarState, FeedbackState
from feedback_display.thermometer import BASELINE_VALUE
from rtserver import protocol
from rtserver.errors import ProtocolError
from rtserver.service import run_info as server_module
from rtserver.volume import Volume

from .hostile_helpers import PREFIX, assert_refused, crafted, header_of


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


