"""ROI extraction: motion-corrected mean signal of each region, one volume at a time.

ROIs are given as a label image on the EPI grid plus a name for each label (a BIDS
``*_dseg.nii.gz`` with its ``*_dseg.tsv``, read by :func:`rtserver.service.session.read_rois`).
Only the ROI voxels are resampled, at the positions the motion estimate says they moved to;
the full volume is never resliced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtserver.core.stages._base import Stage, check_is_fitted, check_shape
from rtserver.errors import InputError
from rtserver.volume import Volume


@dataclass(frozen=True)
class RoiSet:
    """Named regions on a voxel grid.

    Attributes
    ----------
    labels : numpy.ndarray
        3D integer label image (0 = background).
    affine : numpy.ndarray
        Its voxel-to-world matrix.
    names : dict of int to str
        Name of each label value.
    """

    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]

    @classmethod
    def brain(cls, reference: Volume) -> RoiSet:
        """Make a single ROI ``brain``: the reference's voxels above half its mean signal."""
        data = np.asarray(reference.data, dtype=np.float32)
        threshold = 0.5 * data[data > data.mean()].mean()
        return cls(labels=(data > threshold).astype(np.int32), affine=reference.affine,
                   names={1: "brain"})


class RoiExtractor(Stage):
    """Mean signal of each ROI, sampled where the motion estimate places the ROI voxels.

    Parameters
    ----------
    rois : RoiSet or None
        The regions; ``None`` uses an automatic whole-brain mask of the reference.

    Attributes
    ----------
    names_ : list of str
        ROI names, in output order.
    ijk_ : numpy.ndarray
        ``(4, n_voxels_)`` homogeneous voxel indices of every ROI voxel, ROI after ROI.
    starts_, counts_ : numpy.ndarray
        Index of each ROI's first voxel in ``ijk_``, and its number of voxels.
    affine_ : numpy.ndarray
        The reference grid's voxel-to-world matrix.
    """

    def __init__(self, rois: RoiSet | None = None) -> None:
        self.rois = rois

    def fit(self, reference: Volume) -> RoiExtractor:
        """Check the ROIs against the reference grid and precompute their voxel lists.

        Parameters
        ----------
        reference : Volume
            The volume whose grid the ROIs lie on.

        Returns
        -------
        self

        Raises
        ------
        InputError
            If ``rois`` is not a :class:`RoiSet`, or not on the reference's grid.
        """
        if self.rois is not None and not isinstance(self.rois, RoiSet):
            raise InputError("RoiExtractor: rois should be a RoiSet or None. "
                             f"Got {type(self.rois).__name__}.")
        rois = self.rois if self.rois is not None else RoiSet.brain(reference)
        if rois.labels.shape != reference.shape:
            raise InputError(
                "ROI label image is not on the EPI grid.\n"
                f"Expected shape {reference.shape}.\nGot {rois.labels.shape}."
            )
        if not np.allclose(rois.affine, reference.affine, atol=1e-3):
            raise InputError(
                "ROI label image's affine differs from the EPI volume's (by more than "
                f"1e-3 mm).\nExpected {reference.affine.round(3).tolist()}.\n"
                f"Got {np.asarray(rois.affine).round(3).tolist()}."
            )
        self.names_ = [rois.names[value] for value in sorted(rois.names)]
        order = [np.argwhere(rois.labels == value) for value in sorted(rois.names)]
        ijk = np.vstack(order).astype(np.float64)
        self.ijk_ = np.vstack([ijk.T, np.ones(len(ijk))])
        self.n_voxels_ = len(ijk)
        self.starts_ = np.cumsum([0] + [len(voxels) for voxels in order[:-1]])
        self.counts_ = np.array([len(voxels) for voxels in order], dtype=np.float64)
        self.shape_ = reference.shape
        self.affine_ = reference.affine
        return self

    def transform_voxels(self, volume: Volume, matrix: np.ndarray | None = None) -> np.ndarray:
        """Every ROI voxel's value in ``volume`` after undoing the motion ``matrix``.

        Parameters
        ----------
        volume : Volume
            A volume of the run.
        matrix : numpy.ndarray or None
            The volume's 4x4 motion (reference -> volume, world mm); with it the volume may
            lie on another grid than the reference (its own affine is used). ``None``: no
            motion, and the volume must lie on the reference grid.

        Returns
        -------
        numpy.ndarray
            One value per ROI voxel (float32), ROI after ROI in the order of ``names_``
            (voxel ``starts_[r]`` is the first of ROI ``r``).

        Raises
        ------
        InputError
            If ``matrix`` is not 4x4, or it is ``None`` and the volume is not on the
            reference grid.
        """
        check_is_fitted(self, "ijk_")
        data = np.asarray(volume.data, dtype=np.float32)
        if matrix is None:
            self._check_reference_grid(volume)
            coords = self.ijk_[:3]
        else:
            check_shape("Motion matrix", np.shape(matrix), (4, 4))
            mapping = np.linalg.inv(volume.affine) @ matrix @ self.affine_
            coords = mapping[:3, :3] @ self.ijk_[:3] + mapping[:3, 3:]
        return ndimage.map_coordinates(data, coords, order=1, mode="nearest", prefilter=False)

    def _check_reference_grid(self, volume: Volume) -> None:
        """Refuse a volume that is not on the reference grid (needed without a matrix)."""
        check_shape(f"Volume {volume.index} (no motion matrix given, so on the reference "
                    "grid)", volume.shape, self.shape_)
        if not np.allclose(volume.affine, self.affine_, atol=1e-3):
            raise InputError(
                f"Volume {volume.index} is not on the reference grid and no motion matrix "
                "was given: its affine differs from the reference's by more than 1e-3 mm.\n"
                f"Expected {np.round(self.affine_, 3).tolist()}.\n"
                f"Got {np.round(volume.affine, 3).tolist()}.")

    def means(self, voxels: np.ndarray) -> np.ndarray:
        """Each ROI's mean of the values :meth:`transform_voxels` returned.

        Parameters
        ----------
        voxels : numpy.ndarray
            ``(n_voxels_,)`` values, in the order :meth:`transform_voxels` gives them.

        Returns
        -------
        numpy.ndarray
            One mean per ROI, in the order of ``names_``.

        Raises
        ------
        InputError
            If ``voxels`` does not hold one value per ROI voxel.
        """
        check_is_fitted(self, "ijk_")
        check_shape("ROI voxel values", np.shape(voxels), (self.n_voxels_,))
        return np.add.reduceat(voxels, self.starts_) / self.counts_

    def transform(self, volume: Volume, matrix: np.ndarray | None = None) -> np.ndarray:
        """Mean of each ROI in ``volume`` after undoing the motion ``matrix``.

        Parameters
        ----------
        volume : Volume
            A volume of the run.
        matrix : numpy.ndarray or None
            The volume's 4x4 motion (reference -> volume, world mm); ``None`` for none
            (the volume must then lie on the reference grid).

        Returns
        -------
        numpy.ndarray
            One mean per ROI, in the order of ``names_``.

        Raises
        ------
        InputError
            As :meth:`transform_voxels`.
        """
        return self.means(self.transform_voxels(volume, matrix))
