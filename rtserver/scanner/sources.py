"""Read what a scanner (or a recorded session) wrote, as a sequence of :class:`Volume`.

Supported here: a 4D NIfTI file (also a recorded session's ``*_bold.nii.gz``, or a folder
holding exactly one), a folder of 3D NIfTI files, and a scanner export folder of any layout
:mod:`rtserver.scanner.readers` reads (Siemens mosaic and XA enhanced DICOM, GE and Philips
per-slice DICOM, Philips PAR/REC), assembled into volumes by the same code as a watched
live folder (:class:`rtserver.scanner.assembly.SeriesAssembler`). NIfTI files are read by
the same reader as in a watched folder (:mod:`rtserver.scanner.readers.nifti`): the same
TR rule and the same scaling. Patient identity never leaves this module: a volume carries
voxels, geometry, TR, series and volume numbers, and locally the name of the file it came
from (which the wire protocol never sends).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtserver.errors import IncompleteFileError, InputError
from rtserver.scanner.assembly import SeriesAssembler
from rtserver.scanner.readers import (
    iter_nifti_volumes,
    load_nifti,
    nifti_n_volumes,
    nifti_tr,
    nifti_volumes,
    read_file,
    sidecar_tr,
)
from rtserver.volume import Volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Repetition time (s) of a single NIfTI volume whose file and sidecar state none.
SINGLE_VOLUME_TR = 2.0


@dataclass
class VolumeSource:
    """An ordered, re-iterable series of volumes from one source.

    Attributes
    ----------
    path : Path
        The file or folder read.
    kind : str
        ``"nifti4d"``, ``"nifti3d-folder"``, or the readers' kind of the scanner files
        (``"siemens-mosaic"``, ``"ge-slice"``, ``"parrec"``, ...).
    tr : float
        Repetition time in seconds.
    n_volumes : int
        Number of volumes.
    """

    path: Path
    kind: str
    tr: float
    n_volumes: int
    _loader: object = None

    def __iter__(self) -> Iterator[Volume]:
        """Iterate over the volumes in order (read afresh each time where the source is lazy)."""
        return self._loader()  # type: ignore[misc]

    def __len__(self) -> int:
        """Return the number of volumes."""
        return self.n_volumes


def open_source(path: str | Path, tr: float | None = None, file_format: str | None = None,
                n_slices: int | None = None) -> VolumeSource:
    """Open a scanner export or recorded session for reading volume by volume.

    Parameters
    ----------
    path : str or Path
        A 4D NIfTI file, a folder of 3D NIfTI files, a scanner export folder (DICOM of any
        layout :mod:`rtserver.scanner.readers` reads, or PAR/REC), a PAR file, or a recorded run
        folder holding one ``*_bold.nii[.gz]``.
    tr : float or None
        The repetition time (s) of every volume, whatever the files state. None takes the
        files' (for NIfTI by :func:`rtserver.scanner.readers.nifti.nifti_tr`'s rule, as a
        watched folder does); a single NIfTI volume that states none gets 2 s.
    file_format : str or None
        Read the files as this layout (see :data:`rtserver.scanner.readers.FORMATS`) instead of
        detecting it.
    n_slices : int or None
        Slices per volume, for per-slice files that do not state it.

    Returns
    -------
    VolumeSource

    Raises
    ------
    InputError
        If the path does not exist, holds nothing readable as fMRI volumes, or states no TR
        when none is given.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Source {path} does not exist.")
    if path.is_file():
        if _is_nifti(path) and file_format in (None, "nifti"):
            return _nifti4d_source(path, tr)
        if path.suffix.lower() == ".par" or file_format is not None:
            return _scanner_source(path, [path], tr, file_format, n_slices)
        raise InputError(
            f"Source {path} should be a NIfTI file (.nii, .nii.gz), a PAR file or a folder. "
            f"Got a file with suffix {''.join(path.suffixes) or '(none)'}."
        )
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=_natural_key)
    scanner_files = [p for p in files if _looks_like_scanner_file(p)]
    if not scanner_files:
        # An exam folder (e.g. GE's p1/e123/s1925/) keeps its images in subfolders.
        nested = sorted((p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts)),
            key=lambda p: _natural_key(p.relative_to(path)))
        scanner_files = [p for p in nested if _looks_like_scanner_file(p)]
    niftis = [p for p in files if _is_nifti(p)]
    if file_format in (None, "nifti") and niftis:
        bolds = [p for p in niftis if re.search(r"_bold\.nii(\.gz)?$", p.name)]
        if len(bolds) == 1:
            return _nifti4d_source(bolds[0], tr)
        if file_format == "nifti" or not scanner_files:
            return _nifti3d_folder_source(path, niftis, tr)
    if scanner_files and file_format in (None, "siemens-mosaic", "siemens-enhanced", "ge",
                                         "philips", "parrec", "dicom"):
        files = scanner_files
    return _scanner_source(path, files, tr, file_format, n_slices)


# --------------------------------------------------------------------------- NIfTI
def _is_nifti(path: Path) -> bool:
    """Tell whether a file's name is a NIfTI file's."""
    return path.name.endswith(NIFTI_SUFFIXES)


def _nifti4d_source(path: Path, tr: float | None) -> VolumeSource:
    """Open a NIfTI file's volumes (one for a 3D file), read when iterated."""
    image = load_nifti(path)
    n_volumes = nifti_n_volumes(image.shape, path)
    repetition = nifti_tr(image, path, tr)
    if repetition is None:
        if n_volumes > 1:
            raise InputError(f"{path} states no TR (no JSON sidecar, no 4th zoom).", setting="tr")
        repetition = SINGLE_VOLUME_TR
    affine = image.affine

    def load() -> Iterator[Volume]:
        for index, data in enumerate(iter_nifti_volumes(image, path)):
            yield Volume(
                data=np.ascontiguousarray(data),
                affine=affine,
                index=index,
                tr=repetition,
                meta={"file": path.name},
            )

    return VolumeSource(path, "nifti4d", repetition, n_volumes, load)


def _nifti3d_folder_source(folder: Path, files: list[Path], tr: float | None) -> VolumeSource:
    """Open a folder of 3D NIfTI files, one volume each, in natural order of their names."""
    files = sorted(files, key=_natural_key)
    first = load_nifti(files[0])
    if len(first.shape) != 3:
        raise InputError(
            f"Folder {folder} should hold 3D NIfTI files, one per volume. "
            f"Got {files[0].name} of shape {first.shape}."
        )
    repetition = nifti_tr(first, files[0], tr)
    if repetition is None:
        repetition = _folder_tr(folder)

    def load() -> Iterator[Volume]:
        for index, file in enumerate(files):
            image = load_nifti(file)
            yield Volume(
                data=np.ascontiguousarray(nifti_volumes(image, file)[..., 0]),
                affine=image.affine,
                index=index,
                tr=repetition,
                meta={"file": file.name},
            )

    return VolumeSource(folder, "nifti3d-folder", repetition, len(files), load)


def _folder_tr(folder: Path) -> float:
    """Read the RepetitionTime of the first JSON file of a folder that states one."""
    for sidecar in sorted(folder.glob("*.json")):
        stated = sidecar_tr(sidecar)
        if stated is not None:
            return stated
    raise InputError(f"{folder} states no TR (3D files, no JSON sidecar).", setting="tr")


def _natural_key(path: Path) -> list:
    name = path.name if path.is_absolute() else str(path)
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------- scanner files
def _looks_like_scanner_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima", ".par"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _scanner_source(where: Path, files: list[Path], tr: float | None,
                    file_format: str | None, n_slices: int | None) -> VolumeSource:
    """Every volume of the main series in ``files``, assembled as a live folder would be."""
    pieces, names = [], {}
    for path in files:
        try:
            got = read_file(path, file_format)
        except IncompleteFileError as exc:
            log.warning("skipped %s: incomplete (%s)", path.name, exc)
            continue
        except InputError as exc:
            log.info("skipped %s: %s", path.name, exc)
            continue
        for piece in got:
            names[id(piece)] = path.name
        pieces += got
    if not pieces:
        raise InputError(f"{where} holds no readable fMRI image (looked at {len(files)} files).")
    # The run is the series with the most volumes; localizers and others are left out.
    volumes_per_series = Counter({series: len({p.volume_key for p in pieces
                                               if p.series == series})
                                  for series in {p.series for p in pieces}})
    main = volumes_per_series.most_common(1)[0][0]
    assembler = SeriesAssembler(n_slices=n_slices, tr=tr)
    for piece in sorted(pieces, key=lambda p: (p.series != main, p.volume_key,
                                               -1e9 if p.slice_key is None else p.slice_key)):
        try:
            assembler.add(piece, None)
        except InputError as exc:
            log.warning("skipped %s: %s", names[id(piece)], exc)
    try:
        volumes = assembler.flush()
    except InputError:  # no TR given, none stated
        raise InputError(f"{where} states no TR.", setting="tr") from None
    if not volumes:
        raise InputError(f"{where} holds no whole volume (every volume lacks files).")
    return VolumeSource(where, volumes[0].meta["kind"], volumes[0].tr, len(volumes),
                        lambda: iter(volumes))
