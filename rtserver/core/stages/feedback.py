"""Turn the target ROI's signal into a feedback value in [0, 1].

The value is the percent signal change of the target ROI against a running baseline,
mapped linearly so that the baseline is 0.5 and ``+-psc_range`` % reach 1 and 0. The
baseline is the mean of the last ``baseline_window`` baseline volumes: with a paradigm, the
volumes acquired during fixation blocks (looked up ``hrf_delay`` seconds earlier, so the
haemodynamic response of the preceding block has passed); without one, the first
``baseline_volumes`` volumes. Censored volumes never enter the baseline and repeat the
last value shown.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from rtserver.core.stages._base import Stage, check_is_fitted, check_number, check_shape
from rtserver.errors import InputError
from rtserver.paradigm import Block, Paradigm


class FeedbackScaler(Stage):
    """Percent signal change of one ROI against a running baseline, scaled to [0, 1].

    Parameters
    ----------
    paradigm : Paradigm or None
        Defines the baseline (fixation) volumes; ``None`` uses the first volumes.
    baseline_volumes : int
        Without a paradigm, how many initial volumes form the baseline.
    baseline_window : int
        Number of most recent baseline volumes averaged.
    hrf_delay : float
        Seconds between a block and the BOLD response it causes.
    psc_range : float
        Percent signal change that moves the bar from 0.5 to 1 (or 0).

    Attributes
    ----------
    value_ : float
        The latest feedback value in [0, 1] (0.5 until there is a baseline).
    psc_ : float
        The latest uncensored volume's percent signal change against the baseline.
    baseline_ : collections.deque
        The most recent baseline volumes' signals (at most ``baseline_window``).
    """

    def __init__(self, paradigm: Paradigm | None = None, baseline_volumes: int = 10,
                 baseline_window: int = 30, hrf_delay: float = 4.0,
                 psc_range: float = 2.0) -> None:
        self.paradigm = paradigm
        self.baseline_volumes = baseline_volumes
        self.baseline_window = baseline_window
        self.hrf_delay = hrf_delay
        self.psc_range = psc_range

    def fit(self) -> FeedbackScaler:
        """Start an empty baseline.

        Returns
        -------
        self

        Raises
        ------
        InputError
            If a parameter is out of range.
        """
        _check_paradigm(self)
        check_number(self, "baseline_volumes", low=0, integer=True)
        check_number(self, "baseline_window", low=1, integer=True)
        check_number(self, "hrf_delay", low=0)
        check_number(self, "psc_range", low=0, above=True)
        self.baseline_ = deque(maxlen=self.baseline_window)
        self.value_ = 0.5
        self.psc_ = 0.0
        return self

    def is_baseline(self, index: int, tr: float) -> bool:
        """Whether volume ``index`` belongs to the baseline.

        A function of the parameters alone: it needs no :meth:`fit`.

        Parameters
        ----------
        index : int
            Volume index in the run.
        tr : float
            Repetition time (s).

        Returns
        -------
        bool
            True for a baseline volume.
        """
        if self.paradigm is None:
            return index < self.baseline_volumes
        seconds = index * tr - self.hrf_delay
        if seconds < 0:
            return False  # the scanner's first volumes are not yet at steady state
        return self.paradigm.block_at(seconds).is_baseline

    def partial_fit(self, index: int, tr: float, signal: float,
                    censored: bool = False) -> FeedbackScaler:
        """Update with one volume's target-ROI signal; the result is in ``value_``.

        Parameters
        ----------
        index : int
            Volume index in the run.
        tr : float
            Repetition time (s).
        signal : float
            The target ROI's mean signal in this volume.
        censored : bool
            Leave the volume out (the last value is repeated).

        Returns
        -------
        self

        Raises
        ------
        InputError
            If ``signal`` is not a single number.
        """
        check_is_fitted(self, "baseline_")
        check_shape("The target ROI's signal", np.shape(signal), ())
        if censored or not np.isfinite(signal):
            return self
        if self.baseline_:
            mean = sum(self.baseline_) / len(self.baseline_)
            self.psc_ = 100.0 * (signal - mean) / mean if mean else 0.0
            self.value_ = float(np.clip(0.5 + self.psc_ / (2.0 * self.psc_range), 0.0, 1.0))
        if self.is_baseline(index, tr):
            self.baseline_.append(float(signal))
        return self


class DecoderFeedback(Stage):
    """Turn the decoder's per-volume ``P(drug)`` into the feedback value in [0, 1].

    The bar shows how well the participant is doing in the block on screen (the block of
    the volume's acquisition, whose instruction the display shows):

    - drug-cue blocks (reappraise-drug, "Bring the bar DOWN"): the value is ``P(drug)``,
      so a less drug-like state lowers the bar;
    - every other block (savor-food, "Bring the bar UP"; neutral; fixation) and runs without
      a paradigm: the value is ``1 - P(drug)``, so a more food-like state raises the bar.

    ``P(drug)`` is first averaged over the last ``smoothing`` uncensored volumes. Censored
    (high-motion) volumes withhold the feedback: the last value is repeated (the event is
    flagged ``censored``) and the volume never enters the average. In blocks whose
    ``feedback`` is ``"intermittent"`` the value is held during the block and, on its last
    volume, becomes the block's mean over the volumes acquired at least ``hrf_delay``
    seconds after its onset.

    Parameters
    ----------
    paradigm : Paradigm or None
        The run's blocks; ``None``: every volume is scored as food-likeness.
    smoothing : int
        Volumes averaged (moving average).
    hrf_delay : float
        Seconds from a block's onset to its first volume counted by intermittent feedback.

    Attributes
    ----------
    value_ : float
        The latest feedback value in [0, 1] (0.5 until the first volume).
    window_ : collections.deque
        The last ``smoothing`` uncensored ``P(drug)`` values.
    block_, block_sum_, block_count_ : Block or None, float, int
        The current block, and the sum and count of its volumes counted by intermittent
        feedback.
    """

    def __init__(self, paradigm: Paradigm | None = None, smoothing: int = 3,
                 hrf_delay: float = 4.0) -> None:
        self.paradigm = paradigm
        self.smoothing = smoothing
        self.hrf_delay = hrf_delay

    def fit(self) -> DecoderFeedback:
        """Start with an empty window and a neutral value (0.5).

        Returns
        -------
        self

        Raises
        ------
        InputError
            If a parameter is out of range.
        """
        _check_paradigm(self)
        check_number(self, "smoothing", low=1, integer=True)
        check_number(self, "hrf_delay", low=0)
        self.window_ = deque(maxlen=self.smoothing)
        self.value_ = 0.5
        self.block_sum_ = 0.0
        self.block_count_ = 0
        self.block_ = None
        return self

    def partial_fit(self, index: int, tr: float, p_drug: float,
                    censored: bool = False) -> DecoderFeedback:
        """Update with one volume's ``P(drug)``; the feedback is then in ``value_``.

        Parameters
        ----------
        index : int
            Volume index in the run.
        tr : float
            Repetition time (s).
        p_drug : float
            The decoder's probability that this volume is drug-like.
        censored : bool
            Withhold the feedback for this volume (the last value is repeated).

        Returns
        -------
        self

        Raises
        ------
        InputError
            If ``p_drug`` is not a single number.
        """
        check_is_fitted(self, "window_")
        check_shape("P(drug)", np.shape(p_drug), ())
        block = self.paradigm.block_of_volume(index) if self.paradigm is not None else None
        if block is not self.block_:
            self.block_, self.block_sum_, self.block_count_ = block, 0.0, 0
        if censored or not np.isfinite(p_drug):
            return self
        self.window_.append(float(p_drug))
        if block is not None and block.feedback == "intermittent":
            if index * tr >= block.onset + self.hrf_delay - 1e-9:
                self.block_sum_ += float(p_drug)
                self.block_count_ += 1
            last = (index + 1) * tr >= block.onset + block.duration - 1e-9
            if last and self.block_count_:
                self.value_ = self.score(block, self.block_sum_ / self.block_count_)
            return self
        self.value_ = self.score(block, sum(self.window_) / len(self.window_))
        return self

    @staticmethod
    def score(block: Block | None, p_drug: float) -> float:
        """Return the bar height for ``p_drug`` during ``block`` (see the class docstring).

        Parameters
        ----------
        block : Block or None
            The block on screen; ``None`` without a paradigm.
        p_drug : float
            Probability of a drug-like state (clipped to [0, 1]).

        Returns
        -------
        float
            ``p_drug`` in drug-cue blocks, ``1 - p_drug`` otherwise.
        """
        p_drug = min(max(p_drug, 0.0), 1.0)
        if block is not None and block.cue == "drug":
            return p_drug
        return 1.0 - p_drug


def _check_paradigm(stage: FeedbackScaler | DecoderFeedback) -> None:
    """Refuse a ``paradigm`` parameter that is neither a :class:`Paradigm` nor ``None``."""
    if stage.paradigm is not None and not isinstance(stage.paradigm, Paradigm):
        raise InputError(f"{type(stage).__name__}: paradigm should be a Paradigm or None. "
                         f"Got {type(stage.paradigm).__name__}.")
