"""Enhanced multi-frame MR DICOM: one file per volume (or several), one frame per slice.

Siemens XA writes these (``"siemens-enhanced"``); so may other vendors (``"enhanced"``).
Each frame carries its own functional groups (or shares them): plane position and
orientation, pixel spacing, rescale, and the temporal position that says which volume it
belongs to. Frames are grouped by volume, sorted along the slice normal, checked to be
evenly stacked, and scaled as dcm2niix scales them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from rtserver.errors import InputError
from rtserver.rigid import LPS_TO_RAS
from rtserver.scanner.readers.dicom_common import Common, slice_affine
from rtserver.scanner.readers.dicom_values import (
    integer_of,
    items_of,
    number_of,
    numbers_of,
    philips_scale,
    rescale,
)
from rtserver.scanner.readers.pieces import ORIENTATION_TOLERANCE, Piece, regular_spacing, scaled

__all__ = ["enhanced_pieces"]

#: Per frame: the LPS plane matrix at the origin; all frames: their positions, and the
#: spacing between slices the file states (for a volume of one frame).
_Geometry = tuple[list[np.ndarray], np.ndarray, float]


def _functional_group(frame: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """Return the item of functional group ``sequence`` for one frame (per-frame, else shared)."""
    items = items_of(frame, sequence) or items_of(shared, sequence)
    return items[0] if items else None


def enhanced_pieces(path: Path, dataset: Dataset, image: Common, frames: np.ndarray,
                    kind: str) -> list[Piece]:
    """Read the volumes of an enhanced multi-frame image, one piece each, in volume order.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    dataset : pydicom.dataset.Dataset
        Its data set.
    image : Common
        Its image header fields.
    frames : numpy.ndarray
        The stored values of every frame, (frames, rows, columns).
    kind : str
        ``"siemens-enhanced"`` or ``"enhanced"``.

    Returns
    -------
    list of Piece
        One whole volume per TemporalPositionIndex (the AcquisitionNumber when frames state
        none); Philips' precise float scaling when the file is Philips', else each frame's
        rescale.

    Raises
    ------
    InputError
        If the frames are not described as many times as the file states, lack a plane
        position, orientation or pixel measures, or do not stack into volumes.
    """
    per_frame = items_of(dataset, "PerFrameFunctionalGroupsSequence")
    if len(per_frame) != image.n_frames:
        raise InputError(f"{path} states {image.n_frames} frames but describes {len(per_frame)} in its "
                         f"PerFrameFunctionalGroupsSequence.")
    geometry, scaling, volumes = _describe_frames(path, dataset, image, per_frame)
    pieces = []
    for volume_key in sorted(set(volumes)):
        members = [index for index, key in enumerate(volumes) if key == volume_key]
        pieces.append(_enhanced_volume(path, image, frames, geometry, scaling, members, volume_key, kind))
    return pieces


def _describe_frames(path: Path, dataset: Dataset, image: Common, per_frame: list[Dataset]
                     ) -> tuple[_Geometry, list[tuple[float, float]], list[int]]:
    """Read each frame's plane, position, scaling (slope, intercept) and volume number."""
    shared_items = items_of(dataset, "SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    precise = philips_scale(dataset) if image.manufacturer.startswith("PHILIPS") else None
    default_scale = precise if precise is not None else rescale(dataset)
    default_volume = integer_of(dataset, "AcquisitionNumber") or 1
    # Frames of one volume share their orientation, spacing and scaling: decode each once.
    decoded: dict = {}
    planes: dict[tuple[tuple[float, ...], tuple[float, ...]], np.ndarray] = {}
    bases, positions, scaling, volumes = [], [], [], []
    stated_spacing = None
    for index, frame in enumerate(per_frame):
        position = _functional_group(frame, shared, "PlanePositionSequence")
        orientation = _functional_group(frame, shared, "PlaneOrientationSequence")
        measures = _functional_group(frame, shared, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise InputError(f"{path}: frame {index + 1} lacks a plane position, plane orientation or "
                             f"pixel measures functional group.")
        plane = (numbers_of(orientation, "ImageOrientationPatient", decoded),
                 numbers_of(measures, "PixelSpacing", decoded))
        if plane not in planes:
            planes[plane] = slice_affine(path, (0.0, 0.0, 0.0), *plane)
        bases.append(planes[plane])
        positions.append(numbers_of(position, "ImagePositionPatient"))
        if stated_spacing is None:
            stated_spacing = (number_of(measures, "SpacingBetweenSlices")
                              or number_of(measures, "SliceThickness"))
        transform = _functional_group(frame, shared, "PixelValueTransformationSequence")
        own_scale = precise is None and transform is not None
        scaling.append(rescale(transform, decoded) if own_scale else default_scale)
        content = _functional_group(frame, None, "FrameContentSequence")
        temporal = integer_of(content, "TemporalPositionIndex") if content is not None else None
        volumes.append(temporal if temporal is not None else default_volume)
    if any(len(position) != 3 for position in positions):
        raise InputError(f"{path}: every frame should state ImagePositionPatient as 3 numbers.")
    return (bases, np.array(positions, dtype=np.float64), stated_spacing or 1.0), scaling, volumes


def _enhanced_volume(path: Path, image: Common, frames: np.ndarray, geometry: _Geometry,
                     scaling: list[tuple[float, float]], members: list[int], volume_key: int,
                     kind: str) -> Piece:
    """Stack the frames ``members`` of one volume along the normal, scaled, as one piece."""
    bases, all_positions, stated_spacing = geometry
    base = bases[members[0]]
    for index in members:
        if bases[index] is not base and np.abs(bases[index] - base).max() > ORIENTATION_TOLERANCE:
            raise InputError(f"{path}: the frames of volume {volume_key} differ in orientation or "
                             f"pixel spacing.")
    normal = base[:3, 2]
    positions = all_positions[members]
    keys = positions @ normal
    order = np.argsort(keys, kind="stable")
    spacing = regular_spacing(keys[order], positions[order], normal, f"{path} volume {volume_key}")
    if len(members) == 1:
        spacing = stated_spacing
    chosen = [members[index] for index in order]
    in_file_order = chosen == list(range(chosen[0], chosen[0] + len(chosen)))
    data = (frames[chosen[0]:chosen[-1] + 1] if in_file_order else frames[chosen]).transpose(2, 1, 0)
    factors = {scaling[index] for index in chosen}
    if len(factors) == 1:
        data = scaled(np.ascontiguousarray(data), *factors.pop())
    else:
        slopes = np.array([scaling[index][0] for index in chosen], dtype=np.float32)
        intercepts = np.array([scaling[index][1] for index in chosen], dtype=np.float32)
        data = np.ascontiguousarray(data.astype(np.float32) * slopes + intercepts)
    affine = base.copy()
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[order[0]]
    return Piece(kind, image.series, image.series_number, volume_key, None, len(members), data,
                 LPS_TO_RAS @ affine, image.tr)
