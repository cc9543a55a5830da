"""Philips PAR/REC: a PAR text header and the REC pixel data beside it, one pair per volume.

nibabel reads both; this module chooses what to take from them the way dcm2niix does for
Philips real-time dumps, tells a pair still being written (no REC yet, a REC shorter than
its PAR describes, a PAR without its last line) from a broken one, and makes pieces.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtserver.errors import IncompleteFileError, InputError
from rtserver.scanner.readers.pieces import Piece, series_digest, series_pattern
from rtserver.scanner.readers.sniff import PAR_END

if TYPE_CHECKING:
    from nibabel.parrec import PARRECHeader

__all__ = ["read_parrec"]


def read_parrec(path: Path, buf: bytes) -> list[Piece]:
    """Read the volumes of one PAR file and the REC beside it.

    Choices, each checked against dcm2niix on Philips real-time dumps:

    - Image type: the magnitude (type 0) when present, else the lowest type number. Real-time
      dumps hold types 16 and 17 (17 has intercept -3142 and slope 1.53: a phase in mrad).
    - Values: the display values DV = PV * RS + RI of each slice, which is what dcm2niix
      writes for a PAR whose scaling varies between slices (real-time dumps rescale every
      slice). dcm2niix writes FP = DV / (RS * SS) only when the scaling is constant; doing
      that per file would switch conventions within a series.
    - Geometry: angulation and off-centre from the image lines (their mean over one
      dynamic's slices), not from the general information, which dumps fill with zeros.
    - volume_key: the dynamic number when the file holds several dynamics (or another than
      1), else the "Acquisition nr" (dumps hold one dynamic each and count acquisitions).
    - TR: None when the header states less than 10 ms (dumps write a placeholder of 1 ms).

    Parameters
    ----------
    path : Path
        The PAR file.
    buf : bytes
        Its bytes.

    Returns
    -------
    list of Piece
        One whole volume per dynamic of the chosen image type, float32 display values.

    Raises
    ------
    IncompleteFileError
        If the PAR has no end line yet, its REC is not there yet, or is shorter than the PAR
        describes.
    InputError
        If nibabel cannot read the PAR, or the pair, or the PAR holds several images per
        slice and dynamic of one type (echoes, phases, ...).
    """
    header = _parse_par(path, buf)
    rec = _whole_rec(path, header)
    chosen_type, line_dynamic, info = _chosen_images(header)
    affine, labels, data = _read_pair(path, rec, info, header.image_defs)
    kept, dynamics = _kept_volumes(path, labels, data.shape[3], chosen_type, line_dynamic)
    pattern, _ = series_pattern(path)
    series = series_digest("parrec", f"{path.parent.resolve()}/{pattern}")
    one_dynamic = len(kept) == 1 and int(dynamics[kept[0]]) == 1 and int(info["max_dynamics"]) <= 1
    acquisition = int(info.get("acq_nr", 0))
    tr = _par_tr(info)
    n_slices = int(info["max_slices"]) or None
    return [Piece("parrec", series, None, acquisition if one_dynamic else int(dynamics[index]), None,
                  n_slices, np.ascontiguousarray(data[..., index], dtype=np.float32), affine, tr)
            for index in kept]


def _chosen_images(header: PARRECHeader) -> tuple[int, int, dict]:
    """Choose the image type to read: the type, the dynamic of its first image line, and the geometry.

    The general information of real-time dumps is all zeros, so the returned copy of it takes
    its angulation and off-centre from the image lines of the chosen type (the off-centre
    averaged over the slices of its lowest dynamic).
    """
    defs = header.image_defs
    types = sorted(set(defs["image_type_mr"].tolist()))
    chosen_type = 0 if 0 in types else types[0]
    chosen = defs[defs["image_type_mr"] == chosen_type]
    info = dict(header.general_info)
    first_dynamic = chosen[chosen["dynamic scan number"] == chosen["dynamic scan number"].min()]
    info["angulation"] = np.asarray(chosen["image angulation"][0], dtype=np.float64)
    info["off_center"] = np.asarray(first_dynamic["image offcentre"], dtype=np.float64).mean(axis=0)
    return chosen_type, int(chosen["dynamic scan number"][0]), info


def _read_pair(path: Path, rec: Path, info: dict,
               defs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Read a PAR/REC pair's scanner affine, volume labels and display values (i, j, k, volumes)."""
    from nibabel import parrec

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            located = parrec.PARRECHeader(info, defs, permit_truncated=False, strict_sort=True)
            affine = located.get_affine(origin="scanner")
            labels = {key: np.asarray(value) for key, value in located.get_volume_labels().items()}
            with rec.open("rb") as handle:
                proxy = parrec.PARRECArrayProxy(handle, located, mmap=False, scaling="dv")
                data = np.asarray(proxy, dtype=np.float64)
    except Exception as exc:  # nibabel raises PARRECError, ValueError, ... on odd headers
        raise InputError(f"{path} cannot be read with its REC: {exc}") from None
    if data.ndim == 3:
        data = data[..., np.newaxis]
    return affine, labels, data


def _kept_volumes(path: Path, labels: dict[str, np.ndarray], n_volumes: int, chosen_type: int,
                  line_dynamic: int) -> tuple[list[int], np.ndarray]:
    """Pick the volumes of the chosen type, with every volume's dynamic; InputError on other labels.

    nibabel leaves out a label that does not vary; then every volume has ``chosen_type`` and
    ``line_dynamic``.
    """
    types_per_volume = labels.pop("image_type_mr", np.full(n_volumes, chosen_type))
    dynamics = labels.pop("dynamic scan number", np.full(n_volumes, line_dynamic))
    if labels:
        raise InputError(f"{path} holds several {', '.join(labels)} per dynamic; this reader reads one "
                         f"image per slice and dynamic.")
    kept = [index for index in range(n_volumes) if types_per_volume[index] == chosen_type]
    return kept, dynamics


def _parse_par(path: Path, buf: bytes) -> PARRECHeader:
    """Parse a whole PAR file with nibabel (IncompleteFileError without its end line)."""
    from nibabel import parrec

    if PAR_END not in buf:
        raise IncompleteFileError(f"{path} has no END OF DATA DESCRIPTION line yet: it is probably still "
                                  f"being written; try again later.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parrec.PARRECHeader.from_fileobj(io.StringIO(buf.decode("latin-1")),
                                                    permit_truncated=False, strict_sort=True)
    except Exception as exc:  # nibabel raises PARRECError, ValueError, ... on broken headers
        raise InputError(f"{path} is a PAR file nibabel cannot read: {exc}") from None


def _whole_rec(path: Path, header: PARRECHeader) -> Path:
    """Find the REC beside a PAR, once it holds every image the PAR describes (else IncompleteFileError)."""
    rec = _rec_path(path)
    if rec is None:
        raise IncompleteFileError(f"{path} has no REC file beside it yet; try again later.")
    defs = header.image_defs
    bits = int(defs["image pixel size"][0])
    x_size, y_size = (int(value) for value in defs["recon resolution"][0])
    # nibabel and dcm2niix read the REC's images in the order of the PAR's image lines.
    needed = max(len(defs), int(defs["index in REC file"].max()) + 1) * x_size * y_size * bits // 8
    rec_size = rec.stat().st_size
    if rec_size < needed:
        raise IncompleteFileError(f"{rec} holds {rec_size} bytes, {needed - rec_size} short of what its "
                                  f"PAR describes: it is probably still being written; try again later.")
    return rec


def _rec_path(path: Path) -> Path | None:
    """Find the REC file beside a PAR (any case of its suffix); None when there is none yet."""
    for suffix in (".rec", ".REC", ".Rec"):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _par_tr(info: dict) -> float | None:
    """Read the TR (s) a PAR states; None below 10 ms, as real-time dumps write a placeholder of 1 ms."""
    tr_values = np.atleast_1d(info.get("repetition_time", []))
    return float(tr_values[0]) / 1000.0 if len(tr_values) and tr_values[0] >= 10 else None
