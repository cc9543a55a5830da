"""Typed run configuration, validated once at load.

A config file is TOML with optional tables; anything left out keeps its default::

    [network]
    volumes = "tcp://127.0.0.1:5555"    # bridge -> server (ROUTER)
    feedback = "tcp://127.0.0.1:5556"   # server -> display (PUB)
    results = "tcp://127.0.0.1:5557"    # "the result for volume N" (REP)
    curve = "path/to/keys"   # CurveZMQ on all three channels (folder made by `rtserver keys`)
    insecure = false         # allow binding beyond the loopback without CURVE

    [run]
    subject = "01"
    task = "regulation"
    run = 1

    [motion]
    reference = "path/to/earlier_run_bold.nii.gz"  # default: the run's first volume
    reference_index = 0      # volume of the reference file to register to
    smoothing_fwhm = 5.0     # mm, both images
    interpolation_order = 3  # B-spline model of the images (1 trilinear, 2, 3)
    subsample = 0            # sample grid step in voxels; 0 picks it from max_samples
    max_samples = 6000       # sample points (highest leverage kept)
    max_iterations = 20
    tolerance = 0.001        # mm (FD-style step size that stops Gauss-Newton)
    fd_threshold = 0.5       # mm; volumes above it are censored
    restart_factor = 4.0     # register again from other starts when the fit is this much worse
    restart_fwhm = 12.0      # mm, smoothing of the wide-capture pass of a restart
    reslice = false          # also record the realigned run (desc-realigned_bold.nii.gz)

    [roi]
    mask = "path/to/space-EPI_desc-rois_dseg.nii.gz"  # labels in EPI space + .tsv of names,
                             # or "atlas": register the MNI atlases to the reference volume
    target = "nacc"
    min_dice = 0.8           # refuse an atlas registration whose brain-mask Dice is lower
    t1w = "path/to/T1w.nii.gz"  # the session's T1w (NIfTI or DICOM folder) for atlas ROIs

    [signal]                 # online nuisance model of the decoder's features
    drift_order = 2          # polynomial drift terms (t / drift_timescale)^k, k = 1..order
    drift_timescale = 300.0  # s
    despike = 3.0            # clip at this many residual SDs (0: off)
    ridge = 10.0             # on X'X, drift and task columns
    motion_ridge = 30.0      # on X'X, the six motion columns (mm^2; keeps early fits small)
    task_regressor = true    # fit (not remove) the paradigm's cue blocks * HRF

    [decoder]
    model = "models/demo_decoder.skops"  # trained decoder (skops); none: ROI feedback
    feedback = "classifier"  # or "bias": the univariate drug-bias index
    smoothing = 3            # volumes averaged into the feedback value

    [feedback]
    paradigm = "regulation"  # baseline volumes are the fixation blocks
    baseline_volumes = 10    # without a paradigm: the first n volumes form the baseline
    baseline_window = 30     # running baseline over the last n baseline volumes
    hrf_delay = 4.0          # s: a volume's block is looked up hrf_delay seconds earlier
    psc_range = 2.0          # % signal change mapped to the full bar (0.5 +- range)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rtserver import bids
from rtserver.errors import ConfigError
from rtserver.protocol import DEFAULT_FEEDBACK, DEFAULT_RESULTS, DEFAULT_VOLUMES, is_endpoint


@dataclass(frozen=True)
class NetworkConfig:
    """ZeroMQ endpoints the server binds, and how they are secured.

    ``curve``: a folder of CURVE certificates (:mod:`rtserver.curve`); every channel is then
    encrypted and open only to the clients on its allow-list. Without it, an endpoint beyond
    the loopback is refused unless ``insecure`` is true.
    """

    volumes: str = DEFAULT_VOLUMES
    feedback: str = DEFAULT_FEEDBACK
    results: str = DEFAULT_RESULTS
    curve: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class RunConfig:
    """BIDS entities of the run's output files."""

    subject: str = "01"
    task: str = "regulation"
    run: int = 1

    @property
    def prefix(self) -> str:
        """``sub-<subject>_task-<task>_run-<run>``."""
        return bids.prefix(self.subject, self.task, self.run)


@dataclass(frozen=True)
class MotionConfig:
    """Settings of the incremental motion correction."""

    reference: str | None = None
    reference_index: int = 0
    smoothing_fwhm: float = 5.0
    interpolation_order: int = 3
    subsample: int = 0
    max_samples: int = 6000
    max_iterations: int = 20
    tolerance: float = 0.001
    fd_threshold: float = 0.5
    restart_factor: float = 4.0
    restart_fwhm: float = 12.0
    reslice: bool = False


#: ``[roi] mask`` value that asks for the atlas ROIs registered to the reference volume.
ATLAS = "atlas"


@dataclass(frozen=True)
class RoiConfig:
    """Where the ROIs come from and which one drives the feedback.

    ``mask``: a label image in the run's EPI space, :data:`ATLAS` for the MNI atlases
    registered to the reference, or ``None``. ``t1w``: the session's T1-weighted image,
    through which the atlases are registered when given.
    """

    mask: str | None = None
    target: str | None = None
    min_dice: float = 0.8
    t1w: str | None = None


@dataclass(frozen=True)
class SignalConfig:
    """The online signal model of the decoder's features (:mod:`rtserver.core.stages.signal`)."""

    drift_order: int = 2
    drift_timescale: float = 300.0
    despike: float = 3.0
    ridge: float = 10.0
    motion_ridge: float = 30.0
    task_regressor: bool = True


@dataclass(frozen=True)
class DecoderConfig:
    """Which trained decoder drives the feedback, and how."""

    model: str | None = None
    feedback: str = "classifier"
    smoothing: int = 3


@dataclass(frozen=True)
class FeedbackConfig:
    """How the ROI signal becomes a feedback value."""

    paradigm: str | None = None
    baseline_volumes: int = 10
    baseline_window: int = 30
    hrf_delay: float = 4.0
    psc_range: float = 2.0


@dataclass(frozen=True)
class Config:
    """The whole configuration of one run."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    run: RunConfig = field(default_factory=RunConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    roi: RoiConfig = field(default_factory=RoiConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as nested plain dicts (for the session JSON)."""
        return {f.name: dict(vars(getattr(self, f.name))) for f in fields(self)}

    def with_overrides(self, **sections: dict[str, Any]) -> Config:
        """A copy with some fields replaced, e.g. ``with_overrides(run={"subject": "P01"})``.

        ``None`` values are ignored, so unset command-line options keep the file's values.
        """
        changes = {}
        for section, values in sections.items():
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                changes[section] = _build(type(getattr(self, section)),
                                          {**vars(getattr(self, section)), **values}, section)
        return validate(replace(self, **changes))


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config file (``None`` gives the defaults).

    Raises
    ------
    ConfigError
        On a missing file, bad TOML, an unknown table or key, or a value of the wrong type.
    """
    if path is None:
        return validate(Config())
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None
    sections = {f.name: f for f in fields(Config)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"{path}: unknown tables {sorted(unknown)}; known: {sorted(sections)}.")
    built = {}
    for name, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{name}] should be a table.")
        built[name] = _build(sections[name].default_factory, value, f"{path}: [{name}]")
    return validate(Config(**built))


def _build(cls: type, values: dict, where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}.")
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if getattr(defaults, key) is None:
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: '{key}' should be text. Got {value!r}.")
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(
                f"{where}: '{key}' should be of type {expected.__name__}. Got {value!r}."
            )
    return cls(**values)


def validate(config: Config) -> Config:
    """Check value ranges across the config; return it unchanged when valid."""
    for name in ("volumes", "feedback", "results"):
        endpoint = getattr(config.network, name)
        if not is_endpoint(endpoint, bind=True):
            raise ConfigError(
                f"[network] '{name}' should be a ZeroMQ endpoint like tcp://127.0.0.1:5555. "
                f"Got {endpoint!r}."
            )
    if config.network.curve is not None and not config.network.curve.strip():
        raise ConfigError(f"[network] 'curve' should name a folder of CURVE certificates. "
                          f"Got {config.network.curve!r}.")
    if not re.fullmatch(r"[A-Za-z0-9]+", config.run.subject):
        raise ConfigError(f"[run] 'subject' should be alphanumeric. Got {config.run.subject!r}.")
    if not re.fullmatch(r"[A-Za-z0-9]+", config.run.task):
        raise ConfigError(f"[run] 'task' should be alphanumeric. Got {config.run.task!r}.")
    if config.run.run < 1:
        raise ConfigError(f"[run] 'run' should be >= 1. Got {config.run.run}.")
    motion = config.motion
    checks = [
        (motion.reference_index >= 0, "[motion] 'reference_index' should be >= 0"),
        (motion.smoothing_fwhm >= 0, "[motion] 'smoothing_fwhm' should be >= 0"),
        (motion.interpolation_order in (1, 2, 3),
         "[motion] 'interpolation_order' should be 1, 2 or 3"),
        (motion.subsample >= 0, "[motion] 'subsample' should be >= 0 (0: automatic)"),
        (motion.max_samples >= 100, "[motion] 'max_samples' should be >= 100"),
        (motion.max_iterations >= 1, "[motion] 'max_iterations' should be >= 1"),
        (motion.restart_factor > 1, "[motion] 'restart_factor' should be > 1"),
        (motion.restart_fwhm > 0, "[motion] 'restart_fwhm' should be > 0"),
        (motion.tolerance > 0, "[motion] 'tolerance' should be > 0"),
        (motion.fd_threshold > 0, "[motion] 'fd_threshold' should be > 0"),
        (config.feedback.baseline_volumes >= 1, "[feedback] 'baseline_volumes' should be >= 1"),
        (config.feedback.baseline_window >= 1, "[feedback] 'baseline_window' should be >= 1"),
        (config.feedback.hrf_delay >= 0, "[feedback] 'hrf_delay' should be >= 0"),
        (config.feedback.psc_range > 0, "[feedback] 'psc_range' should be > 0"),
        (0 < config.roi.min_dice <= 1, "[roi] 'min_dice' should be in (0, 1]"),
        (config.signal.drift_order >= 0, "[signal] 'drift_order' should be >= 0"),
        (config.signal.drift_timescale > 0, "[signal] 'drift_timescale' should be > 0"),
        (config.signal.despike >= 0, "[signal] 'despike' should be >= 0 (0: off)"),
        (config.signal.ridge >= 0, "[signal] 'ridge' should be >= 0"),
        (config.signal.motion_ridge >= 0, "[signal] 'motion_ridge' should be >= 0"),
        (config.decoder.feedback in ("classifier", "bias"),
         "[decoder] 'feedback' should be 'classifier' or 'bias'"),
        (config.decoder.smoothing >= 1, "[decoder] 'smoothing' should be >= 1 volume"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    return config
