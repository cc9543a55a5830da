"""Real processes, real sockets on random ports, real Siemens files from tests/data."""

from __future__ import annotations

import csv
import json
import signal
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import zmq

from rtserver import protocol
from rtserver.scanner.sources import open_source
from rtserver.volume import Volume

from .conftest import SIEMENS_MOSAIC, command

LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"
ANY_PORT = "tcp://127.0.0.1:*"
N_SIEMENS = 10  # 11 files; _000000 duplicates _000010's acquisition


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def subscribe(context: zmq.Context, endpoint: str) -> zmq.Socket:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.FEEDBACK_TOPIC)
    sub.connect(endpoint)
    return sub


def collect_feedback(sub: zmq.Socket, timeout_ms: int = 30000) -> tuple[list, int | None]:
    """Receive feedback events until the run-end message (or a timeout)."""
    events = []
    while sub.poll(timeout_ms):
        message = protocol.decode_feedback(sub.recv_multipart())
        if isinstance(message, int):
            return events, message
        events.append(message)
    return events, None


def read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def outputs(out: Path, prefix: str = "sub-01_task-regulation_run-1") -> dict[str, Path]:
    names = {
        "bold": "bold.nii.gz", "confounds": "desc-confounds_timeseries.tsv",
        "xfm": "desc-hmc_xfm.tsv", "roi": "desc-roi_timeseries.tsv",
        "feedback": "desc-feedback_timeseries.tsv", "session": "desc-session.json",
    }
    return {key: out / f"{prefix}_{name}" for key, name in names.items()}


def test_replay_of_real_siemens_series(tmp_path, processes, context):
    """Every volume recorded once and bit-identical; one feedback event per volume."""
    out = tmp_path / "run"
    replay = processes([command("rtserver"), "replay", str(SIEMENS_MOSAIC), "--out", str(out),
                        "--asap", "--feedback", ANY_PORT, "--results", ANY_PORT,
                        "--wait-display", "30"])
    _, feedback, _ = replay.wait_for(LISTENING).groups()
    sub = subscribe(context, feedback)
    events, n_end = collect_feedback(sub)
    code, stderr = replay.finish()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert [event.volume for event in events] == list(range(N_SIEMENS))
    assert n_end == N_SIEMENS
    assert all(0.0 <= event.value <= 1.0 for event in events)

    sent = list(open_source(SIEMENS_MOSAIC))
    files = outputs(out)
    bold = nib.load(files["bold"])
    assert bold.shape == (*sent[0].shape, N_SIEMENS)
    recorded = np.asanyarray(bold.dataobj)
    assert recorded.dtype == sent[0].data.dtype
    for volume in sent:
        assert np.array_equal(recorded[..., volume.index], volume.data), volume.index
    np.testing.assert_allclose(bold.affine, sent[0].affine, atol=1e-4)
    assert bold.header.get_zooms()[3] == pytest.approx(1.5)

    rows = read_tsv(files["feedback"])
    assert [int(row["volume"]) for row in rows] == list(range(N_SIEMENS))
    latencies = [float(row["latency_ms"]) for row in rows]
    assert all(latency > 0 for latency in latencies)
    confounds = read_tsv(files["confounds"])
    assert list(confounds[0]) == ["volume", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                  "rot_z", "framewise_displacement", "missing"]
    assert [int(row["volume"]) for row in confounds] == list(range(N_SIEMENS))
    assert len(confounds) == len(read_tsv(files["roi"])) == len(read_tsv(files["xfm"])) == 10
    session = json.loads(files["session"].read_text())
    assert session["status"] == "complete"
    assert session["n_processed"] == N_SIEMENS
    assert session["n_duplicates"] == 0


def test_no_patient_identity_in_outputs(tmp_path, processes):
    """The DICOM's PatientName and PatientID appear nowhere in what the server wrote."""
    dataset = pydicom.dcmread(next(SIEMENS_MOSAIC.glob("*.dcm")), stop_before_pixels=True)
    identity = [str(dataset.PatientName), str(dataset.PatientID)]
    identity = [value.encode() for value in identity if len(value) >= 4]
    assert identity, "the test series should carry a patient name to look for"
    out = tmp_path / "run"
    replay = processes([command("rtserver"), "replay", str(SIEMENS_MOSAIC), "--out", str(out),
                        "--asap", "--feedback", ANY_PORT, "--results", ANY_PORT])
    code, stderr = replay.finish()
    assert code == 0, stderr
    for path in out.iterdir():
        content = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            content = gzip.decompress(content)
        for value in identity:
            assert value not in content, f"{value!r} found in {path.name}"


def test_bridge_started_before_server_resends_until_acknowledged(tmp_path, processes, context):
    """The bridge comes up first; its resends reach the server once it binds; no duplicates."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    bridge = processes([command("rtserver"), "send", str(SIEMENS_MOSAIC), "--to", address,
                        "--asap", "--timeout", "60"])
    bridge.wait_for(r"sending 10 volumes")
    out = tmp_path / "run"
    server = processes([command("rtserver"), "serve", "--out", str(out), "--volumes", address,
                        "--feedback", ANY_PORT, "--results", ANY_PORT])
    server.wait_for(LISTENING)
    code, stderr = bridge.finish()
    assert code == 0, stderr
    code, stderr = server.finish()
    assert code == 0, stderr
    rows = read_tsv(outputs(out)["feedback"])
    assert [int(row["volume"]) for row in rows] == list(range(N_SIEMENS))


def serve_with_dealer(processes, context: zmq.Context, out: Path):
    """Start `rtserver serve` on random ports; return it, a connected DEALER and the results address."""
    server = processes([command("rtserver"), "serve", "--out", str(out), "--volumes", ANY_PORT,
                        "--feedback", ANY_PORT, "--results", ANY_PORT])
    volumes, _, results = server.wait_for(LISTENING).groups()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(volumes)
    return server, dealer, results


def send_raw(dealer: zmq.Socket, frames: list) -> dict:
    dealer.send_multipart(frames)
    assert dealer.poll(10000), "the server did not answer"
    return protocol.decode_reply(dealer.recv_multipart()[-1])


def test_malformed_messages_are_answered_counted_and_survived(tmp_path, processes, context):
    out = tmp_path / "run"
    server, dealer, results = serve_with_dealer(processes, context, out)
    sent = list(open_source(SIEMENS_MOSAIC))
    good_header, good_buffer = protocol.encode_volume(sent[0])
    header = json.loads(good_header)
    bad_messages = [
        [b"\x80\x04K\x01."],                                            # a pickle
        [b"not json at all", b"1234"],                                  # not JSON
        [json.dumps({**header, "protocol": "rtfmri/0"}).encode(), bytes(good_buffer)],
        [json.dumps({**header, "shape": [64, 64]}).encode(), bytes(good_buffer)],
        [good_header, bytes(good_buffer)[:-10]],                        # truncated buffer
        [good_header],                                                  # missing buffer
    ]
    for frames in bad_messages:
        reply = send_raw(dealer, frames)
        assert reply["type"] == "error" and reply["error"], reply
    # A volume of the wrong shape for the run: rejected after the run's first volume.
    assert send_raw(dealer, protocol.encode_volume(sent[0]))["status"] == "recorded"
    wrong = Volume(np.zeros((8, 8, 8), np.int16), sent[1].affine, index=1, tr=1.5)
    reply = send_raw(dealer, protocol.encode_volume(wrong))
    assert reply["type"] == "error" and "wrong shape" in reply["error"]
    # The server still works: the remaining volumes, then a duplicate, then the end.
    for volume in sent[1:]:
        assert send_raw(dealer, protocol.encode_volume(volume))["status"] == "recorded"
    assert send_raw(dealer, protocol.encode_volume(sent[3]))["status"] == "duplicate"

    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(results)
    req.send(protocol.encode_result_request(4))
    assert req.poll(10000)
    answer = protocol.decode_response(req.recv())
    assert answer["event"].volume == 4
    req.send(b"garbage")
    assert req.poll(10000)
    assert protocol.decode_response(req.recv())["type"] == "error"

    assert send_raw(dealer, protocol.encode_end(N_SIEMENS))["status"] == "end"
    code, stderr = server.finish()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    session = json.loads(outputs(out)["session"].read_text())
    assert session["n_malformed"] == len(bad_messages) + 1  # + the garbage request
    assert session["n_rejected"] == 1
    assert session["n_duplicates"] == 1
    assert session["n_processed"] == N_SIEMENS
    assert nib.load(outputs(out)["bold"]).shape[3] == N_SIEMENS


def test_sigterm_flushes_what_was_received(tmp_path, processes, context):
    out = tmp_path / "run"
    server, dealer, _ = serve_with_dealer(processes, context, out)
    sent = list(open_source(SIEMENS_MOSAIC))[:3]
    for volume in sent:
        assert send_raw(dealer, protocol.encode_volume(volume))["status"] == "recorded"
    server.proc.send_signal(signal.SIGTERM)
    code, stderr = server.finish()
    assert code == 0, stderr
    files = outputs(out)
    bold = np.asanyarray(nib.load(files["bold"]).dataobj)
    assert bold.shape[3] == 3
    for volume in sent:
        assert np.array_equal(bold[..., volume.index], volume.data)
    assert len(read_tsv(files["feedback"])) == 3
    # Stopped before the bridge's end of run: resumable, not finished.
    assert json.loads(files["session"].read_text())["status"] == "interrupted"


def test_a_crash_loses_nothing_already_recorded(tmp_path, processes, context):
    """SIGKILL (no chance to flush) mid-run: the BOLD file and TSVs are valid as they stand."""
    out = tmp_path / "run"
    server, dealer, _ = serve_with_dealer(processes, context, out)
    sent = list(open_source(SIEMENS_MOSAIC))[:4]
    for volume in sent:
        assert send_raw(dealer, protocol.encode_volume(volume))["status"] == "recorded"
    files = outputs(out)
    # The recorder writes on its own thread: wait (bounded) until the 4th row is flushed.
    poller_deadline = 200
    while len(read_tsv(files["feedback"])) < 4 and poller_deadline:
        dealer.poll(50)
        poller_deadline -= 1
    server.proc.kill()
    server.finish()
    bold = nib.load(files["bold"])
    assert bold.shape[3] == 4
    data = np.asanyarray(bold.dataobj)
    for volume in sent:
        assert np.array_equal(data[..., volume.index], volume.data)
    assert len(read_tsv(files["confounds"])) == 4
    assert json.loads(files["session"].read_text())["status"] == "running"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["send", "/no/such/series"], "Source /no/such/series does not exist"),
        (["replay", "/no/such/series", "--out", "{tmp}/o"], "does not exist"),
        (["send", "{tmp}/notes.txt"], "should be a NIfTI file"),
        (["send", "{tmp}/broken.nii.gz"], "Cannot read NIfTI file"),
        (["serve", "--out", "{tmp}/o", "--volumes", "tcp://127.0.0.1:{busy}"],
         "Cannot bind tcp://127.0.0.1:\\d+: Address already in use"),
        (["serve", "--out", "{tmp}/o", "--volumes", "udp://x"], "should be a ZeroMQ endpoint"),
        (["serve", "--out", "{tmp}/o", "--config", "{tmp}/notes.txt"], "not valid TOML"),
        (["serve", "--out", "{tmp}/notes.txt/o"], "Cannot create the output folder"),
        (["serve", "--out", "{tmp}/o", "--reference", "/no/such.nii.gz"],
         "Motion reference: Source /no/such.nii.gz does not exist"),
        (["serve", "--out", "{tmp}/o", "--reference", "{tmp}/broken.nii.gz"],
         "Motion reference: Cannot read NIfTI file"),
        (["serve", "--out", "{tmp}/o", "--config", "{tmp}/motion.toml"],
         "'interpolation_order' should be 1, 2 or 3"),
        (["serve", "--out", "{tmp}/o", "--n-volumes", "0"],
         "run length should be >= 1 volume. Got 0. \\(option --n-volumes\\)$"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, processes, args, match):
    (tmp_path / "notes.txt").write_text("this is = = not toml\n")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    (tmp_path / "motion.toml").write_text("[motion]\ninterpolation_order = 5\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [a.format(tmp=tmp_path, busy=port) for a in args]
        code, stderr = processes([command("rtserver"), *argv]).finish()
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    import re

    assert re.search(match, lines[0]), lines[0]


def test_pacing_at_the_tr_spaces_the_volumes(tmp_path):
    """`--tr S` sends volume k no earlier than k * S after the replay starts (lower bounds
    only, so a busy machine cannot make it flake: a late first volume shortens the span
    between first and last, so that span is not what is checked).
    """
    import time

    from rtserver.config import Config
    from rtserver.service.replay import replay
    from rtserver.service.server import Server

    source = open_source(SIEMENS_MOSAIC)
    config = Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                              "results": ANY_PORT})
    start = time.monotonic()
    wall_start = time.time()
    report, counters = replay(source, Server(config, tmp_path / "run"), interval=0.1)
    elapsed = time.monotonic() - start
    assert counters.n_processed == report.n_acknowledged == N_SIEMENS
    assert elapsed >= 0.1 * (N_SIEMENS - 1)
    rows = read_tsv(outputs(tmp_path / "run")["feedback"])
    received = [float(row["t_received"]) for row in rows]
    assert received[-1] - wall_start >= 0.1 * (N_SIEMENS - 1)
