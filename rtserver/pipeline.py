"""The processing core: ``Pipeline.step(volume) -> FeedbackEvent``.

Live sessions, replay, benchmarks and tests all call this one method. It does no I/O:
the first volume of a run (or a given reference) fits the stages; every volume then goes
through motion estimation, ROI extraction on the motion-corrected ROI voxels, and the
feedback scaling of the target ROI.
"""

from __future__ import annotations

from pathlib import Path

from rtserver.config import Config
from rtserver.errors import ConfigError, InputError
from rtserver.paradigm import Paradigm
from rtserver.protocol import FeedbackEvent
from rtserver.sources import open_source
from rtserver.stages import FeedbackScaler, MotionCorrector, MotionEstimate, RoiExtractor, RoiSet
from rtserver.volume import Volume


def load_reference(path: str | Path, index: int = 0) -> Volume:
    """Volume ``index`` of a NIfTI file, a scanner export folder or a recorded run.

    Raises
    ------
    InputError
        If the source cannot be read or has no volume ``index``.
    """
    try:
        source = open_source(path, tr=1.0)
    except InputError as exc:
        raise InputError(f"Motion reference: {exc}") from None
    if not 0 <= index < source.n_volumes:
        raise InputError(
            f"Motion reference {path} has {source.n_volumes} volumes; volume {index} was "
            "asked for ([motion] reference_index, --reference-index)."
        )
    for volume in source:
        if volume.index == index:
            return volume
    raise InputError(f"Motion reference {path}: volume {index} could not be read.")


class Pipeline:
    """Motion correction, ROI extraction and feedback scaling, one volume at a time.

    Parameters
    ----------
    config : Config
        Stage settings (``motion``, ``roi``, ``feedback`` tables).
    rois : RoiSet or None
        Regions on the EPI grid; ``None`` reads ``config.roi.mask``, or, without one, uses an
        automatic whole-brain mask.
    paradigm : Paradigm or None
        The run's paradigm; ``None`` reads ``config.feedback.paradigm`` if set.
    reference : Volume or None
        Register to this volume; ``None`` reads ``config.motion.reference`` if set, or else
        uses the run's first volume.
    """

    def __init__(self, config: Config, rois: RoiSet | None = None,
                 paradigm: Paradigm | None = None, reference: Volume | None = None) -> None:
        self.config = config
        if rois is None and config.roi.mask:
            rois = RoiSet.from_file(config.roi.mask)
        if paradigm is None and config.feedback.paradigm:
            paradigm = Paradigm.from_file(config.feedback.paradigm)
        motion = config.motion
        if reference is None and motion.reference:
            reference = load_reference(motion.reference, motion.reference_index)
        self.rois = rois
        self.paradigm = paradigm
        self.reference = reference
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
        self.target_index_: int | None = None

    @property
    def is_fitted(self) -> bool:
        """True once the reference has been set up."""
        return self.target_index_ is not None

    @property
    def roi_names(self) -> list[str]:
        """ROI names, in the column order of :attr:`FeedbackEvent.rois`."""
        return list(self.roi.names_) if self.is_fitted else []

    def fit(self, reference: Volume) -> Pipeline:
        """Set every stage up on the reference volume."""
        self.motion.fit(reference)
        self.roi.fit(reference)
        self.feedback.fit()
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
        roi_means = self.roi.transform(volume, estimate.matrix)
        target = float(roi_means[self.target_index_])
        self.feedback.partial_fit(volume.index, volume.tr, target, censored=estimate.censored)
        return FeedbackEvent(
            volume=volume.index,
            value=self.feedback.value_,
            censored=bool(estimate.censored),
            fd=float(estimate.fd),
            rois={name: float(v) for name, v in zip(self.roi.names_, roi_means, strict=True)},
        )

    @property
    def motion_estimate(self) -> MotionEstimate:
        """The latest volume's motion estimate."""
        return self.motion.estimate_
