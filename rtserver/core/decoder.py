"""Drug-versus-food decoders: training from a localizer, model files, per-volume prediction.

Training (:func:`train_subject`, ``rtserver train``)
    The subject's localizer run(s) go volume by volume through the same
    :class:`~rtserver.core.pipeline.Pipeline` as a live session (motion correction, ROI voxels,
    online signal model), so training features are exactly what the decoder sees online.
    Features are the percent signal change of every voxel of the cortico-striatal ROIs plus
    each ROI's mean. Volume ``k`` (acquired at ``k * TR``) is labelled with the cue of the
    block running ``lag`` seconds earlier (``drug`` = 1, ``food`` = 0); the first
    ``settle`` seconds of each lagged block are left out (the response is still rising), as
    are neutral-cue and fixation volumes: the decoder is two-class, drug versus food.
    The classifier is ``StandardScaler`` + L2 ``LogisticRegression`` (both inside one
    scikit-learn pipeline, so the scaling is learned from training folds only). Its ``C`` is
    chosen by blocked cross-validation and its probabilities are calibrated by Platt scaling
    on out-of-fold decision values (``CalibratedClassifierCV(method="sigmoid",
    ensemble=False)`` on the same blocked folds). The folds are *block pairs*: the k-th drug
    block and the k-th food block of a run form group k, so every test fold holds both
    classes and no volume shares a block (and its autocorrelated neighbours) with a training
    volume. The reported scores are nested: the outer leave-one-pair-out loop re-runs the C
    selection and calibration inside each training part.

Drug-bias index (the univariate second feedback type)
    From the same training volumes, the mean response of each ROI (its mean's percent signal
    change) to drug cues ``d`` and to food cues ``f``. The subject's index is
    ``mean_r(d_r - f_r)`` (percent; > 0: drug-biased). Online, a volume's ROI means ``m`` are
    placed on the line from the food to the drug response:
    ``score = (m - f) . (d - f) / |d - f|^2`` (0 = the food response, 1 = the drug
    response); ``p_drug = clip(score, 0, 1)`` and the decision value is ``score``.

Model files
    Written and read by :mod:`rtserver.service.model_file` (skops, never pickle, with an
    explicit list of trusted types).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtserver.core.stages.roi import RoiSet
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: What the feature vector holds, in order (``Pipeline.features_``).
FEATURES = ("percent signal change of each ROI voxel minus its ROI's mean over voxels (the "
            "multivoxel pattern), then each ROI's mean")
FEEDBACK_TYPES = ("classifier", "bias")
#: Values of C (inverse L2 penalty) searched by the inner cross-validation.
C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
LABELS = {"food": 0, "drug": 1}
DEFAULT_LAG = 4.0
DEFAULT_SETTLE = 4.0


# --------------------------------------------------------------------------- labels
def cue_of(trial_type: str) -> str | None:
    """``"drug"`` or ``"food"`` for a BIDS ``trial_type`` such as ``look_drug``, else None."""
    for cue in LABELS:
        if trial_type == cue or trial_type.endswith(f"_{cue}"):
            return cue
    return None


def volume_labels(events: list[dict], tr: float, n_volumes: int, lag: float = DEFAULT_LAG,
                  settle: float = DEFAULT_SETTLE) -> tuple[np.ndarray, np.ndarray]:
    """Label each volume with the cue of the block ``lag`` seconds earlier.

    Parameters
    ----------
    events : list of dict
        BIDS events (``onset``, ``duration``, ``trial_type``).
    tr : float
        Repetition time (s).
    n_volumes : int
        Volumes in the run.
    lag : float
        Haemodynamic lag (s).
    settle : float
        Seconds at the start of each lagged block left out.

    Returns
    -------
    labels : numpy.ndarray
        Per volume 1 (drug), 0 (food) or -1 (not used).
    pairs : numpy.ndarray
        Per volume the block-pair number (k-th drug and k-th food block share k), -1 if
        unused.
    """
    labels = np.full(n_volumes, -1, dtype=np.int64)
    pairs = np.full(n_volumes, -1, dtype=np.int64)
    seen = {cue: 0 for cue in LABELS}
    times = np.arange(n_volumes) * tr
    for event in sorted(events, key=lambda e: float(e["onset"])):
        cue = cue_of(str(event["trial_type"]))
        if cue is None:
            continue
        onset, duration = float(event["onset"]), float(event["duration"])
        inside = (times >= onset + lag + settle - 1e-9) & (times < onset + duration + lag - 1e-9)
        labels[inside] = LABELS[cue]
        pairs[inside] = seen[cue]
        seen[cue] += 1
    return labels, pairs


# --------------------------------------------------------------------------- decoder
@dataclass(frozen=True)
class LinearReadout:
    """The trained classifier collapsed to one dot product and a sigmoid.

    ``decision = weights . x + intercept`` (the logistic regression's decision value on the
    standardised features) and ``p_drug = 1 / (1 + exp(slope * decision + offset))``
    (Platt scaling), exactly what ``predict_proba`` computes, without its per-call overhead.
    """

    weights: np.ndarray
    intercept: float
    slope: float
    offset: float

    @classmethod
    def from_classifier(cls, classifier: Any) -> LinearReadout:
        """Read the numbers out of a fitted ``CalibratedClassifierCV(ensemble=False)``."""
        calibrated = classifier.calibrated_classifiers_[0]
        pipeline = calibrated.estimator
        scaler, logistic = pipeline[0], pipeline[-1]
        weights = logistic.coef_[0] / scaler.scale_
        intercept = float(logistic.intercept_[0] - weights @ scaler.mean_)
        sigmoid = calibrated.calibrators[0]
        return cls(weights=weights, intercept=intercept, slope=float(sigmoid.a_),
                   offset=float(sigmoid.b_))

    def predict(self, features: np.ndarray) -> tuple[float, float]:
        """``(p_drug, decision)`` of one feature vector."""
        decision = float(self.weights @ features + self.intercept)
        z = self.slope * decision + self.offset
        p_drug = 1.0 / (1.0 + math.exp(z)) if z > -700 else 1.0
        return p_drug, decision


class Decoder:
    """A trained drug-versus-food decoder and everything needed to apply it online.

    Parameters
    ----------
    classifier : CalibratedClassifierCV
        The fitted, calibrated classifier of the ROI features.
    rois : RoiSet
        The ROIs on the training reference grid (their voxels are the features).
    reference : Volume
        The training reference volume: online runs are registered to it, so the ROI voxels
        are the same ones.
    bias_drug, bias_food : numpy.ndarray
        Mean response (percent) of each ROI to drug and to food cues in training.
    settings : dict
        Signal model settings and labelling (``lag``, ``settle``, ``task_regressor``, ...).
    card : dict
        The model card.
    """

    def __init__(self, classifier: Any, rois: RoiSet, reference: Volume, bias_drug: np.ndarray,
                 bias_food: np.ndarray, settings: dict, card: dict) -> None:
        self.classifier = classifier
        self.rois = rois
        self.reference = reference
        self.bias_drug = np.asarray(bias_drug, dtype=np.float64)
        self.bias_food = np.asarray(bias_food, dtype=np.float64)
        self.settings = dict(settings)
        self.card = dict(card)
        self.readout = LinearReadout.from_classifier(classifier)
        direction = self.bias_drug - self.bias_food
        norm = float(direction @ direction)
        self._bias_direction = direction / norm if norm > 0 else direction
        self.n_rois = len(rois.names)

    @property
    def n_features(self) -> int:
        """Length of the feature vector (ROI voxels then ROI means)."""
        return len(self.readout.weights)

    @property
    def bias_index(self) -> float:
        """The subject's drug-bias index: mean over ROIs of drug minus food response (%)."""
        return float(np.mean(self.bias_drug - self.bias_food))

    def predict(self, features: np.ndarray, kind: str = "classifier") -> tuple[float, float]:
        """``(p_drug, decision)`` of one volume's features.

        Parameters
        ----------
        features : numpy.ndarray
            Percent signal change of the ROI voxels then the ROI means.
        kind : {"classifier", "bias"}
            The multivoxel classifier, or the univariate drug-bias score.
        """
        if kind == "bias":
            score = float((features[-self.n_rois:] - self.bias_food) @ self._bias_direction)
            return min(max(score, 0.0), 1.0), score
        return self.readout.predict(features)
