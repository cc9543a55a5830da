"""Recipes for the stage contract suite (tests/test_stage_contract.py): one per stage.

A recipe says how to configure a stage, what to fit it on, which inputs a run feeds it one
volume at a time, and how to compute the whole run's outputs at once, independently of the
per-volume path. The data are tiny and synthetic: a 20 x 20 x 12 head moved with
:mod:`rtserver.rigid` and ``scipy.ndimage``, drifting features, target signals and
``P(drug)`` values, with censored volumes and missing values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from scipy import ndimage

from rtserver.core.hrf import paradigm_task_regressor
from rtserver.core.stages import (
    DecoderFeedback,
    FeedbackScaler,
    MotionCorrector,
    RoiExtractor,
    RoiSet,
    SignalModel,
)
from rtserver.core.stages._base import Stage
from rtserver.core.stages.signal import batch_signal, design_row
from rtserver.paradigm import Paradigm
from rtserver.rigid import grid_centre, params_to_matrix, voxel_mapping
from rtserver.volume import Volume

TR = 2.0


@dataclass(frozen=True)
class Recipe:
    """How to exercise one stage.

    Attributes
    ----------
    make : callable
        A configured, unfitted stage.
    fit_args : callable
        The arguments of ``fit``, built anew at each call.
    inputs : callable
        ``inputs(n)``: an iterator over the argument tuples of ``step`` for the first ``n``
        volumes of a run.
    step : str
        The per-volume method (``partial_fit`` or ``transform``).
    output : callable
        ``output(stage, returned)``: that volume's output, as a new float array.
    batch : callable
        ``batch(fitted_stage, inputs)``: the outputs of the whole run computed at once,
        independently of the per-volume path, stacked along the first axis.
    wrong_shape : callable
        Arguments of ``step`` with one of the wrong shape, plus a fragment the error message
        must contain for what was expected and one for what was got.
    bad_params : tuple of dict
        Out-of-range parameter settings that ``fit`` must refuse.
    needs_fit : dict
        Every other public method that needs ``fit``, with a function giving arguments.
    pure : frozenset of str
        Public methods that are functions of the parameters alone (need no ``fit``).
    atol, rtol : float
        Tolerance of the per-volume outputs against the batch computation.
    warmup : int
        Volumes after which the state has reached its full size.
    """

    make: Callable[[], Stage]
    fit_args: Callable[[], tuple]
    inputs: Callable[[int], Iterator[tuple]]
    step: str
    output: Callable[[Stage, object], np.ndarray]
    batch: Callable[[Stage, list[tuple]], np.ndarray]
    wrong_shape: Callable[[], tuple[tuple, str, str]]
    bad_params: tuple[dict, ...]
    needs_fit: dict[str, Callable[[], tuple]] = field(default_factory=dict)
    pure: frozenset[str] = frozenset()
    atol: float = 0.0
    rtol: float = 1e-9
    warmup: int = 10


# A tiny head: 20 x 20 x 12 voxels of 3.5 mm, an ellipsoid with smooth texture.
SHAPE = (20, 20, 12)
AFFINE = np.diag([3.5, 3.5, 3.5, 1.0])
AFFINE[:3, 3] = -1.75 * np.array(SHAPE)


@cache
def tiny_head() -> np.ndarray:
    """Return the reference image (float32)."""
    rng = np.random.default_rng(11)
    grid = np.indices(SHAPE).astype(np.float64)
    centre = (np.array(SHAPE) - 1) / 2
    radius = np.sqrt((((grid.T - centre) / (np.array(SHAPE) / 2.4)) ** 2).sum(-1)).T
    inside = radius < 1.0
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.2)
    image = ndimage.gaussian_filter(1000.0 * inside + 400.0 * texture * inside, 0.7)
    return image.astype(np.float32)


def reference() -> Volume:
    """Volume 0 of the tiny run, unmoved."""
    return Volume(tiny_head(), AFFINE, index=0, tr=TR)


@cache
def moved_heads() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Twelve moved copies of the head and their motion matrices (reference -> volume).

    A random walk of steps of 0.15 mm and 0.15 degrees (about 1 mm in all), applied with
    a quintic spline (``V(M x) = reference(x)``), plus noise at 1 % of the brain signal.
    """
    rng = np.random.default_rng(5)
    steps = rng.normal(0.0, 1.0, (12, 6)) * np.r_[[0.15] * 3, [np.deg2rad(0.15)] * 3]
    centre = grid_centre(SHAPE, AFFINE)
    heads = []
    for params in np.cumsum(steps, axis=0):
        matrix = params_to_matrix(params, centre)
        data = ndimage.affine_transform(tiny_head().astype(np.float64),
                                        voxel_mapping(np.linalg.inv(matrix), AFFINE),
                                        order=5, mode="nearest")
        data += rng.normal(0.0, 10.0, SHAPE)
        heads.append((data.astype(np.float32), matrix))
    return tuple(heads)


def moving_volumes(n: int) -> Iterator[tuple[Volume, np.ndarray]]:
    """Volumes ``0 .. n - 1`` of a run cycling through :func:`moved_heads`, with motion."""
    heads = moved_heads()
    for index in range(n):
        data, matrix = heads[index % len(heads)]
        yield Volume(data, AFFINE, index=index, tr=TR), matrix


# ---- MotionCorrector: volumes in, motion parameters out; batch: estimate_run on the 4D run.
def motion_batch(stage: MotionCorrector, inputs: list[tuple]) -> np.ndarray:
    """Every volume's parameters from one call on the whole 4D run."""
    run = np.stack([volume.data for (volume,) in inputs], axis=-1)
    return np.array([estimate.params for estimate in stage.estimate_run(run, AFFINE)])


MOTION = Recipe(
    make=MotionCorrector,
    fit_args=lambda: (reference(),),
    inputs=lambda n: ((volume,) for volume, _ in moving_volumes(n)),
    step="partial_fit",
    output=lambda stage, _: stage.estimate_.params.copy(),
    batch=motion_batch,
    atol=1e-9, rtol=0.0,  # the same registration on a run smoothed in one pass
    wrong_shape=lambda: ((Volume(np.ones((8, 8, 8), np.float32), AFFINE, index=3, tr=TR),),
                         "Expected (20, 20, 12)", "Got (8, 8, 8)"),
    bad_params=({"interpolation_order": 5}, {"smoothing_fwhm": -1.0}, {"subsample": -1},
                {"max_samples": 10}, {"max_iterations": 0}, {"tolerance": 0.0},
                {"fd_threshold": -0.5}, {"restart_factor": 0.0}, {"restart_fwhm": math.nan},
                {"max_iterations": 2.5}),
    needs_fit={"estimate_run": lambda: (tiny_head()[..., None], AFFINE),
               "reslice": lambda: (reference(),)},
)


# ---- RoiExtractor: (volume, motion) in, ROI means out; batch: the whole run resliced.
def two_rois() -> RoiSet:
    """Two box ROIs inside the tiny head."""
    labels = np.zeros(SHAPE, np.int32)
    labels[6:10, 7:12, 4:7] = 1
    labels[11:15, 8:13, 5:9] = 2
    return RoiSet(labels=labels, affine=AFFINE, names={1: "nacc", 2: "vmpfc"})


def roi_batch(stage: RoiExtractor, inputs: list[tuple]) -> np.ndarray:
    """Reslice every volume onto the reference grid (linear), stack, take masked means."""
    run = np.stack([ndimage.affine_transform(np.asarray(volume.data, np.float32),
                                             voxel_mapping(matrix, AFFINE), order=1,
                                             mode="nearest")
                    for volume, matrix in inputs], axis=-1)
    labels = stage.rois.labels
    return np.stack([run[labels == value].mean(axis=0) for value in sorted(stage.rois.names)],
                    axis=1)


ROI = Recipe(
    make=lambda: RoiExtractor(two_rois()),
    fit_args=lambda: (reference(),),
    inputs=moving_volumes,
    step="transform",
    output=lambda stage, means: np.array(means, dtype=np.float64),
    batch=roi_batch,
    atol=0.0, rtol=1e-5,  # float32 sums in another order
    wrong_shape=lambda: ((Volume(np.ones((20, 20, 10), np.float32), AFFINE, index=3, tr=TR),
                          None), "Expected (20, 20, 12)", "Got (20, 20, 10)"),
    bad_params=({"rois": RoiSet(np.ones((4, 4, 4), np.int32), AFFINE, {1: "x"})},),
    needs_fit={"transform_voxels": lambda: (reference(),),
               "means": lambda: (np.zeros(3),)},
)


# ---- SignalModel: one volume's features in, percent signal change out; batch: batch_signal.
N_FEATURES = 12


@cache
def regulation_task() -> np.ndarray:
    """Return the regulation paradigm's task regressor."""
    return paradigm_task_regressor(Paradigm.from_file("regulation"))


def signal_inputs(n: int) -> Iterator[tuple]:
    """Features with drift, task response, motion leakage, noise, one spike; censoring."""
    base = np.random.default_rng(0).uniform(500.0, 1500.0, N_FEATURES)
    task = regulation_task()
    for index in range(n):
        rng = np.random.default_rng(1000 + index)
        motion = np.array([0.3, -0.2, 0.1, 0.002, -0.001, 0.003]) * np.sin(index / 7.0)
        response = task[index] if index < len(task) else 0.0
        features = (base * (1.0 + 0.02 * index * TR / 600.0 + 0.01 * response)
                    + 5.0 * motion[0] + rng.normal(0.0, 6.0, N_FEATURES))
        if index == 30:
            features[:3] += 400.0
        yield index, TR, features, motion, index % 13 == 5


def signal_batch(stage: SignalModel, inputs: list[tuple]) -> np.ndarray:
    """Least-squares refits on the design matrix of the whole run (batch_signal)."""
    task = stage.task
    design = np.vstack([
        design_row(index, tr, motion, task[index] if index < len(task) else 0.0,
                   stage.drift_order, stage.drift_timescale)
        for index, tr, _, motion, _ in inputs])
    features = np.vstack([args[2] for args in inputs])
    censored = np.array([args[4] for args in inputs])
    return batch_signal(features, design, censored, ridge=stage.ridge, despike=stage.despike,
                        has_task=True, drift_order=stage.drift_order,
                        motion_ridge=stage.motion_ridge)


SIGNAL = Recipe(
    make=lambda: SignalModel(task=regulation_task()),
    fit_args=lambda: (N_FEATURES,),
    inputs=signal_inputs,
    step="partial_fit",
    output=lambda stage, _: stage.psc_.copy(),
    batch=signal_batch,
    atol=1e-9, rtol=0.0,  # percent signal change, as tests/test_decoder.py
    wrong_shape=lambda: ((0, TR, np.ones(N_FEATURES + 1), np.zeros(6)),
                         "expected 12 features", "Got shape (13,)"),
    bad_params=({"drift_order": -1}, {"drift_order": 1.5}, {"drift_timescale": 0.0},
                {"despike": -3.0}, {"ridge": -1.0}, {"motion_ridge": math.inf},
                {"task": np.ones((3, 2))}, {"task": np.array([0.0, math.nan])}),
    pure=frozenset({"row"}),
    # The residual SD exists once more volumes are fitted than there are regressors (10).
    warmup=20,
)


# ---- FeedbackScaler: the target ROI's signal in, the bar out; batch: cumulative sums.
def feedback_inputs(n: int) -> Iterator[tuple]:
    """Yield a target signal with a slow oscillation and noise; censoring; one NaN."""
    rng = np.random.default_rng(3)
    for index in range(n):
        signal = 1000.0 + 15.0 * np.sin(index / 3.0) + rng.normal(0.0, 3.0)
        yield index, TR, (math.nan if index == 9 else signal), index % 11 == 7


def forward_fill(defined: np.ndarray, values: np.ndarray, initial: float) -> np.ndarray:
    """Each volume's latest defined value (``initial`` before the first)."""
    last = np.maximum.accumulate(np.where(defined, np.arange(len(defined)), -1))
    return np.where(last >= 0, values[np.maximum(last, 0)], initial)


def feedback_batch(stage: FeedbackScaler, inputs: list[tuple]) -> np.ndarray:
    """Value and percent change of every volume from cumulative sums over the run."""
    index = np.array([args[0] for args in inputs])
    signal = np.array([args[2] for args in inputs], dtype=np.float64)
    valid = ~np.array([args[3] for args in inputs]) & np.isfinite(signal)
    seconds = index * TR - stage.hrf_delay
    in_baseline = np.array([s >= 0 and stage.paradigm.block_at(s).is_baseline for s in seconds])
    base = valid & in_baseline
    before = np.cumsum(base) - base  # baseline volumes before each volume
    sums = np.concatenate([[0.0], np.cumsum(signal[base])])
    first = np.maximum(before - stage.baseline_window, 0)
    mean = (sums[before] - sums[first]) / np.maximum(before - first, 1)
    psc = 100.0 * (signal - mean) / np.where(before > 0, mean, 1.0)
    value = np.clip(0.5 + psc / (2.0 * stage.psc_range), 0.0, 1.0)
    defined = valid & (before > 0)
    return np.column_stack([forward_fill(defined, value, 0.5), forward_fill(defined, psc, 0.0)])


FEEDBACK = Recipe(
    make=lambda: FeedbackScaler(paradigm=Paradigm.from_file("regulation"), baseline_window=5),
    fit_args=tuple,
    inputs=feedback_inputs,
    step="partial_fit",
    output=lambda stage, _: np.array([stage.value_, stage.psc_]),
    batch=feedback_batch,
    atol=1e-9, rtol=0.0,
    wrong_shape=lambda: ((3, TR, np.ones(2)), "Expected () (a single number)", "Got (2,)"),
    bad_params=({"baseline_volumes": -1}, {"baseline_window": 0}, {"hrf_delay": -4.0},
                {"psc_range": 0.0}, {"paradigm": "regulation"}),
    pure=frozenset({"is_baseline"}),
)


# ---- DecoderFeedback: P(drug) in, the bar out; batch: moving sums and block sums.
@cache
def intermittent_paradigm() -> Paradigm:
    """Drug and food blocks, continuous and intermittent, between fixations (48 s)."""
    return Paradigm.from_dict({"name": "contract", "task": "contract", "tr": TR, "blocks": [
        {"condition": "fixation", "duration": 4.0},
        {"condition": "reappraise", "cue": "drug", "duration": 12.0, "feedback": "continuous"},
        {"condition": "savor", "cue": "food", "duration": 10.0, "feedback": "intermittent"},
        {"condition": "fixation", "duration": 6.0},
        {"condition": "look", "cue": "drug", "duration": 8.0, "feedback": "intermittent"},
        {"condition": "fixation", "duration": 8.0}]})


def decoder_inputs(n: int) -> Iterator[tuple]:
    """Random ``P(drug)`` values; censoring; one missing value."""
    rng = np.random.default_rng(4)
    for index in range(n):
        p_drug = float(rng.uniform(0.0, 1.0))
        yield index, TR, (math.nan if index == 11 else p_drug), index % 7 == 3


def decoder_batch(stage: DecoderFeedback, inputs: list[tuple]) -> np.ndarray:
    """Compute the bar from moving sums (continuous) and block sums (intermittent)."""
    paradigm = stage.paradigm
    index = np.array([args[0] for args in inputs])
    p_drug = np.array([args[2] for args in inputs], dtype=np.float64)
    valid = ~np.array([args[3] for args in inputs]) & np.isfinite(p_drug)
    blocks = [paradigm.block_of_volume(i) for i in index]
    number = np.array([paradigm.blocks.index(block) for block in blocks])
    onset = np.array([block.onset for block in blocks])
    end = onset + np.array([block.duration for block in blocks])
    drug = np.array([block.cue == "drug" for block in blocks])
    intermittent = np.array([block.feedback == "intermittent" for block in blocks])
    # Continuous: mean of the last `smoothing` valid values.
    seen = np.cumsum(valid)
    sums = np.concatenate([[0.0], np.cumsum(p_drug[valid])])
    first = np.maximum(seen - stage.smoothing, 0)
    moving = (sums[seen] - sums[first]) / np.maximum(seen - first, 1)
    # Intermittent: mean over the block's valid volumes from onset + hrf_delay, at its end.
    counted = valid & (index * TR >= onset + stage.hrf_delay - 1e-9)
    start = np.searchsorted(number, number)  # each volume's block's first volume
    block_sums = np.cumsum(np.where(counted, p_drug, 0.0))
    block_counts = np.cumsum(counted)
    held_sum = block_sums - np.where(start > 0, block_sums[start - 1], 0.0)
    held_count = block_counts - np.where(start > 0, block_counts[start - 1], 0)
    last = (index + 1) * TR >= end - 1e-9
    mean = np.where(intermittent, held_sum / np.maximum(held_count, 1), moving)
    defined = valid & (~intermittent | (last & (held_count > 0)))
    clipped = np.clip(mean, 0.0, 1.0)
    value = np.where(drug, clipped, 1.0 - clipped)
    return forward_fill(defined, value, 0.5)[:, None]


DECODER_FEEDBACK = Recipe(
    make=lambda: DecoderFeedback(paradigm=intermittent_paradigm(), smoothing=3, hrf_delay=4.0),
    fit_args=tuple,
    inputs=decoder_inputs,
    step="partial_fit",
    output=lambda stage, _: np.array([stage.value_]),
    batch=decoder_batch,
    atol=1e-12, rtol=0.0,
    wrong_shape=lambda: ((3, TR, np.ones(2)), "Expected () (a single number)", "Got (2,)"),
    bad_params=({"smoothing": 0}, {"hrf_delay": -1.0}, {"hrf_delay": math.inf},
                {"paradigm": {"blocks": []}}),
    pure=frozenset({"score"}),
)

#: The recipe of every stage, by class name.
RECIPES: dict[str, Recipe] = {
    "MotionCorrector": MOTION,
    "RoiExtractor": ROI,
    "SignalModel": SIGNAL,
    "FeedbackScaler": FEEDBACK,
    "DecoderFeedback": DECODER_FEEDBACK,
}
