"""Decoder model files: skops archives (never pickle) and the model card beside them.

A model file holds plain data and the scikit-learn classifier; :func:`load_decoder` reads
the archive's schema first and refuses any type outside :data:`PLAIN_TYPES` and
:data:`TRUSTED_TYPES` before loading anything. Beside it, ``<name>.json`` is the model card
(training data, ROIs, labels, lag, cross-validated scores, software versions); the card also
travels inside the file.
"""

from __future__ import annotations

import json
import platform
import zipfile
from pathlib import Path

import numpy as np

from rtserver import __version__
from rtserver.core.decoder import Decoder
from rtserver.core.stages.roi import RoiSet
from rtserver.errors import InputError
from rtserver.volume import Volume

#: Version 2: the voxel features are centred within each ROI (:data:`FEATURES`); models of
#: version 1 used the voxels' raw percent signal change and are refused (retrain them).
MODEL_FORMAT = "rtserver-decoder/2"
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


def save_decoder(decoder: Decoder, path: str | Path) -> tuple[Path, Path]:
    """Write the decoder's skops file and its model card JSON beside it.

    Parameters
    ----------
    decoder : Decoder
        A trained decoder.
    path : str or Path
        The model file; it must end in ``.skops``.

    Returns
    -------
    model, card : Path
        The two files written.

    Raises
    ------
    InputError
        If ``path`` does not end in ``.skops``.
    """
    import skops.io as sio  # imported here: it pulls in pandas and numexpr, which log

    path = Path(path)
    if path.suffix != ".skops":
        raise InputError(f"A model file should end in .skops. Got {path.name}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = decoder.rois.labels
    content = {
        "format": MODEL_FORMAT,
        "classifier": decoder.classifier,
        "roi_labels": np.asarray(labels, dtype=np.int16),
        "roi_affine": np.asarray(decoder.rois.affine, dtype=np.float64),
        "roi_names": [decoder.rois.names[k] for k in sorted(decoder.rois.names)],
        "roi_values": [int(k) for k in sorted(decoder.rois.names)],
        "reference": np.asarray(decoder.reference.data),
        "reference_affine": np.asarray(decoder.reference.affine, dtype=np.float64),
        "tr": float(decoder.reference.tr),
        "bias_drug": decoder.bias_drug,
        "bias_food": decoder.bias_food,
        "settings_json": json.dumps(decoder.settings),
        "card_json": json.dumps(decoder.card),
    }
    sio.dump(content, path, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(decoder.card, indent=2) + "\n", encoding="utf-8")
    return path, card_path


def load_decoder(path: str | Path) -> Decoder:
    """Load a decoder written by :func:`save_decoder`, trusting only :data:`TRUSTED_TYPES`.

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
