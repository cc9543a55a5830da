"""The wrong-subject check: a decoder is refused on a run of another head.

The demo decoder (trained on the simulator's phantom) on real runs is refused, naming both;
the same head (another volume of the run, moved and noisy) is accepted.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtserver.config import Config
from rtserver.core.registration import same_head_problems
from rtserver.errors import InputError
from rtserver.resources import demo_model_path
from rtserver.rigid import params_to_matrix
from rtserver.scanner.sources import open_source
from rtserver.service.head_check import check_same_head, compare_heads
from rtserver.service.model_file import load_decoder
from rtserver.service.session import Session
from rtserver.volume import Volume

from .conftest import SHARED_DATA, SIEMENS_NIFTI

STUDYFORREST = (SHARED_DATA / "real_task" / "studyforrest_visual_localizer"
                / "sub-01_task-localizer_run-1_bold.nii.gz")


def _volume(path, index=0):
    return next(v for v in open_source(path, tr=2.0) if v.index == index)


def test_same_head_criteria_by_hand():
    assert same_head_problems(0.98, np.eye(3)) == []
    problems = same_head_problems(0.2, np.diag([1.1, 1.0, 0.95]))
    assert problems == ["intensity correlation 0.20 < 0.70", "size or shape differs by 10% > 3%"]


def test_demo_decoder_on_a_real_run_is_refused_naming_both(tmp_path):
    config = Config().with_overrides(decoder={"model": str(demo_model_path())},
                                     motion={"reference": str(SIEMENS_NIFTI)})
    with pytest.raises(InputError, match=r"siemens_skyra_rtcloud_facematching_10vol\.nii\.gz is "
                       r"not the head the decoder demo_decoder\.skops was trained on") as info:
        Session.from_config(config)
    assert "\n" not in str(info.value) and info.value.setting == "decoder.model"


def test_the_same_head_moved_and_noisy_is_accepted():
    """Volume 9 of a real run, moved by 3 mm and 4 degrees and with added noise."""
    reference = _volume(SIEMENS_NIFTI)
    later = _volume(SIEMENS_NIFTI, 9)
    motion = params_to_matrix(np.array([3.0, -2.0, 1.0, 0.07, 0.0, -0.03]), np.zeros(3))
    noisy = np.asarray(later.data, float) * (
        1 + 0.02 * np.random.default_rng(0).standard_normal(later.shape))
    moved = Volume(noisy.astype(np.float32), motion @ later.affine, index=9, tr=2.0)
    match = check_same_head(moved, reference, "moved", "decoder")
    assert match.correlation > 0.9 and match.problems == []


@pytest.mark.skipif(not STUDYFORREST.exists(), reason=f"{STUDYFORREST} is absent")
def test_real_heads_tell_apart():
    """The studyforrest run's volume 150 is its volume 0's head; the Skyra run is not."""
    first = _volume(STUDYFORREST)
    assert compare_heads(_volume(STUDYFORREST, 150), first).problems == []
    assert compare_heads(_volume(SIEMENS_NIFTI), first).problems
    demo = load_decoder(demo_model_path())
    with pytest.raises(InputError, match="not the head the decoder demo_decoder.skops"):
        Session(config=Config().with_overrides(decoder={"model": str(demo_model_path())}),
                decoder=demo).check_run(first, "studyforrest run-1")
