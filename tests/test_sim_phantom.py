"""Tests of the simulator's anatomy: the EPI-contrast phantom and the atlas look-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtserver.resources import load_atlas
from rtserver.sim.phantom import build_phantom


def test_epi_contrast_csf_brighter_than_grey_brighter_than_white():
    phantom = build_phantom((64, 64, 36), 3.5)
    baseline = phantom.baseline[phantom.brain_mask]
    assert 950 < baseline.mean() < 1050
    # Lateral ventricle (CSF), caudate head (grey) and centrum semiovale (white), in MNI mm.
    points = {"csf": (-4, 2, 16), "grey": (-13, 12, 10), "white": (-26, -10, 30)}
    inverse = np.linalg.inv(phantom.affine)
    value = {name: phantom.baseline[tuple(np.round(inverse @ (*p, 1))[:3].astype(int))]
             for name, p in points.items()}
    assert value["csf"] > value["grey"] > value["white"]
    assert phantom.baseline[0, 0, :].max() == 0  # nothing outside the head


def test_atlas_regions_are_found_by_name():
    """The label file's names and indices, read independently of the simulator."""
    atlas_dir = Path(__file__).resolve().parents[1] / "rtserver" / "data" / "schaefer200_tian_s2"
    (label_file,) = atlas_dir.glob("*_label.txt")
    lines = label_file.read_text(encoding="utf-8").split("\n")
    indices = {lines[k].strip(): int(lines[k + 1].split()[0])
               for k in range(0, len(lines) - 1, 2) if lines[k].strip()}
    assert dict(load_atlas().index) == indices
    assert indices["NAc-shell-rh"] == 9 and indices["aCAU-lh"] == 31  # Tian S2 order
    assert indices["7Networks_LH_Limbic_OFC_1"] > 32  # Schaefer parcels follow Tian's 32
