"""What an atlas registration leaves in the run folder: ROIs, transforms and a QC picture.

- ``<prefix>_space-EPI_desc-rois_dseg.nii.gz`` and ``.tsv`` (index, name, voxel count, share
  of the atlas region inside the field of view): the ROIs on the reference EPI grid, readable
  again as ``[roi] mask``;
- ``<prefix>_from-MNI152_to-EPI_step-<k>_desc-<affine|warp>_xfm.<mat|nii.gz>``: ANTs' own
  transform files, template -> EPI in ``ants.apply_transforms`` order, to reuse and check;
- ``<prefix>_space-EPI_desc-rois_qc.png``: ROI outlines over the reference EPI, with the
  warped template brain outline and the EPI's own mask, for the run report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from rtserver.service.atlas_registration import AtlasRegistration


def _transform_name(prefix: str, number: int, source: Path) -> str:
    """BIDS-like name of one transform file (``_xfm.mat`` affine, ``_xfm.nii.gz`` warp)."""
    kind = "warp" if source.name.endswith(".nii.gz") else "affine"
    suffix = ".nii.gz" if kind == "warp" else source.suffix
    return f"{prefix}_from-MNI152_to-EPI_step-{number}_desc-{kind}_xfm{suffix}"


def write_outputs(registration: AtlasRegistration, out_dir: str | Path, prefix: str,
                  ) -> dict[str, Path]:
    """Write the ROIs, the transforms and the QC picture into the run folder.

    Parameters
    ----------
    registration : AtlasRegistration
        What :func:`register_epi` gave.
    out_dir : str or Path
        The run folder (created if missing).
    prefix : str
        The run's BIDS prefix (``sub-01_task-regulation_run-1``).

    Returns
    -------
    dict of str to Path
        ``"rois"``, ``"table"``, ``"qc"`` and ``"transform<k>"`` -> the files written.
    """
    import nibabel as nib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rois = registration.rois
    files: dict[str, Path] = {"rois": out_dir / f"{prefix}_space-EPI_desc-rois_dseg.nii.gz",
                              "table": out_dir / f"{prefix}_space-EPI_desc-rois_dseg.tsv",
                              "qc": out_dir / f"{prefix}_space-EPI_desc-rois_qc.png"}
    nib.save(nib.Nifti1Image(rois.labels.astype(np.int16), rois.affine), files["rois"])
    files["table"].write_text("index\tname\tn_voxels\tfov_fraction\n" + "".join(
        f"{value}\t{name}\t{registration.quality.roi_voxels.get(name, 0)}\t"
        f"{registration.quality.roi_fov_fraction.get(name, 0.0):.4f}\n"
        for value, name in sorted(rois.names.items())), encoding="utf-8")
    for number, source in enumerate(registration.transforms):
        target = out_dir / _transform_name(prefix, number, source)
        shutil.copyfile(source, target)
        files[f"transform{number}"] = target
    qc_picture(registration, files["qc"])
    return files


def qc_picture(registration: AtlasRegistration, path: str | Path) -> Path:
    """ROI outlines over the reference EPI, with the template's brain outline (PNG).

    Nine axial slices through the brain; each ROI outlined in its own colour (legend), the
    warped template brain mask in white and the EPI's own mask dashed yellow, the numbers
    in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    data = np.asarray(registration.reference.data, dtype=np.float64)
    labels = registration.rois.labels
    quality = registration.quality
    zs = np.flatnonzero(registration.epi_mask.any(axis=(0, 1)))
    zs = np.unique(np.linspace(zs.min(), zs.max(), 11)[1:-1].round().astype(int)) \
        if zs.size else np.array([0])
    n_rows = int(np.ceil(len(zs) / 3))
    figure, axes = plt.subplots(n_rows, 3, figsize=(9.0, 3.0 * n_rows + 0.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    names = registration.rois.names
    for axis in axes.ravel()[len(zs):]:
        axis.axis("off")
    for axis, z in zip(axes.ravel(), zs, strict=False):
        axis.imshow(data[:, :, z].T, origin="lower", cmap="gray")
        axis.contour(registration.template_mask[:, :, z].T.astype(float), [0.5],
                     colors="white", linewidths=0.8)
        axis.contour(registration.epi_mask[:, :, z].T.astype(float), [0.5], colors="yellow",
                     linewidths=0.7, linestyles="dashed")
        for value in sorted(names):
            roi = labels[:, :, z] == value
            if roi.any():
                axis.contour(roi.T.astype(float), [0.5], colors=[colours(value % 10)],
                             linewidths=1.4)
        axis.set_title(f"slice {z}", fontsize=8)
        axis.axis("off")
    handles = [plt.Line2D([], [], color=colours(value % 10), lw=2, label=names[value])
               for value in sorted(names)]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(f"{quality.method}: brain-mask Dice {quality.dice:.3f} (white: template, "
                    f"yellow dashed: EPI), volume scaling {quality.scale:.2f}", fontsize=9)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
