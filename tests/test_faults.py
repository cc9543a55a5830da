"""Faults a session meets, with real processes and sockets: a killed server, a killed
bridge, a finished run asked for again, a disk that fills up, a slow setup, a run that
ends on its length. For each: volumes lost, rows misaligned and bytes overwritten are 0.
"""

from __future__ import annotations

import csv
import json
import resource
import signal
import socket
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtserver.config import Config
from rtserver.errors import InputError
from rtserver.scanner.sources import open_source
from rtserver.service.bridge import ScannerBridge
from rtserver.service.replay import ServerThread
from rtserver.service.server import Server
from rtserver.service.session import Session
from rtserver.sim import simulate_subject

from .conftest import SIEMENS_NIFTI, command, wait_for_file

LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"
ANY_PORT = "tcp://127.0.0.1:*"
PREFIX = "sub-01_task-regulation_run-1"
TABLES = ("desc-confounds_timeseries.tsv", "desc-hmc_xfm.tsv", "desc-roi_timeseries.tsv",
          "desc-feedback_timeseries.tsv")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A simulated 140-volume regulation run at a small grid, with its ROI masks."""
    root = tmp_path_factory.mktemp("bids")
    return simulate_subject(root, "01", "patient", seed=5, paradigm="regulation",
                            shape=(40, 48, 30)).runs[0]


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def rows(out: Path, suffix: str = "desc-feedback_timeseries.tsv") -> list[dict]:
    with (out / f"{PREFIX}_{suffix}").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def wait_for_rows(out: Path, n: int, timeout: float = 60.0) -> None:
    """Wait until the server has recorded ``n`` feedback rows (woken by file events)."""
    wait_for_file(out / f"{PREFIX}_desc-feedback_timeseries.tsv",
                  lambda path: path.exists() and path.read_bytes().count(b"\n") > n, timeout)


def serve_command(out: Path, run, volumes: str, *extra: str) -> list[str]:
    return [command("rtserver"), "serve", "--out", str(out), "--volumes", volumes,
            "--feedback", ANY_PORT, "--results", ANY_PORT, "--roi", str(run.rois),
            "--target", "nacc", "--paradigm", "regulation", *extra]


def assert_whole_run(out: Path, source_path: Path, n: int) -> None:
    """Every table has rows 0..n-1 in order, none missing; the BOLD file is the source."""
    for suffix in TABLES:
        table = rows(out, suffix)
        assert [int(r["volume"]) for r in table] == list(range(n)), suffix
        assert {r["missing"] for r in table} == {"0"}, suffix
    recorded = np.asanyarray(nib.load(out / f"{PREFIX}_bold.nii.gz").dataobj)
    source = np.asanyarray(nib.load(source_path).dataobj)
    assert recorded.shape == source.shape
    assert np.array_equal(recorded, source)


def test_a_killed_and_restarted_server_loses_nothing_and_overwrites_nothing(
        tmp_path, processes, run):
    """SIGKILL the server after 40 volumes while the bridge streams at 20x; start it again
    with the same command. It resumes: the bridge's resends fill the gap, nothing already
    written changes, and the feedback equals an uninterrupted replay's.
    """
    out, volumes = tmp_path / "run", free_port()
    server = processes(serve_command(out, run, volumes))
    server.wait_for(LISTENING)
    bridge = processes([command("rtserver"), "send", str(run.bold), "--to", volumes,
                        "--speed", "20", "--timeout", "60"])
    wait_for_rows(out, 40)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    before = {suffix: (out / f"{PREFIX}_{suffix}").read_bytes() for suffix in TABLES}
    assert json.loads((out / f"{PREFIX}_desc-session.json").read_text())["status"] == "running"
    restarted = processes(serve_command(out, run, volumes))
    restarted.wait_for(r"resumed .* at volume (\d+)")
    code, stderr = bridge.finish(timeout=120)
    assert code == 0, stderr
    code, stderr = restarted.finish(timeout=60)
    assert code == 0, stderr
    n = len(open_source(run.bold))
    assert_whole_run(out, run.bold, n)
    # The rows every table had complete at the kill are kept byte for byte.
    n_kept = min(old.count(b"\n") for old in before.values())  # header + rows
    for suffix, old in before.items():
        kept = b"".join(old.splitlines(keepends=True)[:n_kept])
        assert (out / f"{PREFIX}_{suffix}").read_bytes().startswith(kept), suffix
    session = json.loads((out / f"{PREFIX}_desc-session.json").read_text())
    assert session["status"] == "complete" and len(session["resumed"]) == 1
    reference = tmp_path / "uninterrupted"
    replay = processes([command("rtserver"), "replay", str(run.bold), "--out", str(reference),
                        "--asap", "--roi", str(run.rois), "--target", "nacc",
                        "--paradigm", "regulation"])
    code, stderr = replay.finish(timeout=120)
    assert code == 0, stderr
    values = [float(r["value"]) for r in rows(out)]
    expected = [float(r["value"]) for r in rows(reference)]
    np.testing.assert_allclose(values, expected, atol=1e-6)


def test_a_killed_and_restarted_bridge_loses_nothing(tmp_path, processes, run):
    """SIGKILL the bridge mid-run and start it again: it sends from the first volume; the
    server answers what it has as duplicates and records the rest once.
    """
    out, volumes = tmp_path / "run", free_port()
    server = processes(serve_command(out, run, volumes))
    server.wait_for(LISTENING)
    send = [command("rtserver"), "send", str(run.bold), "--to", volumes, "--speed", "20"]
    bridge = processes(send)
    wait_for_rows(out, 30)
    bridge.proc.send_signal(signal.SIGKILL)
    bridge.proc.wait()
    code, stderr = processes([*send[:-2], "--asap"]).finish(timeout=120)
    assert code == 0, stderr
    code, stderr = server.finish(timeout=60)
    assert code == 0, stderr
    assert_whole_run(out, run.bold, len(open_source(run.bold)))
    session = json.loads((out / f"{PREFIX}_desc-session.json").read_text())
    assert session["n_duplicates"] >= 30 and session["status"] == "complete"


def test_a_finished_run_is_refused_and_restart_records_a_new_attempt(tmp_path, processes):
    out = tmp_path / "run"
    replay = [command("rtserver"), "replay", str(SIEMENS_NIFTI), "--out", str(out), "--asap",
              "--subject", "01", "--task", "regulation", "--run", "1"]
    assert processes(replay).finish()[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, stderr = processes(replay).finish()
    assert code == 2
    lines = [line for line in stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "already holds the finished run" in lines[0]
    assert "(option --restart)" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert processes([*replay, "--restart"]).finish()[0] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    attempt = out / "attempt-2"
    assert len(rows(attempt)) == len(open_source(SIEMENS_NIFTI))


def test_a_full_disk_is_one_clear_error_feedback_goes_on_what_was_written_stays(
        tmp_path, processes, run):
    """The server may write files of at most 2 MB (RLIMIT_FSIZE, as a disk that fills
    up): the BOLD file stops growing, the log says why once, feedback and acknowledgements
    go on for every volume, and the tables stay readable.
    """
    out, volumes = tmp_path / "run", free_port()

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))

    server = processes(serve_command(out, run, volumes), preexec_fn=small_disk)
    server.wait_for(LISTENING)
    code, stderr = processes([command("rtserver"), "send", str(run.bold), "--to", volumes,
                              "--asap"]).finish(timeout=120)
    assert code == 0, stderr
    code, stderr = server.finish(timeout=60)
    assert code == 0, stderr
    failures = [line for line in stderr.splitlines() if "recording failed at volume" in line]
    assert len(failures) == 1 and "File too large" in failures[0], stderr
    assert "feedback goes on" in failures[0]
    session = json.loads((out / f"{PREFIX}_desc-session.json").read_text())
    assert session["n_processed"] == len(open_source(run.bold))
    bold = nib.load(out / f"{PREFIX}_bold.nii.gz")
    n_written = bold.shape[3]
    assert 0 < n_written < session["n_processed"]
    source = np.asanyarray(nib.load(run.bold).dataobj)
    assert np.array_equal(np.asanyarray(bold.dataobj), source[..., :n_written])


class SlowSetup:
    """Holds a pipeline's fit until the server has answered ``resends`` resends meanwhile.

    Setup slower than the bridge's resend timer, with no sleep: the fit is released only
    once the socket thread has taken that many resends of the volume being set up, which
    it can only do if the fit does not block it. Fits and their threads are counted.
    """

    def __init__(self, pipeline, resends: int) -> None:
        self.n_fits, self.fit_threads, self.resends = 0, set(), resends
        self.released = threading.Event()
        original = pipeline.fit

        def fit(reference):
            self.n_fits += 1
            self.fit_threads.add(threading.current_thread().name)
            assert self.released.wait(30), "the socket thread took no resends during setup"
            return original(reference)

        pipeline.fit = fit

    def watch(self, intake) -> None:
        """Release the fit once ``intake`` has held ``resends`` duplicates."""
        original = intake._is_duplicate

        def is_duplicate(router, identity, index):
            duplicate = original(router, identity, index)
            if intake.counters.n_duplicates >= self.resends:
                self.released.set()
            return duplicate

        intake._is_duplicate = is_duplicate


def test_a_slow_setup_never_blocks_the_socket_and_is_done_once(tmp_path):
    """The reference is the run's first volume and its setup lasts until three of the
    bridge's resends (every 0.5 s) have been answered: the fit runs once, off the socket
    thread; the resends are held, not processed again; every volume is recorded once.
    """
    config = Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                              "results": ANY_PORT})
    pipeline = Session.from_config(config).pipeline()
    slow = SlowSetup(pipeline, resends=3)
    server = Server(config, tmp_path / "out", pipeline=pipeline)
    thread = ServerThread(server).start()
    slow.watch(server.intake)
    with ScannerBridge(server.endpoints["volumes"], ack_timeout=0.5) as bridge:
        report = bridge.send_all(open_source(SIEMENS_NIFTI), interval=None)
    counters = thread.join(timeout=60)
    assert slow.released.is_set()
    assert slow.n_fits == 1 and slow.fit_threads == {"setup"}
    assert report.n_resent >= 3 and counters.n_duplicates == report.n_resent
    assert counters.n_processed == report.n_acknowledged == len(open_source(SIEMENS_NIFTI))


def test_a_run_ended_by_its_length_answers_the_bridge(tmp_path, processes):
    out, volumes = tmp_path / "run", free_port()
    server = processes([command("rtserver"), "serve", "--out", str(out), "--volumes", volumes,
                        "--feedback", ANY_PORT, "--results", ANY_PORT, "--n-volumes", "10"])
    server.wait_for(LISTENING)
    code, stderr = processes([command("rtserver"), "send", str(SIEMENS_NIFTI), "--to",
                              volumes, "--asap", "--timeout", "10"]).finish(timeout=60)
    assert code == 0, stderr
    assert server.finish(timeout=30)[0] == 0
    assert json.loads((out / f"{PREFIX}_desc-session.json").read_text())["status"] == "complete"


def test_resume_refuses_a_run_without_a_readable_session(tmp_path):
    from rtserver.service.run_folder import inspect

    (tmp_path / f"{PREFIX}_desc-feedback_timeseries.tsv").write_text("volume\n")
    with pytest.raises(InputError, match="session file .* cannot be read") as raised:
        inspect(tmp_path, PREFIX)
    assert raised.value.setting == "out"
