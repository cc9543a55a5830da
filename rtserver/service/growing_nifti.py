"""A 4D NIfTI file that grows one volume at a time and is a valid NIfTI at every moment.

The file is a multi-member gzip stream (every gzip reader, nibabel included, reads it as
one stream): a first, stored (uncompressed) member of fixed size holds the NIfTI header,
then one compressed member per volume. After each volume the header member is rewritten in
place with the new volume count, so a crash loses nothing written and there is no
compression pass at the end.

A file left by a crash is taken up again with :meth:`GrowingNifti.resume`: the complete
members are counted, a member cut short by the crash is cut off, and appending goes on.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np

from rtserver.errors import InputError
from rtserver.volume import Volume

#: NIfTI-1 header (348 bytes) + the empty extension flag (4 bytes).
NIFTI_HEADER_BYTES = 352
_CHUNK = 1 << 20


def member_ends(path: Path) -> list[int]:
    """Byte offsets at which each complete gzip member of ``path`` ends, in order.

    A member cut short (the file ends inside it) is not listed. The file is read once,
    a megabyte at a time.

    Raises
    ------
    InputError
        If the bytes are not a gzip stream.
    """
    ends: list[int] = []
    offset = 0  # file offset of the first byte not yet given to a decompressor
    member = zlib.decompressobj(wbits=31)
    with path.open("rb") as handle:
        pending = b""
        while True:
            chunk = pending or handle.read(_CHUNK)
            pending = b""
            if not chunk:
                return ends
            try:
                member.decompress(chunk)
            except zlib.error as exc:
                raise InputError(f"{path} is not a gzip stream after byte {offset}: "
                                 f"{exc}.") from None
            if member.eof:
                used = len(chunk) - len(member.unused_data)
                ends.append(offset + used)
                offset += used
                pending = member.unused_data
                member = zlib.decompressobj(wbits=31)
            else:
                offset += len(chunk)


class GrowingNifti:
    """A growing 4D NIfTI file (see the module's description).

    Parameters
    ----------
    path : Path
        The ``.nii.gz`` file.
    first : Volume
        A volume of the run (gives grid, type and TR); it is not written here.
    dtype : numpy dtype or None
        Type to store; ``None`` keeps the volume's type.
    """

    def __init__(self, path: Path, first: Volume, dtype: Any = None) -> None:
        header = nib.Nifti1Header()
        header.set_data_dtype(np.dtype(dtype or first.data.dtype).newbyteorder("="))
        header.set_data_shape((*first.shape, 1))
        header.set_zooms((*first.zooms, first.tr))
        header.set_xyzt_units("mm", "sec")
        header.set_qform(first.affine, code=1)
        header.set_sform(first.affine, code=1)
        header.set_slope_inter(1.0, 0.0)
        header["vox_offset"] = NIFTI_HEADER_BYTES
        self.path = path
        self._header = header
        self._dtype = header.get_data_dtype()
        self._shape = tuple(first.shape)
        self._file: IO[bytes] | None = None
        self.n_volumes = 0

    def create(self) -> GrowingNifti:
        """Create the file, holding no volume yet (it must not exist)."""
        self._file = self.path.open("x+b")
        self._file.write(self._header_member(0))
        self._file.flush()
        return self

    def resume(self, n_volumes: int) -> GrowingNifti:
        """Open the file a crash left and keep its first ``n_volumes`` volumes.

        Members after them (a volume whose other outputs were not all written, or one cut
        short) are cut off; the header is rewritten with the count.

        Raises
        ------
        InputError
            If the file holds fewer than ``n_volumes`` complete volumes.
        """
        ends = member_ends(self.path)
        if len(ends) < n_volumes + 1:
            raise InputError(f"{self.path} holds {max(0, len(ends) - 1)} complete volumes; "
                             f"{n_volumes} were expected.")
        self._file = self.path.open("r+b")
        self._file.truncate(ends[n_volumes])
        self.n_volumes = n_volumes
        self._rewrite_header()
        return self

    def append(self, volume: Volume) -> None:
        """Add one volume and make the file on disk a valid NIfTI of all volumes so far."""
        data = np.asarray(volume.data, dtype=self._dtype)
        self._append_bytes(data.tobytes(order="F"))

    def append_fill(self) -> None:
        """Add a volume of zeros in the place of a volume that never arrived."""
        size = int(np.prod(self._shape)) * self._dtype.itemsize
        self._append_bytes(bytes(size))

    def close(self) -> None:
        """Close the file (it is already complete)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append_bytes(self, raw: bytes) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(gzip.compress(raw, compresslevel=1, mtime=0))
        self.n_volumes += 1
        self._rewrite_header()

    def _rewrite_header(self) -> None:
        self._file.seek(0)
        self._file.write(self._header_member(self.n_volumes))
        self._file.flush()

    def _header_member(self, n_volumes: int) -> bytes:
        """The NIfTI header as a stored (level 0) gzip member: its size never changes."""
        self._header["dim"][4] = n_volumes
        block = self._header.binaryblock + b"\x00" * (NIFTI_HEADER_BYTES - 348)
        return gzip.compress(block, compresslevel=0, mtime=0)
