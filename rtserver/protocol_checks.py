"""How a header frame of the wire protocol is checked: bounded decoding, then every field.

A header frame comes from the network and may be hostile. Before :func:`json.loads` sees it,
its size and its bracket nesting are bounded (a deeply nested document would exhaust the
parser's recursion); while it is parsed, every number literal is bounded in length (a
5,000-digit integer costs quadratic time to convert) and ``NaN``/``Infinity`` (not JSON)
are refused. Then each field's type is checked before its value is looked at, and every
quantity that sizes work or memory (a volume index, a run length, a shape) is bounded.

Every refusal is a :class:`~rtserver.errors.ProtocolError` whose message says what was
expected and what was got, the value shown truncated (:func:`show`): an error reply never
echoes kilobytes of hostile input. :mod:`rtserver.protocol` builds on these checks.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from rtserver.errors import ProtocolError

#: Largest header frame (bytes), checked before anything is decoded.
MAX_HEADER_BYTES = 65536
#: Deepest nesting of JSON arrays and objects in a header (a volume header needs 3).
MAX_JSON_DEPTH = 16
#: Longest number literal in a header (characters); 17 significant digits make a float.
MAX_NUMBER_CHARS = 40
#: Volumes a run may hold: indices are ``0 .. MAX_VOLUMES - 1`` (4.5 h at TR 0.5 s). It is
#: the most a NIfTI-1 file (the recorded ``_bold.nii.gz``, whose ``dim[4]`` is an int16) holds.
MAX_VOLUMES = 32_767
#: Most voxels a volume may hold.
MAX_VOXELS = 512 * 512 * 512
#: Largest frame a valid message can hold (a volume of MAX_VOXELS float64 voxels): a bound
#: for the sockets' ``zmq.MAXMSGSIZE``, so an oversized frame is never taken in whole.
MAX_FRAME_BYTES = MAX_VOXELS * 8
#: Fewest voxels along each axis: motion is estimated in 3D, which needs 2 along each.
MIN_AXIS = 2
#: Repetition times (seconds) a header may give.
MIN_TR, MAX_TR = 0.01, 1000.0
#: Largest condition number of an affine's 3x3 part (voxel sizes, rotation, shear).
MAX_AFFINE_CONDITION = 1e6
#: Characters of a received value shown in an error message.
MAX_SHOWN = 40

#: Voxel data types a volume may carry on the wire (numpy ``dtype.str`` spelling).
ALLOWED_DTYPES = frozenset(
    {"|u1", "|i1", "<u2", "<i2", ">u2", ">i2", "<u4", "<i4", ">u4", ">i4", "<f4", ">f4",
     "<f8", ">f8"}
)

#: A JSON string literal, or an unterminated one up to the end. Possessive (``*+``) and
#: always matching at every opening quote, so the scan is linear in the length of the frame.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)


def show(value: Any) -> str:
    """Format a received value for an error message: ASCII ``repr``, truncated.

    Parameters
    ----------
    value : Any
        A value received from the network.

    Returns
    -------
    str
        At most :data:`MAX_SHOWN` characters of ``ascii(value)``, then ``...`` and the full
        length when it was longer.
    """
    text = ascii(value)
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


# --------------------------------------------------------------------------- decoding
def json_depth(raw: bytes) -> int:
    """Count the deepest nesting of arrays and objects in JSON text, without parsing it.

    String literals are blanked out first, so brackets inside strings do not count. On
    invalid JSON the count may be too high, never too low. The time taken is linear in the
    length of ``raw``.
    """
    bare = _STRING.sub(b'""', raw)
    codes = np.frombuffer(bare, dtype=np.uint8)
    steps = ((codes == ord("[")).astype(np.int32) + (codes == ord("{"))
             - (codes == ord("]")) - (codes == ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _number(text: str, convert: type) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ProtocolError(
            f"Header numbers should have at most {MAX_NUMBER_CHARS} characters. Got a number "
            f"of {len(text)} characters: {show(text)}."
        )
    return convert(text)


def _constant(name: str) -> None:
    raise ProtocolError(f"Header should be standard JSON, without NaN or Infinity. Got {name}.")


def loads_bounded(raw: bytes) -> Any:
    """Decode a header frame's JSON, with every bound checked before or while parsing.

    Parameters
    ----------
    raw : bytes
        The frame.

    Returns
    -------
    Any
        The decoded JSON value.

    Raises
    ------
    ProtocolError
        If the frame is larger than :data:`MAX_HEADER_BYTES`, nested deeper than
        :data:`MAX_JSON_DEPTH`, holds a number literal longer than
        :data:`MAX_NUMBER_CHARS`, ``NaN`` or ``Infinity``, or is not UTF-8 JSON.
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"Header frame should be at most {MAX_HEADER_BYTES} bytes. Got {len(raw)} bytes."
        )
    n_open = raw.count(b"[") + raw.count(b"{")  # bounds the depth, in microseconds
    depth = json_depth(raw) if n_open > MAX_JSON_DEPTH else n_open
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(
            f"Header should be JSON nested at most {MAX_JSON_DEPTH} deep. Got {depth} "
            "nested arrays and objects."
        )
    try:
        return json.loads(raw.decode("utf-8"), parse_int=lambda s: _number(s, int),
                          parse_float=lambda s: _number(s, float), parse_constant=_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(
            f"Header frame should be UTF-8 JSON. Got undecodable bytes ({exc})."
        ) from None


# --------------------------------------------------------------------------- fields
def field(header: dict, name: str) -> Any:
    """Return the value of a required field (refuse a header without it)."""
    if name not in header:
        raise ProtocolError(f"Header is missing the field {name!r}.")
    return header[name]


def is_integer(value: Any) -> bool:
    """Tell whether ``value`` is a JSON integer (``true`` and ``false`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Tell whether ``value`` is a finite JSON number."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def int_field(header: dict, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """Return a required integer field, refused unless in ``minimum .. maximum``."""
    value = field(header, name)
    if not is_integer(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f" and <= {maximum}" if maximum is not None else ""
        raise ProtocolError(
            f"Header field {name!r} should be an integer >= {minimum}{bound}. Got {show(value)}."
        )
    return value


def number_field(header: dict, name: str, *, positive: bool = False,
                 optional: bool = False) -> float | None:
    """Return a finite number field (``None`` for an absent or null optional one)."""
    value = header.get(name) if optional else field(header, name)
    if value is None and optional:
        return None
    if not is_number(value):
        raise ProtocolError(f"Header field {name!r} should be a finite number. Got {show(value)}.")
    if positive and value <= 0:
        raise ProtocolError(f"Header field {name!r} should be > 0. Got {show(value)}.")
    return float(value)


def text_field(header: dict, name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a field whose value must be one of the strings ``choices``."""
    value = header.get(name)
    if not isinstance(value, str) or value not in choices:
        expected = repr(choices[0]) if len(choices) == 1 else f"one of {sorted(choices)}"
        raise ProtocolError(f"Header field {name!r} should be {expected}. Got {show(value)}.")
    return value


# --------------------------------------------------------------------------- volume header
def check_shape(header: dict) -> tuple[int, int, int]:
    """Check the ``shape`` field and return it.

    It should be 3 integers, each at least :data:`MIN_AXIS`, with at most
    :data:`MAX_VOXELS` voxels in all.
    """
    shape = field(header, "shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(
            is_integer(n) and n >= 1 for n in shape):
        raise ProtocolError(
            f"Header field 'shape' should be a list of 3 positive integers. Got {show(shape)}."
        )
    if min(shape) < MIN_AXIS:
        raise ProtocolError(
            f"Header field 'shape' should have at least {MIN_AXIS} voxels along each axis "
            f"(motion is estimated in 3D). Got {show(shape)}."
        )
    n_voxels = math.prod(shape)
    if n_voxels > MAX_VOXELS:
        raise ProtocolError(
            f"Header field 'shape' should hold at most {MAX_VOXELS} voxels. Got {n_voxels}."
        )
    return shape[0], shape[1], shape[2]


def check_affine(header: dict) -> np.ndarray:
    """Check the ``affine`` field and return it as a float64 array.

    It should be 4x4 finite numbers with the last row ``[0, 0, 0, 1]`` and a 3x3 part far
    from singular (condition number at most :data:`MAX_AFFINE_CONDITION`).
    """
    affine = field(header, "affine")
    if not (isinstance(affine, list) and len(affine) == 4
            and all(isinstance(row, list) and len(row) == 4 for row in affine)):
        _bad_affine(show(affine))
    if not all(is_number(value) for row in affine for value in row):
        _bad_affine(f"a value that is not a finite number: {show(affine)}")
    matrix = np.array(affine, dtype=np.float64)
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        _bad_affine(f"the last row {show(affine[3])}")
    linear = matrix[:3, :3]
    condition = np.linalg.cond(linear) if np.all(np.isfinite(linear @ linear.T)) else np.inf
    if abs(np.linalg.det(linear)) < 1e-12 or not condition <= MAX_AFFINE_CONDITION:
        _bad_affine(f"a singular or nearly singular 3x3 part: {show(affine[:3])}")
    return matrix


def _bad_affine(got: str) -> None:
    """Refuse the ``affine`` field, saying what it should be and what it was."""
    raise ProtocolError(
        "Header field 'affine' should be an invertible 4x4 list of finite numbers with last "
        f"row [0, 0, 0, 1] (3x3 part's condition number <= {MAX_AFFINE_CONDITION:g}). "
        f"Got {got}."
    )


def check_volume_fields(header: dict) -> None:
    """Check every field of a volume header; raise :class:`ProtocolError` on the first bad one.

    Raises
    ------
    ProtocolError
        Naming the field, what was expected and what was got.
    """
    int_field(header, "index", maximum=MAX_VOLUMES - 1)
    shape = check_shape(header)
    dtype = field(header, "dtype")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"Header field 'dtype' should be one of {sorted(ALLOWED_DTYPES)}. Got {show(dtype)}."
        )
    check_affine(header)
    tr = number_field(header, "tr", positive=True)
    if not MIN_TR <= tr <= MAX_TR:
        raise ProtocolError(
            f"Header field 'tr' should be from {MIN_TR} to {MAX_TR} seconds. Got {show(tr)}."
        )
    number_field(header, "t_file_complete", optional=True)
    number_field(header, "t_sent", optional=True)
    nbytes = int_field(header, "nbytes", minimum=1)
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes != expected:
        raise ProtocolError(
            f"Header field 'nbytes' should be {expected} for shape {list(shape)} and dtype "
            f"{dtype}. Got {nbytes}."
        )
    meta = header.get("meta", {})
    if meta is not None and not isinstance(meta, dict):
        raise ProtocolError(f"Header field 'meta' should be a JSON object. Got {show(meta)}.")
