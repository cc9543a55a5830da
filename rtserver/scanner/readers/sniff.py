"""Which kind of file a scanner export folder holds, told from its first bytes.

The content decides, not the suffix: a DICOM file (with or without its preamble), a PAR
header, a single-file NIfTI-1 or NIfTI-2 (plain or gzipped), a REC (pixel data read
through its PAR), or something foreign. A file too short to tell, that starts the way one
of these does, is still being written (:class:`rtserver.errors.IncompleteFileError`).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.valuerep import VR

from rtserver.errors import IncompleteFileError

__all__ = ["PAR_END", "not_an_image_message", "sniff", "nifti_version"]

_NIFTI1_MAGIC = (b"n+1\x00",)
_NIFTI2_MAGIC = b"n+2\x00"
_NIFTI_STARTS = tuple(struct.pack(f"{order}i", size) for order in "<>" for size in (348, 540))
_PAR_START = b"# === DATA DESCRIPTION FILE"
#: The line that ends a whole PAR header.
PAR_END = b"# === END OF DATA DESCRIPTION FILE"
_VR_CODES = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)


def sniff(buf: bytes, path: Path) -> str | None:
    """Tell what a file is, from its content.

    Parameters
    ----------
    buf : bytes
        The file's bytes so far.
    path : Path
        The file (its suffix tells a REC from a foreign file; it names the file in messages).

    Returns
    -------
    str or None
        ``"dicom"``, ``"parrec"``, ``"nifti"``, ``"rec"``, or None for a foreign file.

    Raises
    ------
    IncompleteFileError
        If the file is empty, or too short to tell and starts like a DICOM preamble or a
        NIfTI header.
    """
    if len(buf) == 0:
        raise IncompleteFileError(f"{path} is empty: it is probably still being written; try again later.")
    if buf[128:132] == b"DICM" or _looks_like_bare_dicom(buf):
        return "dicom"
    if len(buf) < 132 and not any(buf[:128]) and (not any(buf[128:]) or b"DICM".startswith(buf[128:])):
        raise IncompleteFileError(f"{path} holds only {len(buf)} bytes so far (a DICOM preamble?); "
                                  f"try again later.")
    if buf[:2] == b"\x1f\x8b":
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            head = stream.decompress(buf[:65536], 544)
        except zlib.error:
            return None
        return _nifti_or_none(head, path, finished=stream.eof or len(buf) > 65536)
    if _nifti_or_none(buf, path, finished=False):
        return "nifti"
    if buf.lstrip(b"\xef\xbb\xbf \t\r\n")[:len(_PAR_START)] == _PAR_START:
        return "parrec"
    if path.suffix.lower() == ".rec":
        return "rec"
    return None


def nifti_version(head: bytes) -> int:
    """Tell which NIfTI a header is.

    Parameters
    ----------
    head : bytes
        The first bytes of a file (uncompressed).

    Returns
    -------
    int
        1 or 2 when ``head`` starts a single-file NIfTI-1 or NIfTI-2 (either byte order),
        else 0.
    """
    size = _nifti_header_size(head) if len(head) >= 4 else 0
    if size == 348 and head[344:348] in _NIFTI1_MAGIC:
        return 1
    if size == 540 and head[4:8] == _NIFTI2_MAGIC:
        return 2
    return 0


def not_an_image_message(path: Path) -> str:
    """Say why a file none of the readers reads is skipped, naming a suffix that promised more.

    Parameters
    ----------
    path : Path
        The foreign file.

    Returns
    -------
    str
        A one-line message.
    """
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return f"{path} has a {path.suffix} suffix but no DICOM header; skipped."
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return f"{path} has a NIfTI suffix but no NIfTI-1/2 header; skipped."
    return f"{path} is not a DICOM, PAR/REC or NIfTI file; skipped."


def _nifti_or_none(head: bytes, path: Path, finished: bool) -> str | None:
    """``"nifti"`` when ``head`` starts a single-file NIfTI-1 or NIfTI-2, else None.

    Raises IncompleteFileError when ``head`` is the start of a NIfTI header that is not all
    there yet (``finished``: the gzip stream ``head`` came from has ended, so it cannot grow).
    """
    if len(head) < 4:
        if not finished and any(start.startswith(head) for start in _NIFTI_STARTS):
            raise IncompleteFileError(f"{path} holds only the first bytes of a NIfTI header; "
                                      f"try again later.")
        return None
    size = _nifti_header_size(head)
    if not size:
        return None
    if len(head) < size + 4:
        if finished:
            return None
        raise IncompleteFileError(f"{path} holds only {len(head)} bytes of its NIfTI header so far; "
                                  f"try again later.")
    return "nifti" if nifti_version(head) else None


def _nifti_header_size(head: bytes) -> int:
    """348 or 540 when ``head`` starts with a NIfTI-1 or NIfTI-2 header size (either byte order)."""
    for order in "<>":
        size = struct.unpack(f"{order}i", head[:4])[0]
        if size in (348, 540):
            return size
    return 0


def _looks_like_bare_dicom(buf: bytes) -> bool:
    """Tell a DICOM data set written without preamble and meta header (older GE exports do this)."""
    if len(buf) < 8:
        return False
    group, element = struct.unpack_from("<HH", buf)
    return group in (0x0002, 0x0008) and element < 0x0100 and (
        buf[4:6] in _VR_CODES or struct.unpack_from("<I", buf, 4)[0] < 0x10000)
