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
"""

from __future__ import annotations

import logging
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

        Raises
        ------
        InputError
            If the atlas registration is refused, or the ROIs are not on the grid.
        ConfigError
            If ``[roi] target`` names no ROI.
        """
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

        Raises
        ------
        InputError
            If the volume is not on the run's grid (checked by the motion stage).
        """
        if not self.is_fitted:
            self.fit(self.reference if self.reference is not None else volume)
        estimate = self.motion.partial_fit(volume).estimate_
        censored = bool(estimate.censored)
        voxels = self.roi.transform_voxels(volume, estimate.matrix)
        roi_means = self.roi.means(voxels)
        event = FeedbackEvent(
            volume=volume.index, value=0.5, censored=censored, fd=float(estimate.fd),
            rois={name: float(v) for name, v in zip(self.roi.names_, roi_means, strict=True)},
        )
        if self.signal is not None:
            features = np.concatenate([voxels, roi_means])
            psc = self.signal.partial_fit(
                volume.index, volume.tr, features, estimate.params, censored=censored).psc_
            self.features_ = self._patterns(psc)
        if self.decoder is not None:
            p_drug, decision = self.decoder.predict(self.features_, self.config.decoder.feedback)
            self.decoder_feedback.partial_fit(volume.index, volume.tr, p_drug, censored)
            event.p_drug, event.decision = p_drug, decision
            event.value = self.decoder_feedback.value_
        else:
            target = float(roi_means[self.target_index_])
            self.feedback.partial_fit(volume.index, volume.tr, target, censored=censored)
            event.value = self.feedback.value_
        return event

    @property
    def motion_estimate(self) -> MotionEstimate:
        """The latest volume's motion estimate."""
        return self.motion.estimate_
