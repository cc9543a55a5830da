"""Tests of the simulator's planted responses: group amplitudes, subjects, voxel patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtserver.core.hrf import condition_regressors
from rtserver.paradigm import Paradigm
from rtserver.sim.activation import (
    CUE_REACTIVE_ROIS,
    GROUP_AMPLITUDES,
    PATTERN_SD,
    SUBJECT_BIAS_SD_PERCENT,
    SUBJECT_SD_PERCENT,
    Activation,
)
from rtserver.sim.phantom import build_phantom

from .sim_helpers import SMALL, VOXEL, glm_design


def test_group_amplitudes_follow_the_finding():
    patient, control = GROUP_AMPLITUDES["patient"], GROUP_AMPLITUDES["control"]
    assert patient["look_drug"] > patient["look_food"]
    assert control["look_drug"] < control["look_food"]
    assert patient["reappraise_drug"] > patient["savor_food"]
    assert control["reappraise_drug"] < control["savor_food"]
    assert set(CUE_REACTIVE_ROIS) == {"nacc", "ventral_caudate", "vmpfc_ofc", "ifg_dlpfc"}
    for table in (patient, control):
        assert table["reappraise_drug"] < table["look_drug"]
        assert table["savor_food"] > table["look_food"]
        assert all(0.5 <= value <= 2.0 for value in table.values())


def test_hrf_regressors_match_an_independent_convolution():
    paradigm = Paradigm.from_file("regulation")
    regressors = condition_regressors(paradigm)
    events = [{k: str(v) for k, v in e.items()} for e in paradigm.events()]
    trial_types, design = glm_design(events, paradigm.n_volumes, paradigm.tr)
    assert sorted(regressors) == trial_types
    for column, trial_type in enumerate(trial_types):
        np.testing.assert_allclose(regressors[trial_type], design[:, column], atol=0.01)
    look_drug = regressors["look_drug"]  # one 20 s block from 10 s
    assert look_drug[:5].max() < 1e-3 and look_drug.min() < -0.05  # delay and undershoot


def test_subjects_vary_around_their_group_with_a_drug_bias_of_their_own():
    """Over 400 drawn subjects, the drug-bias index (drug minus food, mean of the
    cue-reactive ROIs) has the group means' difference and the planted spread: sd
    sqrt(bias_sd^2 + 2 sd^2 / 4) (each ROI's own draws average over the 4 ROIs).
    """
    rng = np.random.default_rng(5)
    index = {}
    for group in ("patient", "control"):
        values = []
        for _ in range(200):
            amplitudes = Activation.draw(group, rng).amplitudes
            values.append(np.mean([amplitudes[r]["look_drug"] - amplitudes[r]["look_food"]
                                   for r in CUE_REACTIVE_ROIS]))
        index[group] = np.array(values)
        means = GROUP_AMPLITUDES[group]
        assert index[group].mean() == pytest.approx(means["look_drug"] - means["look_food"],
                                                    abs=0.15)
        spread = math.sqrt(SUBJECT_BIAS_SD_PERCENT**2 + 2 * SUBJECT_SD_PERCENT**2 / 4)
        assert index[group].std() == pytest.approx(spread, rel=0.15)
    # Some subjects respond against their group, as in real cohorts.
    assert 0.05 < np.mean(index["patient"] < 0) < 0.3
    assert 0.05 < np.mean(index["control"] > 0) < 0.3


def test_voxel_patterns_carry_information_the_roi_mean_does_not():
    """Inside an ROI the planted maps vary voxel to voxel, with the ROI mean equal to the
    amplitude, and two conditions' patterns differ beyond a scale factor.
    """
    phantom = build_phantom(SMALL, VOXEL)
    activation = Activation.draw("control", np.random.default_rng(3))
    maps = activation.maps(phantom)
    for index, name in phantom.roi_names.items():
        inside = phantom.labels == index
        drug, food = maps["look_drug"][inside], maps["look_food"][inside]
        assert drug.mean() == pytest.approx(activation.amplitudes[name]["look_drug"])
        relative_sd = drug.std() / drug.mean()
        assert relative_sd == pytest.approx(PATTERN_SD, rel=1e-6)
        # Drug and food pictures share only the field common to all conditions (weights
        # 1, 1, 0.5: expected r = 1 / 2.25); looking at and reappraising drug pictures also
        # share the drug pictures' field (expected r = 2 / 2.25), which is what lets a
        # decoder trained on passive viewing work in regulation blocks.
        r = np.corrcoef(drug, food)[0, 1]
        assert 0.1 < r < 0.8, (name, r)
        same_cue = np.corrcoef(drug, maps["reappraise_drug"][inside])[0, 1]
        assert same_cue > 0.6 and same_cue > r + 0.2, (name, same_cue, r)
        assert np.all(maps["look_drug"][~inside & (phantom.labels == 0)] == 0)
