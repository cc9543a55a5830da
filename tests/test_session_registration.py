"""Session setup with atlas ROIs: registered before volume 0, files in the run folder.

The session reads the T1w (``[roi] t1w``), registers the atlas to the known reference when the
pipeline is built, writes the ROIs, transforms and QC picture into the run folder and keeps
the numbers for the session JSON; refusals are one line naming the option.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from rtserver.cli import error_line
from rtserver.config import Config
from rtserver.errors import ConfigError, InputError
from rtserver.service.session import Session
from rtserver.sim.known_warp import known_truth_epi, synthetic_t1w

from .conftest import DATA

PHILIPS_PHANTOM = DATA / "dcm2niix_references" / "philips_magdeburg_phantom_3vol.nii.gz"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    reference, _ = known_truth_epi()
    t1w = synthetic_t1w()
    paths = {"bold": root / "sub-01_task-rest_run-1_bold.nii.gz", "t1w": root / "sub-01_T1w.nii.gz"}
    nib.save(nib.Nifti1Image(np.asarray(reference.data), reference.affine), paths["bold"])
    nib.save(nib.Nifti1Image(np.asarray(t1w.data), t1w.affine), paths["t1w"])
    return paths


def test_session_registers_through_the_t1w_before_volume_0(files, tmp_path, caplog):
    config = Config().with_overrides(roi={"mask": "atlas", "t1w": str(files["t1w"])},
                                     motion={"reference": str(files["bold"])},
                                     run={"subject": "01", "task": "rest", "run": 1})
    session = Session.from_config(config)
    assert session.t1w is not None
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        pipeline = session.pipeline(out_dir=out)
    assert pipeline.is_fitted  # before any volume arrived
    quality = pipeline.registration_
    assert quality.method == "ants-t1w" and quality.dice >= 0.85
    record = quality.to_dict()
    assert set(record["roi_voxels"]) == set(record["roi_fov_fraction"]) == set(
        pipeline.roi_names)
    assert "atlas registration took" in caplog.text
    prefix = "sub-01_task-rest_run-1"
    assert (out / f"{prefix}_space-EPI_desc-rois_dseg.nii.gz").exists()
    assert (out / f"{prefix}_space-EPI_desc-rois_dseg.tsv").exists()
    assert (out / f"{prefix}_space-EPI_desc-rois_qc.png").exists()
    assert list(out.glob(f"{prefix}_from-MNI152_to-EPI_*_xfm.nii.gz"))


def test_a_t1w_without_atlas_rois_is_a_config_error(files):
    config = Config().with_overrides(roi={"t1w": str(files["t1w"])})
    with pytest.raises(ConfigError, match="T1-weighted image serves the atlas ROIs"):
        Session.from_config(config)


def test_session_refuses_a_phantom_in_one_line_naming_the_option():
    config = Config().with_overrides(roi={"mask": "atlas"},
                                     motion={"reference": str(PHILIPS_PHANTOM)})
    with pytest.raises(InputError) as info:
        Session.from_config(config).pipeline()
    line = error_line(info.value)
    assert "Atlas registration to the reference volume refused" in line
    assert line.endswith("(option --roi)") and "\n" not in line
