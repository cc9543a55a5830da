"""Wire protocol v1: what crosses a socket, and the checks every message passes first.

Three channels (see ``docs/protocol.md``):

volume channel (bridge DEALER -> server ROUTER)
    ``[header, voxels]`` for a volume, ``[header]`` for the end of a run. The header is a
    UTF-8 JSON object; the voxels are the raw C-ordered array bytes, never pickled. The server
    answers every message with one ``[reply]`` frame: an acknowledgement or an error.
feedback channel (server PUB -> display SUB)
    ``[topic, header]`` with topic ``b"feedback"``: one event per volume, and a final
    ``run_end`` event.
results channel (client REQ -> server REP)
    ``[request]`` -> ``[reply]``: "the result for volume N", for late joiners.

Every header carries ``"protocol": "rtfmri/1"``. Every field is validated before any buffer
is interpreted; a violation raises :class:`~rtserver.errors.ProtocolError` whose message
says which field, what was expected and what was got. The checks themselves (bounded
decoding, field types, bounds on indices, run lengths and geometry) are in
:mod:`rtserver.protocol_checks`.

A feedback event's ``value`` is a finite number in [0, 1], or ``null`` with a ``withheld``
reason: a value that could not be computed is never published as NaN.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rtserver.errors import ProtocolError
from rtserver.protocol_checks import (
    ALLOWED_DTYPES,
    MAX_VOLUMES,
    check_volume_fields,
    int_field,
    loads_bounded,
    number_field,
    show,
    text_field,
)
from rtserver.protocol_checks import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from rtserver.protocol_checks import MAX_VOXELS as MAX_VOXELS
from rtserver.volume import Volume

PROTOCOL = "rtfmri/1"

#: Default endpoints of the three channels (loopback only).
DEFAULT_VOLUMES = "tcp://127.0.0.1:5555"
DEFAULT_FEEDBACK = "tcp://127.0.0.1:5556"
DEFAULT_RESULTS = "tcp://127.0.0.1:5557"
_TCP = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5}|\*)$")
FEEDBACK_TOPIC = b"feedback"
#: Longest reason a withheld feedback value may give.
MAX_REASON_CHARS = 200

# Message types, by channel.
VOLUME = "volume"
END = "end"
ACK = "ack"
ERROR = "error"
FEEDBACK = "feedback"
RUN_END = "run_end"
RESULT_REQUEST = "result_request"
STATUS_REQUEST = "status_request"
RESULT = "result"
STATUS = "status"


# --------------------------------------------------------------------------- endpoints
def is_endpoint(address: str, *, bind: bool = False) -> bool:
    """True if ``address`` is a ZeroMQ endpoint (``tcp://host:port``, ``ipc://``, ``inproc://``).

    Parameters
    ----------
    address : str
        The endpoint.
    bind : bool
        Whether it is to be bound: only then may the port be ``*`` (any free port). What
        host can be bound or connected to is ZeroMQ's to say when it binds or connects.
    """
    if re.fullmatch(r"(ipc|inproc)://\S+", address or ""):
        return True
    match = _TCP.match(address or "")
    if match is None:
        return False
    port = match.group(2)
    if port == "*":
        return bind
    return 0 < int(port) < 65536


# --------------------------------------------------------------------------- helpers
def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def parse_header(frame: bytes | memoryview, expected_types: Sequence[str]) -> dict:
    """Decode and check the common part of a header frame.

    Parameters
    ----------
    frame : bytes
        The JSON header frame.
    expected_types : sequence of str
        Message types acceptable on this channel.

    Returns
    -------
    dict
        The decoded header.

    Raises
    ------
    ProtocolError
        If the frame is too large or too deeply nested, holds an overlong number or a
        NaN, is not UTF-8 JSON, not an object, of another protocol version, or of an
        unexpected type.
    """
    header = loads_bounded(bytes(frame))
    if not isinstance(header, dict):
        raise ProtocolError(
            f"Header should be a JSON object. Got a JSON {type(header).__name__}."
        )
    text_field(header, "protocol", [PROTOCOL])
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in expected_types:
        raise ProtocolError(
            f"Header field 'type' should be one of {sorted(expected_types)}. Got {show(kind)}."
        )
    return header


# --------------------------------------------------------------------------- volume channel
#: The only ``meta`` keys a volume header may carry, with their types. Anything else a
#: source attaches (a file name, a DICOM field) stays on the bridge: file names and DICOM
#: text can hold a patient's name.
WIRE_META: dict[str, type | tuple[type, ...]] = {
    "kind": str,            # reader that made the volume, e.g. "siemens-mosaic"
    "series_number": int,   # DICOM SeriesNumber
    "volume_key": int,      # the scanner's own volume number (AcquisitionNumber, dynamic, ...)
    "n_files": int,         # files the volume was assembled from
}
#: Longest string value allowed in ``meta``.
MAX_META_TEXT = 32


def wire_meta(meta: dict | None) -> dict:
    """The part of ``meta`` allowed on the wire (see :data:`WIRE_META`); the rest is dropped."""
    allowed = {}
    for key, value in (meta or {}).items():
        kind = WIRE_META.get(key)
        if kind is None or isinstance(value, bool) or not isinstance(value, kind):
            continue
        if isinstance(value, str) and (len(value) > MAX_META_TEXT
                                       or not re.fullmatch(r"[A-Za-z0-9_.-]*", value)):
            continue
        allowed[key] = value
    return allowed


def encode_volume(volume: Volume, t_sent: float | None = None) -> list:
    """Encode a volume as ``[header, voxels]`` frames for ``send_multipart(copy=False)``.

    Parameters
    ----------
    volume : Volume
        The volume to send; its array is sent as C-ordered bytes without a copy when it
        already is C-contiguous.
    t_sent : float or None
        Wall-clock time of sending (Unix seconds).

    Returns
    -------
    list
        Two frames: the JSON header (bytes) and the voxel buffer (memoryview).
    """
    data = np.ascontiguousarray(volume.data)
    dtype = data.dtype.str
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"Voxel dtype should be one of {sorted(ALLOWED_DTYPES)}. Got {dtype!r}."
        )
    header = {
        "protocol": PROTOCOL,
        "type": VOLUME,
        "index": volume.index,
        "shape": list(data.shape),
        "dtype": dtype,
        "affine": volume.affine.tolist(),
        "tr": volume.tr,
        "t_file_complete": volume.t_file_complete,
        "t_sent": t_sent,
        "nbytes": int(data.nbytes),
        "meta": wire_meta(volume.meta),
    }
    return [_dumps(header), memoryview(data).cast("B")]


def decode_volume(frames: Sequence, header: dict | None = None) -> tuple[Volume, dict]:
    """Validate and decode ``[header, voxels]`` frames into a :class:`Volume`.

    Every header field is checked before the voxel buffer is interpreted.

    Parameters
    ----------
    frames : sequence of bytes-like or zmq.Frame
        Exactly two frames.
    header : dict or None
        The first frame already decoded by :func:`parse_header` (spares a second parse).

    Returns
    -------
    volume : Volume
        A read-only view on the received buffer (no copy).
    header : dict
        The validated header.
    """
    if len(frames) != 2:
        raise ProtocolError(
            f"A volume message should have 2 frames (header, voxels). Got {len(frames)}."
        )
    if header is None:
        header = parse_header(_bytes_of(frames[0]), [VOLUME])
    header_volume_fields(header)
    buffer = _buffer_of(frames[1])
    if buffer.nbytes != header["nbytes"]:
        raise ProtocolError(
            f"Voxel frame should be {header['nbytes']} bytes (header 'nbytes'). "
            f"Got {buffer.nbytes} bytes."
        )
    data = np.frombuffer(buffer, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
    volume = Volume(
        data=data,
        affine=header["affine"],
        index=header["index"],
        tr=header["tr"],
        t_file_complete=header.get("t_file_complete"),
        meta=wire_meta(header.get("meta")),
    )
    return volume, header


def header_volume_fields(header: dict) -> None:
    """Check every field of a volume header; raise :class:`ProtocolError` on the first bad one.

    See :func:`rtserver.protocol_checks.check_volume_fields` for the rules.
    """
    check_volume_fields(header)


def encode_end(n_volumes: int) -> list:
    """Encode the bridge's end-of-run message: ``n_volumes`` were sent in all."""
    return [_dumps({"protocol": PROTOCOL, "type": END, "n_volumes": int(n_volumes)})]


def decode_end(header: dict) -> int:
    """Return the number of volumes an end-of-run header announces.

    It is at most :data:`~rtserver.protocol_checks.MAX_VOLUMES`.
    """
    return int_field(header, "n_volumes", maximum=MAX_VOLUMES)


def encode_reply(kind: str, index: int | None = None, **fields: Any) -> bytes:
    """Encode a server reply on the volume channel (``ack`` or ``error``)."""
    return _dumps({"protocol": PROTOCOL, "type": kind, "index": index, **fields})


def decode_reply(frame: bytes) -> dict:
    """Decode a server reply on the volume channel."""
    return parse_header(frame, [ACK, ERROR])


# --------------------------------------------------------------------------- feedback channel
@dataclass
class FeedbackEvent:
    """What the server publishes for each volume.

    Attributes
    ----------
    volume : int
        0-based index of the volume this feedback is computed from.
    value : float or None
        The feedback in [0, 1] (0.5 is baseline); None when it is withheld.
    censored : bool
        True when the volume moved too much for its feedback to be trusted.
    fd : float
        Framewise displacement (mm, Power et al.).
    rois : dict of str to float
        Motion-corrected ROI means.
    p_drug : float or None
        The decoder's calibrated probability that the volume's cortico-striatal state is
        drug-cue-like rather than food-cue-like (None without a decoder).
    decision : float or None
        The decoder's decision value: the classifier's log-odds before calibration (> 0
        leans drug), or the drug-bias score (0 = food response, 1 = drug response) with
        ``[decoder] feedback = "bias"``; None without a decoder.
    t_received, t_published : float
        Wall-clock times (Unix seconds) at which the volume was fully received and its
        feedback published.
    latency_ms : float
        Received-to-published latency measured with a monotonic clock.
    withheld : str or None
        Why ``value`` is None (it could not be computed as a finite number); None when
        there is a value.
    """

    volume: int
    value: float | None
    censored: bool
    fd: float
    rois: dict = field(default_factory=dict)
    p_drug: float | None = None
    decision: float | None = None
    t_received: float = 0.0
    t_published: float = 0.0
    latency_ms: float = 0.0
    withheld: str | None = None

    def to_dict(self) -> dict:
        """The event as a JSON-ready dict with the protocol header fields."""
        return {"protocol": PROTOCOL, "type": FEEDBACK, **asdict(self)}

    @classmethod
    def from_dict(cls, header: dict) -> FeedbackEvent:
        """Build an event from a header dict, checking every field.

        Raises
        ------
        ProtocolError
            If a field is missing or not what it should be.
        """
        volume = int_field(header, "volume")
        value, withheld = _feedback_value(header)
        censored = header.get("censored")
        if not isinstance(censored, bool):
            raise ProtocolError(
                f"Header field 'censored' should be true or false. Got {show(censored)}.")
        rois = header.get("rois", {})
        if not isinstance(rois, dict):
            raise ProtocolError(f"Header field 'rois' should be a JSON object. Got {show(rois)}.")
        return cls(
            volume=volume,
            value=value,
            censored=censored,
            fd=number_field(header, "fd"),
            rois=rois,
            p_drug=number_field(header, "p_drug", optional=True),
            decision=number_field(header, "decision", optional=True),
            t_received=number_field(header, "t_received"),
            t_published=number_field(header, "t_published"),
            latency_ms=number_field(header, "latency_ms"),
            withheld=withheld,
        )


def _feedback_value(header: dict) -> tuple[float | None, str | None]:
    """Check ``value`` and ``withheld``: a number in [0, 1] and null, or null and a reason."""
    withheld = header.get("withheld")
    if withheld is not None and not (isinstance(withheld, str)
                                     and 0 < len(withheld) <= MAX_REASON_CHARS):
        raise ProtocolError(
            f"Header field 'withheld' should be null or a reason of 1 to {MAX_REASON_CHARS} "
            f"characters. Got {show(withheld)}.")
    if header.get("value", 0.0) is None and withheld is not None:
        return None, withheld
    if withheld is not None:
        raise ProtocolError(f"Header field 'value' should be null when 'withheld' gives a "
                            f"reason. Got {show(header.get('value'))}.")
    if header.get("value", 0.0) is None:
        raise ProtocolError("Header field 'value' should be a finite number (or null with a "
                            "'withheld' reason). Got None.")
    value = number_field(header, "value")
    if not 0.0 <= value <= 1.0:
        raise ProtocolError(f"Header field 'value' should be in [0, 1]. Got {show(value)}.")
    return value, None


def encode_feedback(event: FeedbackEvent) -> list:
    """Encode a feedback event as ``[topic, header]`` frames for the PUB socket."""
    return [FEEDBACK_TOPIC, _dumps(event.to_dict())]


def encode_run_end(n_volumes: int) -> list:
    """Encode the end-of-run event published after the last volume's feedback."""
    return [FEEDBACK_TOPIC, _dumps({"protocol": PROTOCOL, "type": RUN_END,
                                    "n_volumes": int(n_volumes)})]


def decode_feedback(frames: Sequence) -> FeedbackEvent | int:
    """Decode a feedback-channel message.

    Returns
    -------
    FeedbackEvent or int
        The event, or the run's volume count when the message is the end of the run.
    """
    if len(frames) != 2 or _bytes_of(frames[0]) != FEEDBACK_TOPIC:
        raise ProtocolError(
            f"A feedback message should have 2 frames, the first {FEEDBACK_TOPIC!r}. "
            f"Got {len(frames)} frames."
        )
    header = parse_header(_bytes_of(frames[1]), [FEEDBACK, RUN_END])
    if header["type"] == RUN_END:
        return int_field(header, "n_volumes", maximum=MAX_VOLUMES)
    return FeedbackEvent.from_dict(header)


# --------------------------------------------------------------------------- results channel
def encode_result_request(volume: int) -> bytes:
    """Ask the results channel for the feedback of volume ``volume``."""
    return _dumps({"protocol": PROTOCOL, "type": RESULT_REQUEST, "volume": int(volume)})


def encode_status_request() -> bytes:
    """Ask the results channel for the run's counters."""
    return _dumps({"protocol": PROTOCOL, "type": STATUS_REQUEST})


def decode_request(frame: bytes) -> dict:
    """Validate a results-channel request."""
    header = parse_header(frame, [RESULT_REQUEST, STATUS_REQUEST])
    if header["type"] == RESULT_REQUEST:
        int_field(header, "volume", maximum=MAX_VOLUMES - 1)
    return header


def encode_result(event: FeedbackEvent) -> bytes:
    """Answer a result request with the volume's feedback event."""
    return _dumps({"protocol": PROTOCOL, "type": RESULT, "event": event.to_dict()})


def encode_status(**counters: Any) -> bytes:
    """Answer a status request with the run's counters."""
    return _dumps({"protocol": PROTOCOL, "type": STATUS, **counters})


def decode_response(frame: bytes) -> dict:
    """Decode a results-channel reply (``result``, ``status`` or ``error``)."""
    header = parse_header(frame, [RESULT, STATUS, ERROR])
    if header["type"] == RESULT:
        event = header.get("event")
        if not isinstance(event, dict):
            raise ProtocolError(
                f"Header field 'event' should be a JSON object. Got {show(event)}.")
        header["event"] = FeedbackEvent.from_dict(event)
    return header


# --------------------------------------------------------------------------- frame access
def _bytes_of(frame: Any) -> bytes:
    if hasattr(frame, "bytes"):  # zmq.Frame
        return frame.bytes
    return bytes(frame)


def _buffer_of(frame: Any) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame, received with copy=False
        return memoryview(frame.buffer).cast("B")
    return memoryview(frame).cast("B")
