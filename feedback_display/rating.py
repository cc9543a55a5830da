"""The rating scale's state: where its marker is, and the answer once confirmed.

A visual analogue scale from 0 to 100 whose marker starts at 50. Keys move the marker by a
fixed step (clipped to the scale's ends) until a confirm key records the answer and its
response time, measured from the flip of the scale's first frame. Key presses time-stamped
before that flip, or after the answer, are ignored. Drawing the scale is
:class:`feedback_display.screens.RatingScaleDisplay`'s job; nothing here needs a window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Where the marker starts, and the scale's ends.
START_POSITION = 50.0
SCALE_MIN, SCALE_MAX = 0.0, 100.0


@dataclass(frozen=True)
class RatingKeys:
    """The keys that answer a rating, and how far one press moves the marker.

    Parameters
    ----------
    left, right, confirm : tuple of str
        Keys moving the marker toward 0, toward 100, and confirming the answer.
    step : float
        Scale points one press moves the marker.
    """

    left: tuple[str, ...] = ("left", "1")
    right: tuple[str, ...] = ("right", "2")
    confirm: tuple[str, ...] = ("space", "return", "3")
    step: float = 5.0


class RatingScale:
    """One rating on screen, from its first frame to its answer.

    Parameters
    ----------
    trial_type : str
        ``rating_before``, ``rating_after`` or ``rating`` (a rating block of the run).
    keys : RatingKeys
        The answering keys.

    Attributes
    ----------
    position : float
        Where the marker is (0-100).
    confirmed : bool
        True once a confirm key was pressed.
    t_onset : float or None
        Flip time of the scale's first frame; None until it is shown.
    response_time : float or None
        Seconds from ``t_onset`` to the confirming key press.
    interrupted : bool
        True if the run started before an answer (the rating before it is abandoned).

    Examples
    --------
    >>> scale = RatingScale("rating_before", RatingKeys(step=5.0))
    >>> scale.shown(10.0)
    True
    >>> scale.press([("right", 10.5), ("right", 10.6), ("space", 11.0)])
    >>> scale.response, scale.response_time
    (60.0, 1.0)
    """

    def __init__(self, trial_type: str, keys: RatingKeys | None = None) -> None:
        self.trial_type = trial_type
        self.keys = keys if keys is not None else RatingKeys()
        self.position = START_POSITION
        self.confirmed = False
        self.t_onset: float | None = None
        self.response_time: float | None = None
        self.interrupted = False

    @property
    def response(self) -> float | None:
        """The confirmed answer, or None."""
        return self.position if self.confirmed else None

    def shown(self, t_flip: float) -> bool:
        """Record a flip showing the scale; True if it was the first one (the onset)."""
        if self.t_onset is not None:
            return False
        self.t_onset = t_flip
        return True

    def press(self, keys: Iterable[tuple[str, float]]) -> None:
        """Apply key presses.

        Parameters
        ----------
        keys : iterable of (str, float)
            Key names and their time stamps (same clock as the flip times), in order.
        """
        for key, t_key in keys:
            if self.confirmed or self.t_onset is None or t_key < self.t_onset:
                continue  # answered, or pressed before the scale was on screen
            if key in self.keys.left:
                self.position = max(SCALE_MIN, self.position - self.keys.step)
            elif key in self.keys.right:
                self.position = min(SCALE_MAX, self.position + self.keys.step)
            elif key in self.keys.confirm:
                self.confirmed = True
                self.response_time = max(0.0, t_key - self.t_onset)

    def answer(self) -> dict[str, Any]:
        """The answer's columns of the events row: ``response`` and ``response_time``."""
        return {"response": self.response, "response_time": self.response_time}

    def record(self) -> dict[str, Any]:
        """The rating's entry in the run summary (``ratings`` of ``*_desc-display.json``)."""
        return {
            "trial_type": self.trial_type,
            "response": self.response,
            "response_time": self.response_time,
            "final_position": self.position,
            "interrupted_by_run_start": self.interrupted,
        }

    def describe(self) -> str:
        """``60`` once answered, else ``no response`` (for the log)."""
        return f"{self.position:g}" if self.confirmed else "no response"
