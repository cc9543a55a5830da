"""Which reader a file goes to: :func:`read_file`, the readers' one entry point."""

from __future__ import annotations

from pathlib import Path

from rtserver.errors import ForeignFileError, IncompleteFileError, InputError
from rtserver.scanner.readers.dicom import read_dicom
from rtserver.scanner.readers.nifti import read_nifti
from rtserver.scanner.readers.parrec import read_parrec
from rtserver.scanner.readers.pieces import FORMATS, Piece
from rtserver.scanner.readers.sniff import not_an_image_message, sniff

__all__ = ["is_complete_file", "read_file"]


def read_file(path: str | Path, format: str | None = None) -> list[Piece]:  # noqa: A002 - the brief's name
    """Read one file of a scanner export folder.

    Parameters
    ----------
    path : str or Path
        A DICOM file (Siemens mosaic, enhanced multi-frame of any vendor, GE, Philips or
        other per-slice), a PAR file with its REC beside it, or a ``.nii``/``.nii.gz`` file.
    format : str or None
        Force the interpretation: one of :data:`~rtserver.scanner.readers.pieces.FORMATS`.
        None detects it from the content (not from the suffix).

    Returns
    -------
    list of Piece
        Usually one piece; a multi-frame DICOM or a 4D NIfTI holding several volumes gives
        one piece per volume, in file order.

    Raises
    ------
    IncompleteFileError
        If the file is shorter than its header promises (still being written).
    ForeignFileError
        If the file is not an fMRI image this system reads (text, non-image DICOM,
        localizer, mask, a REC without its PAR, ...).
    InputError
        If the file claims a format but cannot be read as it, or ``format`` does not match.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise InputError(f"format should be one of {', '.join(FORMATS)} or None. Got {format!r}.")
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ForeignFileError(f"{path} is a folder, not a file; skipped.") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror}.") from None
    found = sniff(buf, path)
    requested = format
    if requested is None:
        if found is None:
            raise ForeignFileError(not_an_image_message(path))
        if found == "rec":
            raise ForeignFileError(f"{path} is REC pixel data, read through the PAR file beside it; skipped.")
        requested = found
    elif requested == "parrec" and found != "parrec":
        raise InputError(f"{path} was to be read as a PAR file, but it holds no PAR header"
                         f"{' (it is a REC: pass its PAR file)' if found == 'rec' else ''}.")
    elif requested == "nifti" and found != "nifti":
        raise InputError(f"{path} was to be read as NIfTI, but it holds no NIfTI-1/2 header.")
    elif requested not in ("parrec", "nifti") and found != "dicom":
        raise InputError(f"{path} was to be read as DICOM ({requested}), but it holds no DICOM header.")
    if requested == "parrec":
        return read_parrec(path, buf)
    if requested == "nifti":
        return read_nifti(path, buf)
    return read_dicom(path, buf, requested)


def is_complete_file(path: str | Path) -> bool:
    """Whether a file is complete, i.e. :func:`read_file` would not raise IncompleteFileError.

    Parameters
    ----------
    path : str or Path
        Any file of an export folder.

    Returns
    -------
    bool
        False while the file is shorter than its header promises; True otherwise, also for
        foreign or unreadable files (waiting would not help them).
    """
    try:
        read_file(path)
    except IncompleteFileError:
        return False
    except InputError:
        return True
    return True
