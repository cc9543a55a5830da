"""Known truth for atlas registration: the MNI template moved by a known affine and warp.

A subject's head is the MNI152 template carried through a fixed affine (rotation, scaling,
shift) and a smooth sinusoidal warp, sampled on an EPI slab with EPI contrast and noise
(:func:`known_truth_epi`), or on a T1w grid (:func:`synthetic_t1w`); the true ROI labels
come from the atlas through the same map. Registration tests and
``benchmarks/registration.py`` measure how well the ROIs come back.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rtserver.core.atlas import label_rois
from rtserver.resources import load_atlas, load_template
from rtserver.volume import Volume


def _to_mni(world: np.ndarray) -> np.ndarray:
    """The known truth: subject world (mm) -> MNI (mm), an affine and a smooth warp."""
    angle = np.deg2rad(6.0)
    linear = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                       [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]) @ np.diag(
                           [1.08, 1.04, 1.1])
    mni = linear @ world + np.array([[3.0], [-4.0], [5.0]])
    warp = np.stack([3.0 * np.sin(mni[1] / 35.0), 2.5 * np.cos(mni[0] / 40.0),
                     2.0 * np.sin(mni[0] / 30.0 + mni[2] / 45.0)])
    return mni + warp


def _sample(image, image_affine, mni, shape, order):
    inverse = np.linalg.inv(image_affine)
    coords = inverse[:3, :3] @ mni + inverse[:3, 3:4]
    return ndimage.map_coordinates(image, coords, order=order, mode="constant",
                                   cval=0).reshape(shape)


def _grid(shape, voxel, origin):
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = origin
    ijk = np.indices(shape).reshape(3, -1).astype(np.float64)
    return affine, affine[:3, :3] @ ijk + affine[:3, 3:4]


def synthetic_t1w(seed: int = 4) -> Volume:
    """The MNI T1 head through the same known truth, on a 2.5 mm grid, with noise."""
    template = load_template()
    shape = (70, 84, 72)
    affine, world = _grid(shape, 2.5, [-88.0, -120.0, -70.0])
    t1 = _sample(template.t1, template.affine, _to_mni(world), shape, 1)
    t1 = t1 * (1 + 0.02 * np.random.default_rng(seed).standard_normal(shape))
    return Volume(t1.astype(np.float32), affine, index=0, tr=1.0)


def known_truth_epi(seed: int = 3):
    """The template in EPI contrast through a known affine + smooth warp, slab, noise.

    Returns
    -------
    volume : Volume
        The EPI volume.
    labels : numpy.ndarray
        The true ROI labels on its grid.
    """
    template, atlas = load_template(), load_atlas()
    shape = (60, 70, 34)
    # A slab from z=-40 to z=+66 mm (the top of the head cut off).
    affine, world = _grid(shape, 3.2, [-96.0, -125.0, -40.0])
    mni = _to_mni(world)
    contrast = _sample(template.epi_contrast(), template.affine, mni, shape, 1)
    rng = np.random.default_rng(seed)
    data = 1000.0 * contrast * (1 + 0.03 * rng.standard_normal(shape))
    data += 20.0 * np.abs(rng.standard_normal(shape))
    truth, _ = label_rois(_sample(atlas.labels, atlas.affine, mni, shape, 0).astype(np.int32),
                          atlas)
    return Volume(data.astype(np.float32), affine, index=0, tr=2.0), truth
