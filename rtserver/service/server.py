"""The real-time server: receive volumes, step the pipeline, publish feedback, record.

One thread (the caller of :meth:`Server.run`) owns all three sockets, and a fourth, the
control socket, through which :meth:`Server.stop` wakes its poller at once from any thread:

- volume channel, ROUTER: every message is validated, acknowledged (or answered with an
  error) and, if it is a new volume, processed at once. Nothing a peer sends stops the
  server: a malformed message or a volume the pipeline refuses is answered with an error,
  counted and logged (one line each for the first :data:`LOGGED_REFUSALS` of a kind, then
  one line per :data:`LOG_EVERY`), and a gap in the indices is kept as a range, never as
  a list of every missing index;
- feedback channel, XPUB: one event per volume, and ``run_end`` after the last; XPUB lets the
  server see subscriptions, so a replay can wait for the display before it starts;
- results channel, REP: "the result for volume N" and the run's counters.

File writing happens on the recorder's own thread, off the per-volume path.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import zmq

from rtserver import __version__, protocol, protocol_checks
from rtserver.config import Config
from rtserver.core.pipeline import Pipeline
from rtserver.curve import CurveServer
from rtserver.errors import InputError, ProtocolError, TransportError
from rtserver.service.channels import Wakers, bind, channel_security
from rtserver.service.intake import VolumeIntake
from rtserver.service.run_info import (
    MAX_LISTED_RANGES,
    Counters,
    describe_ranges,
    missing_ranges,
    should_log,
)
from rtserver.service.run_output import RunOutput
from rtserver.service.session import Session, read_rois

log = logging.getLogger(__name__)

#: Seconds a server that ended on ``n_volumes`` goes on answering, for the bridge's
#: end-of-run message (and resends of the last volumes).
END_GRACE_SECONDS = 5.0

class Server:
    """Serve one run.

    Parameters
    ----------
    config : Config
        Endpoints, run entities and stage settings.
    out_dir : str or Path
        Where the run's outputs are written.
    pipeline : Pipeline or None
        The processing core; built from ``config`` by :class:`Session` when ``None``
        (files loaded and, when the reference is known, fitted before any volume).
    n_volumes : int or None
        End the run after this many volumes (otherwise at the bridge's end-of-run message).
    wait_display : float
        Before taking volumes, wait up to this many seconds for a feedback subscriber (the
        display), so it sees the run from its first volume. The bridge's volumes wait in
        the socket meanwhile.
    context : zmq.Context or None
        Shared context (a new one when ``None``).
    restart : bool
        When ``out_dir`` already holds this run, record a new attempt (``attempt-<k>``)
        beside it instead of resuming an unfinished run or refusing a finished one.
    """

    def __init__(self, config: Config, out_dir: str | Path, pipeline: Pipeline | None = None,
                 n_volumes: int | None = None, wait_display: float = 0.0,
                 context: zmq.Context | None = None, restart: bool = False) -> None:
        if n_volumes is not None and n_volumes < 1:
            raise InputError(f"The run length should be >= 1 volume. Got {n_volumes}.",
                             setting="n_volumes")
        self.config = config
        self.out_dir = Path(out_dir)
        # Files are loaded now (bad input fails at once); the pipeline is built and fitted in
        # start(), once the run folder is decided (atlas ROIs write their files there).
        self._setup = None if pipeline is not None else Session.from_config(config)
        self.pipeline = pipeline
        self.n_volumes = n_volumes
        self.wait_display = wait_display
        self.counters = Counters()
        self.endpoints: dict[str, str] = {}
        self.subscribed = threading.Event()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._running = threading.Lock()
        self._control_endpoint = f"inproc://rtserver-control-{id(self):x}"
        self._context = context or zmq.Context.instance()
        self._wakers = Wakers(self._context, self._control_endpoint)
        self.output = RunOutput(self.out_dir, config.run.prefix, restart,
                                on_recorded=self._wakers.recorded)
        self.intake: VolumeIntake | None = None
        self._sockets: dict[str, zmq.Socket] = {}
        self._curve: CurveServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Server:
        """Bind the three sockets (call from the thread that will call :meth:`run`).

        With ``config.network.curve`` every channel is CURVE-encrypted and admits only the
        clients on the allow-list (the authenticator runs until the sockets are closed).

        Raises
        ------
        ConfigError
            If an endpoint reaches beyond the loopback without CURVE or ``insecure``.
        InputError
            If the output folder cannot be created, or the CURVE keys cannot be read.
        TransportError
            If an endpoint cannot be bound.
        """
        network = self.config.network
        curve = channel_security(network)
        try:
            self.out_dir = self.output.prepare()
            if self.pipeline is None:
                self.pipeline = self._build_pipeline()
            self.intake = VolumeIntake(self.pipeline, self.counters, self.output,
                                       self._session, self.config.motion.reslice,
                                       self._wakers.wake)
        except OSError as exc:
            raise InputError(f"Cannot create the output folder {self.out_dir}: "
                             f"{exc.strerror}.", setting="out") from None
        self._curve = curve.start(self._context) if curve is not None else None
        router = self._context.socket(zmq.ROUTER)
        xpub = self._context.socket(zmq.XPUB)
        rep = self._context.socket(zmq.REP)
        for sock in (router, xpub, rep):
            sock.setsockopt(zmq.LINGER, 1000)
            if curve is not None:
                curve.secure(sock)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        control = self._context.socket(zmq.PULL)
        control.setsockopt(zmq.LINGER, 0)
        control.bind(self._control_endpoint)
        self._sockets = {"volumes": router, "feedback": xpub, "results": rep,
                         "control": control}
        try:
            self.endpoints = {
                "volumes": bind(router, network.volumes),
                "feedback": bind(xpub, network.feedback),
                "results": bind(rep, network.results),
            }
        except TransportError:
            self._close_sockets()
            raise
        log.info("listening: volumes %s, feedback %s, results %s%s", self.endpoints["volumes"],
                 self.endpoints["feedback"], self.endpoints["results"],
                 " (CURVE)" if curve is not None else "")
        self.ready.set()
        return self

    def _build_pipeline(self) -> Pipeline:
        """The session's pipeline, registering atlas ROIs into the run folder.

        A resumed run takes the ROIs it recorded (its ``*_desc-rois_dseg``) rather than
        registering again, so its state is the interrupted run's.
        """
        session = self._setup
        recorded = self.out_dir / f"{self.config.run.prefix}_space-EPI_desc-rois_dseg.nii.gz"
        if self.output.resuming and session.registrar() is not None and recorded.exists():
            log.info("resuming with the ROIs the run registered: %s", recorded.name)
            session = dataclasses.replace(session, rois=read_rois(recorded), template=None,
                                          atlas=None)
        return session.pipeline(out_dir=self.out_dir)

    def stop(self) -> None:
        """Ask :meth:`run` to finish at once (thread-safe; also what SIGINT/SIGTERM call).

        The request wakes the serving thread's poller through the control socket, so the
        run ends (and flushes) without waiting for a poll timeout.
        """
        self._stop.set()
        if "control" in self._sockets:
            self._wakers.wake(b"stop")

    def close(self) -> None:
        """Stop the run if one is going on, wait until it has flushed, release the sockets.

        Safe to call more than once, from any thread.
        """
        self.stop()
        with self._running:  # held by run() until it has flushed and closed its sockets
            self._close_sockets()

    def __enter__(self) -> Server:
        """Bind the sockets (:meth:`start`)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop, flush and release everything (:meth:`close`)."""
        self.close()

    def run(self) -> Counters:
        """Serve until the run ends or :meth:`stop` is called; flush everything; return counts."""
        with self._running:
            if not self._sockets:
                self.start()
            try:
                if self.output.resuming:
                    n_rows = self.output.resume(self.pipeline, self._session,
                                                self.config.motion.reslice)
                    self.intake.resume_at(n_rows, self.output.state.missing)
                self._serve()
            finally:
                self._finish()
        return self.counters

    def _serve(self) -> None:
        router, xpub = self._sockets["volumes"], self._sockets["feedback"]
        rep, control = self._sockets["results"], self._sockets["control"]
        poller = zmq.Poller()
        for sock in (router, xpub, rep, control):
            poller.register(sock, zmq.POLLIN)
        self._wait_for_display(xpub, control)
        while not self._stop.is_set() and not self._run_complete():
            self._poll_once(poller, None)
        if self.output.recorder is not None or self.counters.n_processed:
            xpub.send_multipart(protocol.encode_run_end(self.counters.n_processed))
        if self.n_volumes is not None and self.counters.n_expected is None:
            self._linger_for_end(poller)

    def _poll_once(self, poller: zmq.Poller, timeout_ms: int | None) -> None:
        router, xpub = self._sockets["volumes"], self._sockets["feedback"]
        for sock, _ in poller.poll(timeout_ms):
            if sock is router:
                self.intake.on_message(router, xpub, self._on_end)
            elif sock is self._sockets["results"]:
                self._on_request(sock)
            elif sock is xpub:
                self._on_subscription(xpub)
            else:
                self._on_control(sock.recv(), router, xpub)

    def _on_control(self, message: bytes, router: zmq.Socket, xpub: zmq.Socket) -> None:
        """A wake-up: ``stop`` (the loop checks it), ``setup`` done, or ``rec`` a volume."""
        if message == b"setup":
            self.intake.on_setup_done(router, xpub)
        elif message.startswith(b"rec "):
            _, index, ok = message.split()
            self.intake.on_recorded(router, int(index), ok == b"1")

    def _linger_for_end(self, poller: zmq.Poller) -> None:
        """After ``n_volumes``, answer the bridge's end-of-run (and resends) for a while."""
        deadline = time.monotonic() + END_GRACE_SECONDS
        while (self.counters.n_expected is None and not self._stop.is_set()
               and time.monotonic() < deadline):
            self._poll_once(poller, int(1000 * (deadline - time.monotonic())) + 1)

    def _wait_for_display(self, xpub: zmq.Socket, control: zmq.Socket) -> None:
        if self.wait_display <= 0:
            return
        log.info("waiting up to %g s for a feedback display at %s", self.wait_display,
                 self.endpoints["feedback"])
        poller = zmq.Poller()
        poller.register(xpub, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        deadline = time.monotonic() + self.wait_display
        while not self.subscribed.is_set() and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("no display subscribed within %g s; serving anyway",
                            self.wait_display)
                return
            ready = dict(poller.poll(int(remaining * 1000) + 1))
            if xpub in ready:
                self._on_subscription(xpub)
            if control in ready:
                control.recv()

    def _run_complete(self) -> bool:
        if not self.intake.idle:
            return False  # volumes still queued, or waiting to be recorded
        if self.n_volumes is not None and self.counters.n_processed >= self.n_volumes:
            return True
        return self.counters.n_expected is not None

    def _finish(self) -> None:
        counters = self.counters
        if counters.n_expected is not None:
            counters.missing = missing_ranges(self.intake.seen, counters.n_expected)
            counters.n_missing = sum(last - first + 1 for first, last in counters.missing)
            if counters.missing:
                log.warning("run ended with %d volumes missing: %s", counters.n_missing,
                            describe_ranges(counters.missing))
        complete = counters.n_expected is not None or (
            self.n_volumes is not None and counters.n_processed >= self.n_volumes)
        status = ("interrupted" if not complete
                  else "incomplete" if counters.missing or counters.gaps else "complete")
        self.output.close(status, self.intake.last_index, **vars(counters))
        self._close_sockets()
        self._wakers.close()
        log.info("run finished: %d volumes processed, %d duplicates, %d malformed, "
                 "%d rejected, %d with non-finite voxels; outputs in %s",
                 counters.n_processed, counters.n_duplicates, counters.n_malformed,
                 counters.n_rejected, counters.n_nonfinite_volumes, self.out_dir)

    def _close_sockets(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.close()
        curve, self._curve = self._curve, None
        if curve is not None:
            curve.stop()

    def _on_end(self, n_expected: int) -> None:
        self.counters.n_expected = n_expected
        log.info("bridge sent %d volumes; end of run", n_expected)

    # ------------------------------------------------------------------ other channels
    def _on_request(self, rep: zmq.Socket) -> None:
        frames = rep.recv_multipart()
        try:
            if len(frames) != 1:
                raise ProtocolError(f"A request should have 1 frame. Got {len(frames)}.")
            request = protocol.decode_request(frames[0])
        except ProtocolError as exc:
            self.counters.n_malformed += 1
            if should_log(self.counters.n_malformed):
                log.warning("malformed request rejected (%d malformed so far): %s",
                            self.counters.n_malformed, exc)
            rep.send(protocol.encode_reply(protocol.ERROR, None, error=str(exc)))
            return
        if request["type"] == protocol.STATUS_REQUEST:
            counters = vars(self.counters)
            rep.send(protocol.encode_status(**{
                **counters, "gaps": counters["gaps"][:MAX_LISTED_RANGES],
                "missing": counters["missing"][:MAX_LISTED_RANGES]}))
            return
        event = self.intake.results.get(request["volume"])
        if event is None:
            rep.send(protocol.encode_reply(
                protocol.ERROR, request["volume"],
                error=f"No result for volume {request['volume']} (yet)."))
        else:
            rep.send(protocol.encode_result(event))

    def _on_subscription(self, xpub: zmq.Socket) -> None:
        message = xpub.recv()
        if message[:1] == b"\x01":
            log.info("a feedback subscriber joined")
            self.subscribed.set()

    def _session(self) -> dict:
        return {
            "software": "rtserver",
            "version": __version__,
            "protocol": protocol.PROTOCOL,
            "run": self.config.run.prefix,
            "config": self.config.to_dict(),
            "endpoints": self.endpoints,
            "rois": self.pipeline.roi_names,
            "paradigm": self.pipeline.paradigm.name if self.pipeline.paradigm else None,
            "model_card": self.pipeline.model_card,
            "decoder": None if self.pipeline.decoder is None else {
                "model": self.config.decoder.model,
                "feedback": self.config.decoder.feedback,
                "smoothing": self.config.decoder.smoothing},
            "registration": (self.pipeline.registration_.to_dict()
                             if self.pipeline.registration_ is not None else None),
            "limits": {
                "max_volumes": protocol_checks.MAX_VOLUMES,
                "max_header_bytes": protocol_checks.MAX_HEADER_BYTES,
                "max_json_depth": protocol_checks.MAX_JSON_DEPTH,
                "max_voxels": protocol_checks.MAX_VOXELS,
                "nonfinite_voxels": "counted, recorded as received, set aside for processing",
            },
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
