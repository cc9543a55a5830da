"""Read what a scanner (or a recorded session) wrote, as a sequence of :class:`Volume`.

Supported here: a 4D NIfTI file (also a recorded session's ``*_bold.nii.gz``, or a folder
holding exactly one), a folder of 3D NIfTI files, and a folder of Siemens classic mosaic
DICOM files (one file per volume). Patient identity never leaves this module: a volume
carries voxels, geometry, TR and the source file's base name only.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from rtserver.errors import InputError
from rtserver.rigid import LPS_TO_RAS
from rtserver.volume import Volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class VolumeSource:
    """An ordered, re-iterable series of volumes from one source.

    Attributes
    ----------
    path : Path
        The file or folder read.
    kind : str
        ``"nifti4d"``, ``"nifti3d-folder"`` or ``"siemens-mosaic"``.
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
        return self._loader()  # type: ignore[misc]

    def __len__(self) -> int:
        return self.n_volumes


def open_source(path: str | Path, tr: float | None = None) -> VolumeSource:
    """Open a scanner export or recorded session for reading volume by volume.

    Parameters
    ----------
    path : str or Path
        A 4D NIfTI file, a folder of 3D NIfTI files, a folder of Siemens mosaic DICOM files,
        or a recorded run folder holding one ``*_bold.nii[.gz]``.
    tr : float or None
        Repetition time (s) to use when the files do not state one.

    Returns
    -------
    VolumeSource

    Raises
    ------
    InputError
        If the path does not exist or holds nothing readable as fMRI volumes.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Source {path} does not exist.")
    if path.is_file():
        if _is_nifti(path):
            return _nifti4d_source(path, tr)
        raise InputError(
            f"Source {path} should be a NIfTI file (.nii, .nii.gz) or a folder. "
            f"Got a file with suffix {''.join(path.suffixes) or '(none)'}."
        )
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    niftis = [p for p in files if _is_nifti(p)]
    bolds = [p for p in niftis if re.search(r"_bold\.nii(\.gz)?$", p.name)]
    if len(bolds) == 1:
        return _nifti4d_source(bolds[0], tr)
    if niftis:
        return _nifti3d_folder_source(path, niftis, tr)
    dicoms = [p for p in files if _looks_like_dicom(p)]
    if dicoms:
        return _siemens_mosaic_source(path, dicoms, tr)
    raise InputError(
        f"Source folder {path} holds no NIfTI or DICOM files (looked at {len(files)} files)."
    )


# --------------------------------------------------------------------------- NIfTI
def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(path)
        img.header  # noqa: B018 - touch the header so a broken file fails here
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"Cannot read NIfTI file {path}: {exc}") from None
    return img


def _voxels(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The stored voxel values, scaled to float32 only when the file asks for scaling."""
    slope, inter = img.dataobj.slope, img.dataobj.inter
    try:
        if (slope in (None, 1.0) or not np.isfinite(slope)) and inter in (None, 0.0):
            return np.asanyarray(img.dataobj.get_unscaled())
        return np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"Cannot read the voxels of {path}: {exc}") from None


def _nifti_tr(img: nib.Nifti1Image, path: Path, tr: float | None) -> float:
    if tr is not None:
        return float(tr)
    sidecar = Path(re.sub(r"\.nii(\.gz)?$", ".json", str(path)))
    if sidecar.exists():
        try:
            value = json.loads(sidecar.read_text()).get("RepetitionTime")
        except (OSError, json.JSONDecodeError):
            value = None
        if isinstance(value, int | float) and value > 0:
            return float(value)
    zooms = img.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        unit = img.header.get_xyzt_units()[1]
        return float(zooms[3]) / (1000.0 if unit == "msec" else 1.0)
    raise InputError(f"{path} states no TR (no 4th zoom, no JSON sidecar); pass --tr.")


def _nifti4d_source(path: Path, tr: float | None) -> VolumeSource:
    img = _load_nifti(path)
    if len(img.shape) not in (3, 4):
        raise InputError(f"NIfTI file {path} should be 3D or 4D. Got shape {img.shape}.")
    n_volumes = 1 if len(img.shape) == 3 else img.shape[3]
    repetition = _nifti_tr(img, path, tr) if len(img.shape) == 4 else float(tr or 2.0)
    affine = img.affine

    def load() -> Iterator[Volume]:
        data = _voxels(img, path)
        if data.ndim == 3:
            data = data[..., np.newaxis]
        for index in range(n_volumes):
            yield Volume(
                data=np.ascontiguousarray(data[..., index]),
                affine=affine,
                index=index,
                tr=repetition,
                meta={"file": path.name},
            )

    return VolumeSource(path, "nifti4d", repetition, n_volumes, load)


def _nifti3d_folder_source(folder: Path, files: list[Path], tr: float | None) -> VolumeSource:
    files = sorted(files, key=_natural_key)
    first = _load_nifti(files[0])
    if len(first.shape) != 3:
        raise InputError(
            f"Folder {folder} should hold 3D NIfTI files, one per volume. "
            f"Got {files[0].name} of shape {first.shape}."
        )
    repetition = float(tr) if tr is not None else _folder_tr(folder, first, files[0])

    def load() -> Iterator[Volume]:
        for index, file in enumerate(files):
            img = _load_nifti(file)
            yield Volume(
                data=np.ascontiguousarray(_voxels(img, file)),
                affine=img.affine,
                index=index,
                tr=repetition,
                meta={"file": file.name},
            )

    return VolumeSource(folder, "nifti3d-folder", repetition, len(files), load)


def _folder_tr(folder: Path, first: nib.Nifti1Image, path: Path) -> float:
    for sidecar in sorted(folder.glob("*.json")):
        try:
            value = json.loads(sidecar.read_text()).get("RepetitionTime")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, int | float) and value > 0:
            return float(value)
    raise InputError(f"{folder} states no TR (3D files, no JSON sidecar); pass --tr.")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# --------------------------------------------------------------------------- DICOM
def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_mosaic_file(path: Path) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Read one Siemens mosaic file.

    Returns
    -------
    data : numpy.ndarray
        The unpacked 3D volume (as stored, with rescale applied only when the file has one).
    affine : numpy.ndarray
        Voxel-to-world RAS+ matrix (mm).
    acquisition : int
        The DICOM AcquisitionNumber (order of the volume in the run).
    tr : float
        Repetition time in seconds.

    Raises
    ------
    InputError
        If the file is not a readable Siemens mosaic (truncated, another kind of image).
    """
    with warnings.catch_warnings():  # nibabel warns that nicom is experimental, on import
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            wrapper = dicomwrappers.wrapper_from_file(str(path))
            if not getattr(wrapper, "is_mosaic", False):
                raise InputError(f"{path.name} is not a Siemens mosaic image; skipped.")
            data = wrapper.get_data()
            affine = LPS_TO_RAS @ wrapper.affine
    except InputError:
        raise
    except Exception as exc:  # pydicom and nibabel raise many types on broken files
        raise InputError(f"Cannot read DICOM file {path.name}: {type(exc).__name__}: {exc}") from None
    dataset = wrapper.dcm_data
    acquisition = dataset.get("AcquisitionNumber", dataset.get("InstanceNumber"))
    repetition = dataset.get("RepetitionTime")
    if acquisition is None or repetition is None:
        raise InputError(f"{path.name} lacks AcquisitionNumber or RepetitionTime.")
    if data.dtype.kind == "f" and np.all(data == np.round(data)) and data.max() < 65536:
        data = data.astype(np.uint16 if data.min() >= 0 else np.int32)
    return np.ascontiguousarray(data), affine, int(acquisition), float(repetition) / 1000.0


def _siemens_mosaic_source(folder: Path, files: list[Path], tr: float | None) -> VolumeSource:
    entries: dict[int, Path] = {}
    repetition = tr
    for path in files:
        try:
            _, _, acquisition, file_tr = read_mosaic_file(path)
        except InputError as exc:
            log.warning("skipped %s", exc)
            continue
        if acquisition in entries:
            log.warning(
                "skipped %s: same acquisition number (%d) as %s",
                path.name, acquisition, entries[acquisition].name,
            )
            continue
        entries[acquisition] = path
        repetition = repetition if repetition is not None else file_tr
    if not entries:
        raise InputError(f"No readable Siemens mosaic DICOM file in {folder}.")
    ordered = [entries[key] for key in sorted(entries)]

    def load() -> Iterator[Volume]:
        for index, path in enumerate(ordered):
            data, affine, _, _ = read_mosaic_file(path)
            yield Volume(data=data, affine=affine, index=index, tr=float(repetition),
                         meta={"file": path.name})

    return VolumeSource(folder, "siemens-mosaic", float(repetition), len(ordered), load)
