"""The cortico-striatal ROIs as the field defines them, on the MNI atlases shipped here.

What the live system needs to know about its atlases, with no file read: the ROI
definitions (each a set of Schaefer-200 + Tian S2 region names), the look-up of region
names in the atlas's label text, the labelling of an atlas image sampled on a subject's
grid, and the remapping of the MNI152 T1 template to an EPI-like contrast. The images
themselves are read by :mod:`rtserver.resources` and handed in as arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from rtserver.errors import InputError

#: ROIs of the label image: index in the ``dseg`` image -> (name, atlas region patterns).
#: Each pattern is a region name of the Schaefer-200 + Tian S2 label file, or a prefix
#: ending in ``*``; both hemispheres are listed. Regions are looked up by name in the label
#: file, never by number. Tian S2 divides the caudate into anterior (head, adjoining the
#: nucleus accumbens) and posterior (body) parts, which stand in for the ventral and
#: dorsal caudate.
ROI_DEFINITIONS = MappingProxyType({
    1: ("nacc", ("NAc-shell-rh", "NAc-core-rh", "NAc-shell-lh", "NAc-core-lh")),
    2: ("ventral_caudate", ("aCAU-rh", "aCAU-lh")),
    3: ("dorsal_caudate", ("pCAU-rh", "pCAU-lh")),
    4: ("putamen", ("aPUT-rh", "pPUT-rh", "aPUT-lh", "pPUT-lh")),
    5: ("vmpfc_ofc", ("7Networks_LH_Limbic_OFC_*", "7Networks_RH_Limbic_OFC_*",
                      "7Networks_RH_Default_PFCv_*")),
    6: ("acc", ("7Networks_LH_SalVentAttn_Med_*", "7Networks_RH_SalVentAttn_Med_*")),
    7: ("ifg_dlpfc", ("7Networks_LH_SalVentAttn_FrOperIns_*",
                      "7Networks_RH_SalVentAttn_FrOperIns_*",
                      "7Networks_LH_Cont_PFCl_*", "7Networks_RH_Cont_PFCl_*")),
})


@dataclass(frozen=True)
class Atlas:
    """A labelled atlas image and its region names.

    Attributes
    ----------
    labels : numpy.ndarray
        3D integer image (0 = background), in the atlas's own space.
    affine : numpy.ndarray
        Its voxel-to-world (MNI, mm) matrix.
    index : Mapping of str to int
        Region name -> label value, as the atlas's label file gives them.
    source : str
        Where the atlas came from (for messages).
    """

    labels: np.ndarray
    affine: np.ndarray
    index: Mapping[str, int]
    source: str = "atlas"

    def region_values(self, patterns: Sequence[str]) -> list[int]:
        """Label values of the regions named by ``patterns`` (see :func:`matching_regions`)."""
        return [self.index[name] for name in matching_regions(patterns, self.index, self.source)]


@dataclass(frozen=True)
class Template:
    """The MNI152 T1 template and its brain mask (ventricles filled), on one grid.

    Attributes
    ----------
    t1 : numpy.ndarray
        T1-weighted intensities.
    brain_mask : numpy.ndarray
        Boolean brain mask, holes (ventricles) filled.
    affine : numpy.ndarray
        Voxel-to-world (MNI, mm) matrix of both.
    zoom : float
        Mean voxel size (mm).
    """

    t1: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    zoom: float

    def epi_contrast(self) -> np.ndarray:
        """The template remapped to an EPI-like contrast (:func:`epi_contrast`)."""
        return epi_contrast(self.t1, self.brain_mask)


def parse_label_text(text: str, source: str = "atlas label file") -> Mapping[str, int]:
    """Region name -> label value, from an atlas label file's text.

    The text alternates a name line and an ``index R G B A`` line (the Schaefer/Tian
    convention).

    Raises
    ------
    InputError
        If the text does not follow that layout.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) % 2:
        raise InputError(f"{source}: expected name and 'index R G B A' lines in pairs. "
                         f"Got {len(lines)} lines.")
    index: dict[str, int] = {}
    for name, numbers in zip(lines[::2], lines[1::2], strict=True):
        fields = numbers.split()
        if len(fields) != 5 or not fields[0].isdigit():
            raise InputError(f"{source}: expected 'index R G B A' after {name!r}. "
                             f"Got {numbers!r}.")
        index[name] = int(fields[0])
    return MappingProxyType(index)


def matching_regions(patterns: Sequence[str], index: Mapping[str, int],
                     source: str = "atlas") -> list[str]:
    """Region names matching ``patterns``: exact names, or prefixes ending in ``*``.

    Raises
    ------
    InputError
        If a pattern matches no region.
    """
    regions = []
    for pattern in patterns:
        if pattern.endswith("*"):
            found = [name for name in index if name.startswith(pattern[:-1])]
        else:
            found = [pattern] if pattern in index else []
        if not found:
            raise InputError(f"{source} has no region {pattern!r}.")
        regions += found
    return regions


def label_rois(sampled: np.ndarray, atlas: Atlas,
               definitions: Mapping[int, tuple[str, Sequence[str]]] = ROI_DEFINITIONS,
               ) -> tuple[np.ndarray, dict[int, str]]:
    """The ROI label image from atlas label values sampled on a grid.

    Parameters
    ----------
    sampled : numpy.ndarray
        The atlas's label values at each voxel of the grid (nearest neighbour).
    atlas : Atlas
        The atlas those values come from (for the region names).
    definitions : Mapping
        ROI index -> (name, region patterns); :data:`ROI_DEFINITIONS` by default.

    Returns
    -------
    labels : numpy.ndarray
        ROI index per voxel (0 = none), ``int32``.
    names : dict of int to str
        ROI index -> name.
    """
    labels = np.zeros(sampled.shape, dtype=np.int32)
    names = {}
    for value, (name, patterns) in definitions.items():
        labels[np.isin(sampled, atlas.region_values(patterns))] = value
        names[value] = name
    return labels, names


def filled_mask(mask: np.ndarray) -> np.ndarray:
    """A brain mask with its holes (the ventricles) filled, in 3D and axial slice by slice.

    The shipped 3 mm template mask is fractional and partly leaves out the ventricles,
    which an EPI image shows bright.
    """
    brain = ndimage.binary_fill_holes(np.asarray(mask) > 0.5)
    for z in range(brain.shape[2]):
        brain[:, :, z] = ndimage.binary_fill_holes(brain[:, :, z])
    return brain


def epi_contrast(t1: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Remap T1 intensities to a T2*-like contrast: CSF 1.3, grey ~1.05, white 0.85."""
    csf, white = np.percentile(t1[mask], [2.0, 95.0])
    tissue = np.clip((t1 - csf) / (white - csf), 0.0, 1.0)  # 0 CSF ... 1 white matter
    return np.where(mask, 1.3 - 0.45 * tissue, 0.0)
