"""The server's lifecycle: started, stopped at once from another thread, closed, and its
pipeline set up before the first volume whenever the reference is known.
"""

from __future__ import annotations

import threading

import pytest
import zmq

from rtserver.config import Config
from rtserver.scanner.sources import open_source
from rtserver.service.bridge import ScannerBridge
from rtserver.service.replay import ServerThread
from rtserver.service.server import Server
from rtserver.service.session import Session

from .conftest import SIEMENS_NIFTI

ANY_PORT = "tcp://127.0.0.1:*"


def loopback_config(**overrides) -> Config:
    return Config().with_overrides(network={"volumes": ANY_PORT, "feedback": ANY_PORT,
                                            "results": ANY_PORT}, **overrides)


def test_stop_from_another_thread_ends_a_waiting_run(tmp_path):
    """The serving thread polls with no timeout: only the control socket can wake it, so a
    run that ended here was woken by stop().
    """
    server = Server(loopback_config(), tmp_path / "out")
    thread = ServerThread(server).start()
    server.stop()
    counters = thread.join(timeout=20)
    assert counters is not None and counters.n_processed == 0
    assert server._sockets == {}  # released
    server.close()  # a second close is harmless


def test_stop_wakes_the_wait_for_the_display(tmp_path):
    server = Server(loopback_config(), tmp_path / "out", wait_display=600)
    thread = ServerThread(server).start()
    assert not server.subscribed.is_set()
    server.stop()
    assert thread.join(timeout=20) is not None


def test_context_manager_closes_a_running_server(tmp_path):
    """``with Server(...)`` binds; leaving the block stops the run on its thread, waits for
    the flush and releases the ports (they can be bound again).
    """
    done = threading.Event()
    with Server(loopback_config(), tmp_path / "out") as server:
        endpoints = dict(server.endpoints)
        worker = threading.Thread(target=lambda: (server.run(), done.set()))
        worker.start()
    worker.join(20)
    assert done.is_set()
    context = zmq.Context.instance()
    for endpoint in endpoints.values():
        sock = context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)  # free again
        sock.close()


def test_a_known_reference_is_fitted_before_volume_0(tmp_path):
    """[motion] reference given: the session fits the pipeline at setup, and volume 0's
    feedback equals a pipeline fitted on the same reference independently.
    """
    volumes = list(open_source(SIEMENS_NIFTI))
    config = loopback_config(motion={"reference": str(SIEMENS_NIFTI), "reference_index": 3})
    pipeline = Session.from_config(config).pipeline()
    assert pipeline.is_fitted  # before any volume arrived
    server = Server(config, tmp_path / "out", pipeline=pipeline)
    thread = ServerThread(server).start()
    with ScannerBridge(server.endpoints["volumes"]) as bridge:
        bridge.send_all(open_source(SIEMENS_NIFTI), interval=None)
    counters = thread.join(timeout=60)
    assert counters.n_processed == len(volumes)
    expected = Session.from_config(config).pipeline()
    for volume in volumes:
        event = expected.step(volume)
        got = server.intake.results[volume.index]
        assert got.fd == pytest.approx(event.fd, abs=1e-9)
        assert got.rois == pytest.approx(event.rois, abs=1e-6)


def test_read_ahead_keeps_order_and_raises_a_reading_error_where_it_happened():
    from rtserver.errors import InputError
    from rtserver.service.bridge import read_ahead

    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def failing():
        yield from range(3)
        raise InputError("volume 3 is cut short")

    reader = read_ahead(failing())
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(InputError, match="volume 3 is cut short"):
        next(reader)
    import threading

    before = set(threading.enumerate())
    reader = read_ahead(iter(range(1000)), depth=2)
    assert next(reader) == 0
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "read-ahead"]
    reader.close()  # the consumer stops early: the reader thread ends instead of blocking
    thread.join(5)
    assert not thread.is_alive()
