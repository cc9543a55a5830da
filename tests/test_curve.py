"""CURVE on every link: certificates, allow-list, encryption, the loopback rule, free ports.

Real sockets on random ports and real processes. Refusals are observed, not waited for: a
socket monitor on the refused client reports the failed handshake.
"""

from __future__ import annotations

import csv
import re
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from rtserver import protocol
from rtserver.cli import error_line
from rtserver.config import Config, load_config
from rtserver.curve import (
    ClientKeys,
    CurveServer,
    is_loopback,
    load_allow_list,
    make_keys,
    secure_client,
)
from rtserver.errors import ConfigError, InputError, TransportError
from rtserver.scanner.sources import open_source
from rtserver.service.bridge import ScannerBridge
from rtserver.service.channels import channel_security
from rtserver.service.replay import ServerThread
from rtserver.service.server import Server
from rtserver.volume import Volume

from .conftest import SIEMENS_MOSAIC, SIEMENS_NIFTI, command
from .relay import RecordingRelay

ANY_PORT = "tcp://127.0.0.1:*"
LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"
#: Voxel values whose bytes are easy to find in a capture (and never occur by chance).
PATTERN = b"CURVE-TEST:voxels-in-clear?-NO!!"
#: Columns of the feedback table that do not depend on timing.
FEEDBACK_VALUES = ("volume", "value", "p_drug", "decision", "censored")
FAILED = (zmq.Event.HANDSHAKE_FAILED_AUTH, zmq.Event.HANDSHAKE_FAILED_PROTOCOL,
          zmq.Event.HANDSHAKE_FAILED_NO_DETAIL)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """A keys folder as `rtserver keys` makes it (server, bridge, display, results)."""
    folder = tmp_path_factory.mktemp("keys")
    make_keys(folder)
    return folder


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> Path:
    """Certificates made elsewhere: valid CURVE keys the server has never heard of.

    The folder's server certificate is not the real server's: :func:`stranger_keys` aims a
    stranger's client key at the real server, so it fails on the allow-list alone.
    """
    folder = tmp_path_factory.mktemp("stranger")
    make_keys(folder, ["bridge", "display", "results"])
    return folder


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def curve_config(keys: Path | None, **network) -> Config:
    return Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                            "results": ANY_PORT,
                                            "curve": None if keys is None else str(keys),
                                            **network})


def stranger_keys(stranger: Path, keys: Path, name: str) -> ClientKeys:
    """The stranger's own client certificate, aimed at the real server's public key."""
    own = ClientKeys.load(stranger, name)
    real = ClientKeys.load(keys, name)
    return ClientKeys(own.name, own.public, own.secret, real.server_public)


def handshake(sock: zmq.Socket, endpoint: str, timeout_ms: int = 10000) -> int:
    """Connect ``sock`` and return how its first handshake ended (a monitor event)."""
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        while monitor.poll(timeout_ms):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.Event.HANDSHAKE_SUCCEEDED or event in FAILED:
                return event
        pytest.fail(f"no handshake with {endpoint} within {timeout_ms} ms")
    finally:
        sock.disable_monitor()
        monitor.close()


def read_feedback(path: Path) -> list[tuple]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [tuple(row[name] for name in FEEDBACK_VALUES) for row in rows]


def feedback_file(out: Path) -> Path:
    return out / "sub-01_task-regulation_run-1_desc-feedback_timeseries.tsv"


# --------------------------------------------------------------------------- certificates
def test_keys_command_writes_pyzmq_certificates_and_keeps_them(tmp_path, processes):
    folder = tmp_path / "keys"
    code, stderr = processes([command("rtserver"), "keys", str(folder)]).finish()
    assert code == 0, stderr
    names = ["server", "client_bridge", "client_display", "client_results"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [n + ".key" for n in names] + [n + ".key_secret" for n in names])
    pairs = {}
    for name in names:
        public, no_secret = zmq.auth.load_certificate(folder / f"{name}.key")
        same_public, secret = zmq.auth.load_certificate(folder / f"{name}.key_secret")
        assert no_secret is None and public == same_public and len(secret) == 40
        assert zmq.curve_public(secret) == public  # a real key pair
        assert stat.S_IMODE((folder / f"{name}.key_secret").stat().st_mode) == 0o600
        pairs[name] = (public, secret)
    assert len({public for public, _ in pairs.values()}) == len(names)
    # The allow-list is the clients' public halves, not the server's.
    assert set(load_allow_list(folder)) == {pairs[n][0] for n in names[1:]}

    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, stderr = processes([command("rtserver"), "keys", str(folder),
                              "--client", "scanner2"]).finish()
    assert code == 0, stderr
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: after[k] for k in before} == before  # nothing overwritten
    assert set(after) - set(before) == {"client_scanner2.key", "client_scanner2.key_secret"}


def test_half_a_certificate_is_refused_in_one_line(tmp_path, processes):
    folder = tmp_path / "keys"
    make_keys(folder, ["bridge"])
    (folder / "client_bridge.key").unlink()
    code, stderr = processes([command("rtserver"), "keys", str(folder)]).finish()
    assert code == 2
    assert stderr.count("\n") == 1 and "without its other half" in stderr, stderr
    assert "(option --curve)" in stderr


def test_missing_or_damaged_certificates_say_what_was_expected(tmp_path, keys):
    with pytest.raises(InputError, match="should hold client_nobody.key_secret"):
        ClientKeys.load(keys, "nobody")
    with pytest.raises(InputError, match="not a folder"):
        CurveServer(tmp_path / "absent")
    empty = tmp_path / "only-server"
    empty.mkdir()
    zmq.auth.create_certificates(empty, "server")
    with pytest.raises(InputError, match=r"at least one client certificate \(client_\*.key\)"):
        CurveServer(empty)
    damaged = tmp_path / "damaged"
    make_keys(damaged, ["bridge"])
    (damaged / "server.key").write_text("curve\n    public-key = \"short\"\n")
    with pytest.raises(InputError, match="40-character public key"):
        ClientKeys.load(damaged, "bridge")
    with pytest.raises(ConfigError, match="client name"):
        make_keys(tmp_path / "bad", ["../escape"])


def test_one_authenticator_per_context(keys, context):
    first = CurveServer(keys).start(context)
    try:
        with pytest.raises(TransportError, match="should have none yet"):
            CurveServer(keys).start(context)
    finally:
        first.stop()
    CurveServer(keys).start(context).stop()  # free again once stopped


# --------------------------------------------------------------------------- the channels
def test_known_clients_work_and_unknown_ones_are_refused_on_every_channel(
        tmp_path, keys, stranger, context, caplog):
    volumes = list(open_source(SIEMENS_NIFTI))[:4]
    server = Server(curve_config(keys), tmp_path / "out")
    thread = ServerThread(server).start()
    endpoints = server.endpoints

    # Strangers (valid CURVE keys, not on the allow-list) and plain (no CURVE) peers.
    strangers, plain = {}, {}
    for channel, kind, name in (("volumes", zmq.DEALER, "bridge"),
                                ("feedback", zmq.SUB, "display"),
                                ("results", zmq.REQ, "results")):
        for peers, client_keys in ((strangers, stranger_keys(stranger, keys, name)),
                                   (plain, None)):
            sock = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if client_keys is not None:
                client_keys.apply(sock)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            peers[channel] = sock
    for channel, sock in strangers.items():
        assert handshake(sock, endpoints[channel]) == zmq.Event.HANDSHAKE_FAILED_AUTH, channel
    for channel, sock in plain.items():
        assert handshake(sock, endpoints[channel]) in FAILED, channel
    assert not server.subscribed.is_set()  # no subscription got through
    for peers in (strangers, plain):  # queued on their side (if at all); never delivered
        for sock, frames in ((peers["volumes"], protocol.encode_volume(volumes[0])),
                             (peers["results"], [protocol.encode_status_request()])):
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.FEEDBACK_TOPIC)
    secure_client(sub, keys, "display")
    assert handshake(sub, endpoints["feedback"]) == zmq.Event.HANDSHAKE_SUCCEEDED
    assert server.subscribed.wait(10)  # the known display's subscription got through
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    secure_client(req, keys, "results")
    req.connect(endpoints["results"])

    with ScannerBridge(endpoints["volumes"], curve=keys, timeout=20) as bridge:
        for volume in volumes:
            assert bridge.send_volume(volume)["status"] == "recorded"
        req.send(protocol.encode_status_request())
        assert req.poll(10000)
        status = protocol.decode_response(req.recv())
        assert status["n_received"] == len(volumes)  # the strangers' volumes never arrived
        assert status["n_malformed"] == 0  # nor their status requests
        bridge.send_end(len(volumes))
    counters = thread.join(timeout=60)
    assert counters.n_received == counters.n_processed == len(volumes)
    assert counters.n_malformed == 0

    received = []
    while sub.poll(10000):
        message = protocol.decode_feedback(sub.recv_multipart())
        if isinstance(message, int):
            break
        received.append(message.volume)
    assert received == [v.index for v in volumes]
    for peers in (strangers, plain):  # the run is over: everything published is out
        assert not peers["feedback"].poll(0)
        assert not peers["results"].poll(0)
        assert not peers["volumes"].poll(0)
    refusals = [r.getMessage() for r in caplog.records if "not on the allow-list" in r.getMessage()]
    assert len(refusals) == 3  # one line per unknown key, however often it retries
    for sock in [sub, req, *strangers.values(), *plain.values()]:
        sock.close()


def test_the_display_subscriber_uses_its_certificate(tmp_path, keys, stranger):
    from feedback_display.subscriber import FeedbackSubscriber

    server = Server(curve_config(keys), tmp_path / "out")
    thread = ServerThread(server).start()
    feedback = server.endpoints["feedback"]
    outsider = FeedbackSubscriber(feedback, curve=stranger).start()  # its own server.key
    try:
        with FeedbackSubscriber(feedback, curve=keys) as display:
            assert server.subscribed.wait(10)
            with ScannerBridge(server.endpoints["volumes"], curve=keys) as bridge:
                bridge.send_all(list(open_source(SIEMENS_NIFTI))[:2], interval=None)
            thread.join(timeout=60)
            items = [display.queue.get(timeout=10).item for _ in range(3)]
        assert [getattr(item, "volume", None) for item in items[:2]] == [0, 1]
        assert items[2].n_volumes == 2
        assert outsider.queue.empty()
    finally:
        outsider.close()
    with pytest.raises(InputError, match="client_display.key_secret"):
        FeedbackSubscriber(feedback, curve=tmp_path)


def test_feedback_display_checks_its_keys_before_opening_a_window(tmp_path, processes):
    code, stderr = processes([command("feedback-display"), "--paradigm", "regulation",
                              "--curve", str(tmp_path)]).finish()
    assert code == 2
    assert stderr.count("\n") == 1 and "client_display.key_secret" in stderr, stderr


# --------------------------------------------------------------------------- encryption
def patterned(volume: Volume) -> Volume:
    """``volume`` with its first voxels replaced by :data:`PATTERN` (in the background)."""
    data = volume.data.copy()
    marker = np.frombuffer(PATTERN, dtype=data.dtype)
    data.reshape(-1)[:marker.size] = marker
    return Volume(data, volume.affine, index=volume.index, tr=volume.tr)


@pytest.mark.parametrize("with_curve", [False, True])
def test_no_voxel_bytes_in_clear_with_curve(tmp_path, keys, with_curve):
    """Every byte the bridge sends passes through a recording relay: the voxels' pattern is
    there in clear without CURVE, and nowhere with it.
    """
    volumes = [patterned(v) for v in list(open_source(SIEMENS_NIFTI))[:3]]
    assert PATTERN in bytes(protocol.encode_volume(volumes[0])[1])
    server = Server(curve_config(keys if with_curve else None), tmp_path / "out")
    thread = ServerThread(server).start()
    relay = RecordingRelay(server.endpoints["volumes"])
    try:
        with ScannerBridge(relay.endpoint, curve=keys if with_curve else None) as bridge:
            report = bridge.send_all(volumes, interval=None)
        counters = thread.join(timeout=60)
    finally:
        relay.close()
    assert report.n_acknowledged == counters.n_processed == len(volumes)
    voxel_bytes = sum(v.data.nbytes for v in volumes)
    assert len(relay.recorded) > voxel_bytes  # everything went through the relay
    assert (PATTERN in relay.recorded) is not with_curve
    assert (b'"type":"volume"' in relay.recorded) is not with_curve  # headers too


# --------------------------------------------------------------------------- through the CLI
def test_a_curve_session_of_separate_processes_gives_the_same_feedback(
        tmp_path, keys, processes):
    plain = tmp_path / "plain"
    code, stderr = processes([command("rtserver"), "replay", str(SIEMENS_MOSAIC), "--out",
                              str(plain), "--asap"]).finish()
    assert code == 0, stderr

    secured = tmp_path / "curve"
    server = processes([command("rtserver"), "serve", "--out", str(secured), "--curve",
                        str(keys), "--volumes", ANY_PORT, "--feedback", ANY_PORT,
                        "--results", ANY_PORT])
    volumes_endpoint = server.wait_for(LISTENING + r" \(CURVE\)").group(1)
    code, stderr = processes([command("rtserver"), "send", str(SIEMENS_MOSAIC), "--asap",
                              "--to", volumes_endpoint, "--curve", str(keys)]).finish()
    assert code == 0, stderr
    code, stderr = server.finish()
    assert code == 0, stderr
    replayed = tmp_path / "replay-curve"
    code, stderr = processes([command("rtserver"), "replay", str(SIEMENS_MOSAIC), "--out",
                              str(replayed), "--asap", "--curve", str(keys)]).finish()
    assert code == 0, stderr
    expected = read_feedback(feedback_file(plain))
    assert len(expected) == 10
    assert read_feedback(feedback_file(secured)) == expected
    assert read_feedback(feedback_file(replayed)) == expected


def test_a_bridge_without_the_servers_trust_gives_up(tmp_path, keys, stranger, processes):
    """A bridge that knows the server's public key (it is public) but whose own key is not
    on the allow-list: refused, logged once, nothing received.
    """
    intruder = tmp_path / "intruder"
    intruder.mkdir()
    for name, folder in (("server.key", keys), ("client_bridge.key_secret", stranger)):
        (intruder / name).write_bytes((folder / name).read_bytes())
    server = processes([command("rtserver"), "serve", "--out", str(tmp_path / "out"),
                        "--curve", str(keys), "--volumes", ANY_PORT, "--feedback", ANY_PORT,
                        "--results", ANY_PORT])
    volumes_endpoint = server.wait_for(LISTENING).group(1)
    code, stderr = processes([command("rtserver"), "send", str(SIEMENS_MOSAIC), "--asap",
                              "--to", volumes_endpoint, "--curve", str(intruder),
                              "--timeout", "2"]).finish()
    assert code == 2, stderr
    assert stderr.splitlines()[-1].startswith(
        f"rtserver: error: The server at {volumes_endpoint} refused the bridge's CURVE "
        f"certificate: its public key is not on the server's allow-list"), stderr
    server.wait_for("refused a CURVE client whose public key")
    server.proc.send_signal(signal.SIGTERM)
    code, stderr = server.finish()
    assert code == 0, stderr
    assert "0 volumes processed" in stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_binding_beyond_the_loopback_needs_curve_or_insecure(tmp_path, keys, processes, host):
    base = [command("rtserver"), "serve", "--out", str(tmp_path / "out"), "--volumes",
            f"tcp://{host}:*", "--feedback", ANY_PORT, "--results", ANY_PORT]
    code, stderr = processes(base).finish()
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"rtserver: error: Refusing to bind tcp://{host}:* (volumes) "
                               f"without CURVE")
    assert lines[0].endswith("(options --curve or --insecure)")
    assert not (tmp_path / "out").exists()

    for extra, said in ((["--insecure"], r"WITHOUT CURVE \(insecure\)"),
                        (["--curve", str(keys)], "CURVE on: 3 clients allowed")):
        server = processes(base + extra)
        server.wait_for(said)
        server.wait_for(LISTENING)
        server.proc.send_signal(signal.SIGTERM)
        code, stderr = server.finish()
        assert code == 0, stderr


def test_the_loopback_rule_also_holds_for_a_config_file(tmp_path, keys):
    config_file = tmp_path / "site.toml"
    config_file.write_text('[network]\nvolumes = "tcp://10.0.0.7:5555"\n')
    config = load_config(config_file)
    with pytest.raises(ConfigError, match="Refusing to bind tcp://10.0.0.7:5555") as info:
        channel_security(config.network)
    assert error_line(info.value).endswith("(options --curve or --insecure)")
    config_file.write_text(f'[network]\nvolumes = "tcp://10.0.0.7:5555"\ncurve = "{keys}"\n')
    assert isinstance(channel_security(load_config(config_file).network), CurveServer)
    config_file.write_text('[network]\nvolumes = "tcp://10.0.0.7:5555"\ninsecure = true\n')
    assert channel_security(load_config(config_file).network) is None
    config_file.write_text('[network]\ninsecure = "yes"\n')
    with pytest.raises(ConfigError, match="'insecure' should be of type bool"):
        load_config(config_file)
    config_file.write_text('[network]\ncurve = ""\n')
    with pytest.raises(ConfigError, match="'curve' should name a folder"):
        load_config(config_file)


@pytest.mark.parametrize(("endpoint", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.8.9.10:*", True), ("tcp://localhost:1", True),
    ("tcp://[::1]:5555", True), ("tcp://lo:5555", True), ("ipc:///tmp/rt", True),
    ("inproc://x", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://[::]:5555", False), ("tcp://192.168.1.4:5555", False), ("tcp://eth0:5555", False),
    ("tcp://scanner-pc:5555", False), ("tcp://1127.0.0.1:5555", False),
])
def test_what_counts_as_loopback(endpoint, local):
    assert is_loopback(endpoint) is local


def test_two_replays_at_once_do_not_collide(tmp_path, processes, context):
    """Both bound at the same time (each waits for a display), on ports of their own."""
    runs = [processes([command("rtserver"), "replay", str(SIEMENS_MOSAIC), "--out",
                       str(tmp_path / f"run{k}"), "--asap", "--wait-display", "60"])
            for k in range(2)]
    bound = [run.wait_for(LISTENING).groups() for run in runs]
    endpoints = [endpoint for group in bound for endpoint in group]
    assert len(set(endpoints)) == 6
    assert all(re.fullmatch(r"tcp://127\.0\.0\.1:\d+", e) for e in endpoints), endpoints
    subs = []
    for _, feedback, _ in bound:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, protocol.FEEDBACK_TOPIC)
        sub.connect(feedback)
        subs.append(sub)
    for run in runs:
        code, stderr = run.finish()
        assert code == 0, stderr
    for k in range(2):
        assert len(read_feedback(feedback_file(tmp_path / f"run{k}"))) == 10
    for sub in subs:
        sub.close()
