"""Drug-versus-food decoders: training from a localizer, model files, per-volume prediction.

Training (:func:`train_subject`, ``rtserver train``)
    The subject's localizer run(s) go volume by volume through the same
    :class:`~rtserver.pipeline.Pipeline` as a live session (motion correction, ROI voxels,
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
    A skops file (never pickle) holding plain data and the scikit-learn classifier, loaded by
    :func:`load_decoder` with an explicit list of trusted types; a file naming any other type
    is refused. Beside it, ``<name>.json`` is the model card (training data, ROIs, labels,
    lag, cross-validated scores, software versions); the card also travels inside the file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtserver import __version__
from rtserver.errors import InputError
from rtserver.stages.roi import RoiSet
from rtserver.volume import Volume

log = logging.getLogger(__name__)

#: Version 2: the voxel features are centred within each ROI (:data:`FEATURES`); models of
#: version 1 used the voxels' raw percent signal change and are refused (retrain them).
MODEL_FORMAT = "rtserver-decoder/2"
#: What the feature vector holds, in order (``Pipeline.features_``).
FEATURES = ("percent signal change of each ROI voxel minus its ROI's mean over voxels (the "
            "multivoxel pattern), then each ROI's mean")
FEEDBACK_TYPES = ("classifier", "bias")
#: Values of C (inverse L2 penalty) searched by the inner cross-validation.
C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
LABELS = {"food": 0, "drug": 1}
DEFAULT_LAG = 4.0
DEFAULT_SETTLE = 4.0
#: Plain data types a model file may contain (module.class as skops records them).
PLAIN_TYPES = (
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int",
    "builtins.float", "builtins.bool", "builtins.NoneType", "numpy.ndarray",
    "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32", "numpy.int16",
    "numpy.uint8", "numpy.bool_", "numpy.dtype",
)
#: Types a model file may contain besides plain data: the classifier's, nothing else.
TRUSTED_TYPES = (
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
)


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


def read_events(path: str | Path) -> list[dict]:
    """Read a BIDS ``*_events.tsv`` (``onset``, ``duration``, ``trial_type``).

    Raises
    ------
    InputError
        If the file is missing or lacks a column or a number.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError as exc:
        raise InputError(f"Cannot read events file {path}: {exc.strerror}.") from None
    events = []
    for number, row in enumerate(rows, start=2):
        try:
            events.append({"onset": float(row["onset"]), "duration": float(row["duration"]),
                           "trial_type": row["trial_type"].strip()})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"{path} line {number}: expected numbers in 'onset' and "
                             f"'duration' and a 'trial_type'. Got {dict(row)}.") from None
    return events


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

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the skops file and the model card JSON beside it; return both paths."""
        import skops.io as sio

        path = Path(path)
        if path.suffix != ".skops":
            raise InputError(f"A model file should end in .skops. Got {path.name}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = self.rois.labels
        content = {
            "format": MODEL_FORMAT,
            "classifier": self.classifier,
            "roi_labels": np.asarray(labels, dtype=np.int16),
            "roi_affine": np.asarray(self.rois.affine, dtype=np.float64),
            "roi_names": [self.rois.names[k] for k in sorted(self.rois.names)],
            "roi_values": [int(k) for k in sorted(self.rois.names)],
            "reference": np.asarray(self.reference.data),
            "reference_affine": np.asarray(self.reference.affine, dtype=np.float64),
            "tr": float(self.reference.tr),
            "bias_drug": self.bias_drug,
            "bias_food": self.bias_food,
            "settings_json": json.dumps(self.settings),
            "card_json": json.dumps(self.card),
        }
        sio.dump(content, path, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
        card_path = path.with_suffix(".json")
        card_path.write_text(json.dumps(self.card, indent=2) + "\n", encoding="utf-8")
        return path, card_path


def load_decoder(path: str | Path) -> Decoder:
    """Load a decoder written by :meth:`Decoder.save`, trusting only :data:`TRUSTED_TYPES`.

    Raises
    ------
    InputError
        If the file is missing, not a skops file, of another format, or names a type
        outside the trusted list (it is then not loaded at all).
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Decoder model file {path} does not exist.")
    refused = sorted(set(model_types(path)) - set(PLAIN_TYPES) - set(TRUSTED_TYPES))
    if refused:
        raise InputError(f"Refusing to load {path}: it names types outside the trusted list: "
                         f"{', '.join(refused)}.")
    try:
        untrusted = sio.get_untrusted_types(file=path)
        content = sio.load(path, trusted=[t for t in untrusted if t in TRUSTED_TYPES])
    except Exception as exc:
        raise InputError(f"Cannot load decoder {path}: {exc}") from None
    if not isinstance(content, dict) or content.get("format") != MODEL_FORMAT:
        got = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise InputError(f"{path} is not an rtserver decoder: expected format "
                         f"{MODEL_FORMAT!r}. Got {got!r}.")
    names = dict(zip(content["roi_values"], content["roi_names"], strict=True))
    rois = RoiSet(labels=np.asarray(content["roi_labels"], dtype=np.int32),
                  affine=content["roi_affine"], names=names)
    reference = Volume(np.asarray(content["reference"]), content["reference_affine"],
                       index=0, tr=float(content["tr"]))
    decoder = Decoder(content["classifier"], rois, reference, content["bias_drug"],
                      content["bias_food"], json.loads(content["settings_json"]),
                      json.loads(content["card_json"]))
    n_voxels = int(np.count_nonzero(rois.labels))
    if decoder.n_features != n_voxels + len(names):
        raise InputError(f"{path}: the classifier expects {decoder.n_features} features; the "
                         f"ROIs give {n_voxels + len(names)}.")
    return decoder


def model_types(path: str | Path) -> list[str]:
    """Every type (``module.class``) a skops file's schema names, read without loading it.

    skops itself trusts scikit-learn's estimators by default; this project trusts only the
    types of :data:`PLAIN_TYPES` and :data:`TRUSTED_TYPES`, so it reads the whole schema.

    Raises
    ------
    InputError
        If the file is not a skops zip with a readable ``schema.json``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a skops model file: {exc}") from None
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(found)


def software_versions() -> dict[str, str]:
    """Versions of the software that trained (or runs) a decoder."""
    import nibabel
    import scipy
    import sklearn
    import skops

    return {"rtserver": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "skops": skops.__version__,
            "nibabel": nibabel.__version__}
