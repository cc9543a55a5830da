"""Files shipped inside the package, found with :mod:`importlib.resources` and read once.

The MNI152 template and the Schaefer-200 + Tian S2 atlas live in ``rtserver/data`` (their
README gives sources and licences); the paradigms in ``feedback_display/paradigms``; the
demo decoder in ``models/``. Reading them is the only I/O here: the simulator and the
session setup call these loaders and hand the arrays to :mod:`rtserver.core`.
"""

from __future__ import annotations

import functools
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import nibabel as nib
import numpy as np

from rtserver.core.atlas import Atlas, Template, filled_mask, parse_label_text

_ATLAS_STEM = "Schaefer2018_200Parcels_7Networks_order_Tian_Subcortex_S2"


def data_file(*parts: str) -> Traversable:
    """A file under ``rtserver/data``."""
    return resources.files("rtserver").joinpath("data", *parts)


TEMPLATE_FILE = data_file("mni152", "MNI152_T1_3mm.nii.gz")
TEMPLATE_MASK_FILE = data_file("mni152", "MNI152_T1_3mm_brain_mask.nii.gz")
ATLAS_FILE = data_file("schaefer200_tian_s2", f"{_ATLAS_STEM}_MNI152NLin6Asym_2mm.nii.gz")
ATLAS_LABEL_FILE = data_file("schaefer200_tian_s2", f"{_ATLAS_STEM}_label.txt")


def demo_model_path() -> Path:
    """The demo decoder, ``models/demo_decoder.skops`` at the project's root.

    ``models/`` is the project's folder of trained decoders (DESIGN keeps it beside the
    packages, not inside one), so this is a checkout path, not package data: the demo and
    its regeneration (``python -m rtserver.train.demo_model``) run from a source checkout.
    """
    return Path(str(resources.files("rtserver"))).parent / "models" / "demo_decoder.skops"


def _read_image(file: Traversable) -> tuple[np.ndarray, np.ndarray, float]:
    with resources.as_file(file) as path:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float64)
        zoom = float(np.mean(image.header.get_zooms()[:3]))
        return data, np.asarray(image.affine, dtype=np.float64), zoom


@functools.cache
def load_template() -> Template:
    """The MNI152 T1 template (3 mm) with its brain mask, ventricles filled (read-only)."""
    t1, affine, zoom = _read_image(TEMPLATE_FILE)
    mask = filled_mask(_read_image(TEMPLATE_MASK_FILE)[0])
    for array in (t1, mask, affine):
        array.setflags(write=False)
    return Template(t1=t1, brain_mask=mask, affine=affine, zoom=zoom)


@functools.cache
def load_atlas() -> Atlas:
    """The Schaefer-200 + Tian S2 atlas (2 mm, MNI152NLin6Asym) and its region names."""
    data, affine, _ = _read_image(ATLAS_FILE)
    labels = np.rint(data).astype(np.int32)
    index = parse_label_text(ATLAS_LABEL_FILE.read_text(encoding="utf-8"),
                             source=f"Atlas label file {ATLAS_LABEL_FILE.name}")
    for array in (labels, affine):
        array.setflags(write=False)
    return Atlas(labels=labels, affine=affine, index=index,
                 source=f"Atlas label file {ATLAS_LABEL_FILE.name}")
