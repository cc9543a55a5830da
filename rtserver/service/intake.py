"""The volume channel's rules: validate, de-duplicate, set up, process, publish, acknowledge.

Run by the server's socket thread, one message at a time:

- a malformed message is answered with an error and counted;
- a volume already acknowledged is answered ``duplicate``; one still being set up,
  processed or recorded is not answered again (the acknowledgement comes once it is
  recorded), so a resend never repeats work;
- until the pipeline is fitted, volumes are queued and the fit (a reference volume, an atlas
  registration: seconds) runs on a thread of its own, so the socket keeps answering; the
  queue is processed in order once it is done;
- a processed volume's feedback is published at once, and the volume is acknowledged only
  when the recorder has written it (``recorded``; ``unrecorded`` if writing failed, e.g. a
  full disk: feedback goes on), so a volume the bridge stopped resending is on disk;
- volumes are taken in acquisition order: a gap is recorded as missing volumes before the
  next one, and a volume arriving after a later one was processed is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from rtserver import protocol
from rtserver.core.pipeline import Pipeline
from rtserver.errors import InputError, ProtocolError, RtfmriError
from rtserver.service.channels import volume_channel_header
from rtserver.service.recording import Record
from rtserver.service.run_info import LOG_EVERY, LOGGED_REFUSALS, Counters, should_log
from rtserver.service.run_output import RunOutput
from rtserver.volume import Volume

log = logging.getLogger(__name__)


class VolumeIntake:
    """The volume channel's state and rules (see the module's description).

    Parameters
    ----------
    pipeline : Pipeline
        The processing core.
    counters : Counters
        The run's counters, updated here.
    output : RunOutput
        The run's output (recorder).
    session : callable
        Returns the session JSON's content (called when recording starts).
    reslice : bool
        Also record the realigned run.
    wake : callable
        ``wake(message)`` sends a control message to the socket thread from any thread.
    """

    def __init__(self, pipeline: Pipeline, counters: Counters, output: RunOutput,
                 session: Callable[[], dict[str, Any]], reslice: bool,
                 wake: Callable[[bytes], None]) -> None:
        self.pipeline = pipeline
        self.counters = counters
        self.output = output
        self.session = session
        self.reslice = reslice
        self.wake = wake
        self.seen: set[int] = set()
        self.last_index = -1
        self.results: dict[int, protocol.FeedbackEvent] = {}
        self._awaiting: dict[int, zmq.Frame] = {}  # processed, acknowledged when recorded
        self._queue: deque[tuple[Volume, float | None, float, float]] = deque()
        self._queued: dict[int, zmq.Frame] = {}
        self._setup: threading.Thread | None = None
        self._setup_error: RtfmriError | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued, being set up, or waiting to be acknowledged."""
        return not self._queue and not self._awaiting and self._setup is None

    def resume_at(self, n_rows: int, missing: frozenset[int]) -> None:
        """Take up a run whose first ``n_rows`` volumes are recorded (``missing`` among them)."""
        self.seen = set(range(n_rows)) - missing
        self.last_index = n_rows - 1
        self.counters.n_processed = len(self.seen)

    # ------------------------------------------------------------------ messages
    def on_message(self, router: zmq.Socket, xpub: zmq.Socket,
                   on_end: Callable[[int], None]) -> None:
        """Take one message from the volume channel."""
        frames = router.recv_multipart(copy=False)
        t_received, t0 = time.time(), time.perf_counter()
        identity, payload = frames[0], frames[1:]
        try:
            header = volume_channel_header(payload)
            if header["type"] == protocol.END:
                on_end(protocol.decode_end(header))
                router.send_multipart([identity, protocol.encode_reply(
                    protocol.ACK, None, status="end")])
                return
            volume, _ = protocol.decode_volume(payload, header)
        except ProtocolError as exc:
            self.counters.n_malformed += 1
            self.refuse(router, identity, None, exc, "malformed message rejected",
                        self.counters.n_malformed)
            return
        self.counters.n_received += 1
        if self._is_duplicate(router, identity, volume.index):
            return
        if self._queue or not self.pipeline.is_fitted:
            self._enqueue(identity, volume, header.get("t_sent"), t_received, t0)
            return
        self._process(router, xpub, identity, volume, header.get("t_sent"), t_received, t0)

    def on_recorded(self, router: zmq.Socket, index: int, ok: bool) -> None:
        """The recorder wrote volume ``index`` (or failed to): acknowledge it now."""
        identity = self._awaiting.pop(index, None)
        if identity is not None:
            router.send_multipart([identity, protocol.encode_reply(
                protocol.ACK, index, status="recorded" if ok else "unrecorded")])

    def on_setup_done(self, router: zmq.Socket, xpub: zmq.Socket) -> None:
        """The off-thread fit ended: process the queue, or refuse its reference volume."""
        self._setup.join()
        self._setup, error = None, self._setup_error
        if error is not None and self._queue:
            volume = self._queue.popleft()[0]
            self.counters.n_rejected += 1
            self.refuse(router, self._queued.pop(volume.index), volume.index, error,
                        f"volume {volume.index} rejected", self.counters.n_rejected)
        while self._queue and self.pipeline.is_fitted:
            volume, t_sent, t_received, t0 = self._queue.popleft()
            identity = self._queued.pop(volume.index)
            self._process(router, xpub, identity, volume, t_sent, t_received, t0)
        if self._queue:
            self._start_setup(self._queue[0][0])

    # ------------------------------------------------------------------ steps
    def _is_duplicate(self, router: zmq.Socket, identity: zmq.Frame, index: int) -> bool:
        """Answer (or hold) a volume seen before; False for a new one."""
        if index in self._awaiting or index in self._queued:
            self.counters.n_duplicates += 1
            (self._awaiting if index in self._awaiting else self._queued)[index] = identity
            return True
        if index in self.seen:
            self.counters.n_duplicates += 1
            router.send_multipart([identity, protocol.encode_reply(
                protocol.ACK, index, status="duplicate")])
            return True
        return False

    def _enqueue(self, identity: zmq.Frame, volume: Volume, t_sent: float | None,
                 t_received: float, t0: float) -> None:
        self._queue.append((volume, t_sent, t_received, t0))
        self._queued[volume.index] = identity
        if self._setup is None and not self.pipeline.is_fitted:
            self._start_setup(volume)

    def _start_setup(self, volume: Volume) -> None:
        reference = self.pipeline.reference if self.pipeline.reference is not None else volume
        log.info("setting up on the reference volume (off the socket thread)")
        self._setup_error = None
        self._setup = threading.Thread(target=self._fit, args=(reference,), name="setup",
                                       daemon=True)
        self._setup.start()

    def _fit(self, reference: Volume) -> None:
        try:
            started = time.perf_counter()
            self.pipeline.fit(reference)
            log.info("set up in %.2f s", time.perf_counter() - started)
        except RtfmriError as exc:
            self._setup_error = exc
        except Exception as exc:  # numerical failures on odd data: refuse, never crash
            self._setup_error = InputError(f"Setup on the reference volume failed: {exc}")
        finally:
            self.wake(b"setup")

    def _process(self, router: zmq.Socket, xpub: zmq.Socket, identity: zmq.Frame,
                 volume: Volume, t_sent: float | None, t_received: float, t0: float) -> None:
        index = volume.index
        try:
            if index <= self.last_index:
                raise InputError(f"Volume {index} arrived after volume {self.last_index}, "
                                 "whose place in the run it now has as missing; volumes are "
                                 "taken in acquisition order.")
            event = self.pipeline.step(volume)
        except RtfmriError as exc:
            self.counters.n_rejected += 1
            self.refuse(router, identity, index, exc, f"volume {index} rejected",
                        self.counters.n_rejected)
            return
        event.t_received = t_received
        event.t_published = time.time()
        event.latency_ms = (time.perf_counter() - t0) * 1000.0
        xpub.send_multipart(protocol.encode_feedback(event))
        self._awaiting[index] = identity
        self._after_publish(volume, event, t_sent)

    def _after_publish(self, volume: Volume, event: protocol.FeedbackEvent,
                       t_sent: float | None) -> None:
        self._count(volume, event)
        gap = None
        if volume.index > self.last_index + 1:
            gap = (self.last_index + 1, volume.index - 1)
            self.counters.gaps.append(list(gap))
            span = (f"volume {gap[0]} has" if gap[0] == gap[1]
                    else f"volumes {gap[0]}-{gap[1]} have")
            log.warning("%s not arrived (gap before volume %d)", span,
                        volume.index)
        self.last_index = volume.index
        self.seen.add(volume.index)
        self.results[volume.index] = event
        self.output.record(Record(volume=volume, event=event,
                                  motion=self.pipeline.motion_estimate, t_sent=t_sent),
                           self.pipeline, self.session, self.reslice, gap)

    def _count(self, volume: Volume, event: protocol.FeedbackEvent) -> None:
        counters = self.counters
        counters.n_processed += 1
        n_nonfinite = self.pipeline.nonfinite_voxels_
        if n_nonfinite:
            counters.n_nonfinite_volumes += 1
            counters.n_nonfinite_voxels += n_nonfinite
            if should_log(counters.n_nonfinite_volumes):
                log.info("volume %d holds %d non-finite voxels: set aside for processing, "
                         "recorded as received (%d such volumes so far)", volume.index,
                         n_nonfinite, counters.n_nonfinite_volumes)
        if event.value is None:
            counters.n_withheld += 1
            if should_log(counters.n_withheld):
                log.warning("volume %d: feedback value withheld (%d so far): %s",
                            volume.index, counters.n_withheld, event.withheld)

    @staticmethod
    def refuse(router: zmq.Socket, identity: zmq.Frame, index: int | None,
               exc: RtfmriError, what: str, count: int) -> None:
        """Answer the sender with the error; log it unless too many of its kind came."""
        if should_log(count):
            later = (f"; later ones: one line per {LOG_EVERY}"
                     if count == LOGGED_REFUSALS else "")
            log.warning("%s (%d so far%s): %s", what, count, later, exc)
        router.send_multipart([identity, protocol.encode_reply(
            protocol.ERROR, index, error=str(exc))])
