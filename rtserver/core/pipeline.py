"""The processing core: ``Pipeline.step(volume) -> FeedbackEvent``.

Live sessions, replay, training, benchmarks and tests all call this one method. It does no
I/O: the first volume of a run (or a given reference) fits the stages; every volume then goes
through motion estimation and ROI extraction on the motion-corrected ROI voxels. Then:

- with a decoder: the ROI voxels and ROI means go through the online signal model (drift and
  motion regression, despiking, percent signal change), the decoder gives ``P(drug)`` and a
  decision value, and :class:`~rtserver.core.stages.DecoderFeedback` makes the feedback value;
- without one: the target ROI's percent signal change against the fixation baseline is the
  feedback (:class:`~rtserver.core.stages.FeedbackScaler`).

A decoder brings its own ROIs and reference volume (those it was trained on), so online
features are the same voxels as in training.

Non-finite voxels
-----------------
NaN and infinite voxels are a property of real data (a float NIfTI masked with NaN outside
the brain, a reconstruction artefact), not an error. :meth:`Pipeline.step` counts them
(``nonfinite_voxels_``) and hands the stages a finite copy of the volume in which each such
voxel takes its value in the previous volume the stages saw (0 in the first volume and in
the reference), so a NaN background stays 0 and a lone bad voxel inside an ROI does not move
its mean. The volume itself is left as it came in (the server records it so). When more
than :data:`MAX_UNMEASURED` of the feedback ROI's signal (with a decoder: of any ROI's)
comes from such filled-in voxels, the volume is kept out of every fit and baseline, as a
censored one is, and its feedback value is withheld: ``value`` None, ``withheld`` saying
why. Finite voxels so large that sums over a volume could overflow float32 (beyond
:data:`MAX_ABS_VOXEL`) are refused with an :class:`~rtserver.errors.InputError` before any
stage sees them. A feedback value that comes out non-finite for any other reason is
withheld too: a published value is finite, or None with a reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from rtserver.config import Config
from rtserver.core.hrf import task_regressor
from rtserver.core.registration import AtlasRegistrar, RegistrationQuality
from rtserver.core.stages import (
    DecoderFeedback,
    FeedbackScaler,
    MotionCorrector,
    MotionEstimate,
    RoiExtractor,
    RoiSet,
    SignalModel,
)
from rtserver.errors import ConfigError, InputError
from rtserver.paradigm import Paradigm
from rtserver.protocol import FeedbackEvent
from rtserver.volume import Volume

if TYPE_CHECKING:
    from rtserver.core.decoder import Decoder

log = logging.getLogger(__name__)

#: Largest finite voxel magnitude the stages take: float32 sums of up to 512**3 such voxels
#: stay finite (float32 holds up to 3.4e38).
MAX_ABS_VOXEL = 1e30
#: Largest share of a feedback ROI's signal that may come from filled-in (non-finite)
#: voxels; beyond it the volume's feedback value is withheld.
MAX_UNMEASURED = 0.1


class Pipeline:
    """Motion correction, ROI extraction, signal model, decoding and feedback, per volume.

    The constructor only stores what it is given and builds the stages; nothing is read
    from files here (:class:`rtserver.service.session.Session` loads decoders, ROI masks,
    paradigms and references and hands them in).

    Parameters
    ----------
    config : Config
        Stage settings (``motion``, ``roi``, ``signal``, ``decoder``, ``feedback`` tables).
    rois : RoiSet or None
        Regions on the EPI grid; ``None`` takes the decoder's, or maps the atlas into the
        reference with ``registrar`` when one is given, or else uses an automatic
        whole-brain mask.
    paradigm : Paradigm or None
        The run's paradigm (block design of the feedback); ``None`` for none.
    reference : Volume or None
        Register to this volume; ``None`` takes the decoder's training reference, or else
        the run's first volume.
    decoder : Decoder or None
        Trained decoder.
    events : list of dict or None
        BIDS events of the run, for the signal model's task regressor (training passes the
        localizer's); ``None`` takes the paradigm's.
    keep_features : bool
        Run the signal model even without a decoder, keeping each volume's features in
        ``features_`` (training uses this).
    registrar : AtlasRegistrar or None
        Maps the MNI atlas into the reference at :meth:`fit` (``registrar(reference) ->
        (rois, quality)``) when ``rois`` is ``None`` and there is no decoder; the service
        layer provides it (:mod:`rtserver.service.atlas_registration`, ANTs).
    """

    def __init__(self, config: Config, rois: RoiSet | None = None,
                 paradigm: Paradigm | None = None, reference: Volume | None = None,
                 decoder: Decoder | None = None, events: list[dict] | None = None,
                 keep_features: bool = False, registrar: AtlasRegistrar | None = None,
                 ) -> None:
        self.config = config
        self.use_atlas = rois is None and decoder is None and registrar is not None
        if rois is None and decoder is not None:
            rois = decoder.rois
        if reference is None and decoder is not None:
            reference = decoder.reference
        self.rois = rois
        self.paradigm = paradigm
        self.reference = reference
        self.decoder = decoder
        self.registrar = registrar
        self.events = events if events is not None else (
            paradigm.events() if paradigm is not None else None)
        self.keep_features = keep_features or decoder is not None
        motion = config.motion
        self.motion = MotionCorrector(
            smoothing_fwhm=motion.smoothing_fwhm,
            interpolation_order=motion.interpolation_order, subsample=motion.subsample,
            max_samples=motion.max_samples, max_iterations=motion.max_iterations,
            tolerance=motion.tolerance, fd_threshold=motion.fd_threshold,
            restart_factor=motion.restart_factor, restart_fwhm=motion.restart_fwhm,
        )
        self.roi = RoiExtractor(rois)
        feedback = config.feedback
        self.feedback = FeedbackScaler(
            paradigm=paradigm, baseline_volumes=feedback.baseline_volumes,
            baseline_window=feedback.baseline_window, hrf_delay=feedback.hrf_delay,
            psc_range=feedback.psc_range,
        )
        self.decoder_feedback = DecoderFeedback(
            paradigm=paradigm, smoothing=config.decoder.smoothing, hrf_delay=feedback.hrf_delay)
        self.signal: SignalModel | None = None
        self.registration_: RegistrationQuality | None = None
        self.features_: object = None
        self.target_index_: int | None = None
        self.nonfinite_voxels_ = 0
        self._previous_data: np.ndarray | None = None

    @property
    def is_fitted(self) -> bool:
        """True once the reference has been set up."""
        return self.target_index_ is not None

    @property
    def roi_names(self) -> list[str]:
        """ROI names, in the column order of :attr:`FeedbackEvent.rois`."""
        return list(self.roi.names_) if self.is_fitted else []

    @property
    def model_card(self) -> dict | None:
        """The decoder's model card (``None`` without a decoder)."""
        return None if self.decoder is None else self.decoder.card

    def fit(self, reference: Volume) -> Pipeline:
        """Set every stage up on the reference volume.

        Its non-finite voxels are set aside as :meth:`step` sets them aside (to 0).

        Raises
        ------
        InputError
            If the atlas registration is refused, the ROIs are not on the grid, or the
            reference gives a singular linear system.
        ConfigError
            If ``[roi] target`` names no ROI.
        """
        reference = _finite_copy(reference, None)[0]
        try:
            return self._fit(reference)
        except np.linalg.LinAlgError as exc:
            raise InputError(f"Reference volume {reference.index}: expected an image with "
                             f"structure along all three axes. Got a singular linear system "
                             f"({exc}).") from None

    def _fit(self, reference: Volume) -> Pipeline:
        if self.use_atlas:
            self.rois, self.registration_ = self.registrar(reference)
            self.roi = RoiExtractor(self.rois)
        self.motion.fit(reference)
        self.roi.fit(reference)
        self.feedback.fit()
        self.decoder_feedback.fit()
        if self.keep_features:
            self.signal = self._signal_model(reference.tr).fit(
                self.roi.n_voxels_ + len(self.roi.names_))
            self._roi_sizes = self.roi.counts_.astype(np.intp)
            if self.decoder is not None and self.signal.n_features_ != self.decoder.n_features:
                raise InputError(f"The decoder expects {self.decoder.n_features} features; "
                                 f"the ROIs give {self.signal.n_features_}.")
        target = self.config.roi.target
        if target is None:
            self.target_index_ = 0
        elif target in self.roi.names_:
            self.target_index_ = self.roi.names_.index(target)
        else:
            raise ConfigError(
                f"[roi] 'target' should name one of the ROIs {self.roi.names_}. Got {target!r}."
            )
        return self

    def _patterns(self, psc: np.ndarray) -> np.ndarray:
        """Decoder features from the signal model's output (:data:`FEATURES`).

        Each ROI voxel's percent signal change minus its ROI's mean over voxels, then the
        ROI means.

        Centring removes the ROI's overall response from its voxels, so that the voxels
        carry the multivoxel pattern and the ROI means the response's size: a decoder then
        cannot take a strong response to one cue for the other cue's pattern (savoring
        food raises every food-responsive voxel, without making the pattern drug-like).
        """
        n_voxels = self.roi.n_voxels_
        voxels = psc[:n_voxels]
        means = np.add.reduceat(voxels, self.roi.starts_) / self.roi.counts_
        out = np.empty_like(psc)
        np.subtract(voxels, np.repeat(means, self._roi_sizes), out=out[:n_voxels])
        out[n_voxels:] = psc[n_voxels:]
        return out

    def _signal_model(self, tr: float) -> SignalModel:
        """The signal model, with the decoder's training settings if there is one.

        The features must be computed as in training; without a decoder ``[signal]``.
        """
        settings = dict(vars(self.config.signal))
        if self.decoder is not None:
            trained = dict(self.decoder.settings.get("signal", {}))
            if "ridge" in trained and "motion_ridge" not in trained:
                trained["motion_ridge"] = trained["ridge"]  # trained with one ridge for all
            if any(trained.get(k, v) != v for k, v in settings.items()):
                log.info("signal model: using the decoder's training settings %s "
                         "instead of [signal] %s", trained, settings)
            settings.update({k: trained[k] for k in settings if k in trained})
        task = None
        if settings["task_regressor"] and self.events:
            end = max(float(e["onset"]) + float(e["duration"]) for e in self.events)
            task = task_regressor(self.events, tr, int(np.ceil((end + 32.0) / tr)))
        elif settings["task_regressor"] and self.decoder is not None:
            log.warning("the decoder was trained with a task regressor, but this run has no "
                        "paradigm: the signal model runs without it")
        return SignalModel(drift_order=int(settings["drift_order"]),
                           drift_timescale=float(settings["drift_timescale"]),
                           despike=float(settings["despike"]), ridge=float(settings["ridge"]),
                           motion_ridge=float(settings["motion_ridge"]), task=task)

    def step(self, volume: Volume) -> FeedbackEvent:
        """Process one volume and return its feedback event (timestamps left to the caller).

        Non-finite voxels are counted in ``nonfinite_voxels_`` and set aside (see the module
        docstring); ``volume`` itself is not changed.

        Raises
        ------
        InputError
            If the volume is not on the run's grid (checked by the motion stage), holds
            voxels too large for float32 arithmetic, or gives a singular linear system
            (an image without structure along some axis).
        """
        finite, bad = _finite_copy(volume, self._previous_data)
        self.nonfinite_voxels_ = 0 if bad is None else int(np.count_nonzero(bad))
        try:
            if not self.is_fitted:
                self.fit(finite if self.reference is None else self.reference)
            event = self._stages(finite, bad)
        except np.linalg.LinAlgError as exc:
            raise InputError(
                f"Volume {volume.index} could not be processed: expected an image with "
                f"structure along all three axes. Got a singular linear system ({exc})."
            ) from None
        if finite.data.dtype.kind == "f":
            self._previous_data = finite.data
        return _withhold_nonfinite(event)

    def _stages(self, volume: Volume, bad: np.ndarray | None) -> FeedbackEvent:
        """Run a finite volume through the stages (``bad``: where it was not finite)."""
        estimate = self.motion.partial_fit(volume).estimate_
        censored = bool(estimate.censored)
        voxels = self.roi.transform_voxels(volume, estimate.matrix)
        roi_means = self.roi.means(voxels)
        if not (np.all(np.isfinite(roi_means)) and np.isfinite(estimate.fd)):
            raise InputError(f"Volume {volume.index} gave non-finite ROI means or motion. "
                             f"Expected finite ones. Got {roi_means.tolist()[:4]}, fd "
                             f"{estimate.fd}.")
        unmeasured = self._unmeasured(volume, bad, estimate.matrix)
        skip = censored or unmeasured is not None  # kept out of every fit and baseline
        event = FeedbackEvent(
            volume=volume.index, value=0.5, censored=censored, fd=float(estimate.fd),
            rois={name: float(v) for name, v in zip(self.roi.names_, roi_means, strict=True)},
        )
        if self.signal is not None:
            features = np.concatenate([voxels, roi_means])
            psc = self.signal.partial_fit(
                volume.index, volume.tr, features, estimate.params, censored=skip).psc_
            self.features_ = self._patterns(psc)
        if self.decoder is not None:
            p_drug, decision = self.decoder.predict(self.features_, self.config.decoder.feedback)
            self.decoder_feedback.partial_fit(volume.index, volume.tr, p_drug, skip)
            event.p_drug, event.decision = p_drug, decision
            event.value = self.decoder_feedback.value_
        else:
            target = float(roi_means[self.target_index_])
            self.feedback.partial_fit(volume.index, volume.tr, target, censored=skip)
            event.value = self.feedback.value_
        if unmeasured is not None:
            event.value = event.p_drug = event.decision = None
            event.withheld = unmeasured
        return event

    def _unmeasured(self, volume: Volume, bad: np.ndarray | None,
                    matrix: np.ndarray) -> str | None:
        """Say why the feedback is withheld, or return None when it is not.

        It is withheld when more than :data:`MAX_UNMEASURED` of a feedback ROI's signal
        came from non-finite voxels.
        """
        if bad is None:
            return None
        mask = dataclasses.replace(volume, data=bad.astype(np.float32))
        share = self.roi.means(self.roi.transform_voxels(mask, matrix))
        rois = range(len(share)) if self.decoder is not None else [self.target_index_]
        worst = max(rois, key=lambda r: share[r])
        if share[worst] <= MAX_UNMEASURED:
            return None
        return (f"{100 * share[worst]:.0f}% of ROI {self.roi.names_[worst]!r} was not finite "
                f"in this volume (at most {100 * MAX_UNMEASURED:.0f}% is filled in)")

    @property
    def motion_estimate(self) -> MotionEstimate:
        """The latest volume's motion estimate."""
        return self.motion.estimate_


def _withhold_nonfinite(event: FeedbackEvent) -> FeedbackEvent:
    """Withhold a non-finite value (None and a reason); set non-finite decoder outputs to None.

    Nothing non-finite is ever published.
    """
    for name in ("p_drug", "decision"):
        number = getattr(event, name)
        if number is not None and not math.isfinite(number):
            setattr(event, name, None)
    if event.value is not None and not math.isfinite(event.value):
        event.value = None
    if event.value is None and event.withheld is None:
        event.withheld = "the feedback value could not be computed as a finite number"
    return event


def _finite_copy(volume: Volume, previous: np.ndarray | None
                 ) -> tuple[Volume, np.ndarray | None]:
    """Fill non-finite voxels in; return the finite volume and where they were.

    Each non-finite voxel takes its value in ``previous`` (0 when None or of another
    shape). Without any, the volume itself comes back with None. Voxels beyond
    :data:`MAX_ABS_VOXEL` are refused (:class:`InputError`).
    """
    data = volume.data
    if data.dtype.kind != "f":
        return volume, None
    good = np.isfinite(data)
    bad = None
    if not good.all():
        bad = ~good
        fill = previous if previous is not None and previous.shape == data.shape else 0
        data = np.where(good, data, fill)
        volume = dataclasses.replace(volume, data=data)
    peak = max(float(data.max()), -float(data.min()))
    if peak > MAX_ABS_VOXEL:
        raise InputError(f"Volume {volume.index} should hold voxels within +-{MAX_ABS_VOXEL:g}. "
                         f"Got a voxel of {peak:g}.")
    return volume, bad
