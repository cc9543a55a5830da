"""How the display runs: window, timing, keys and outputs, checked before any window opens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feedback_display.rating import RatingKeys
from feedback_display.timing import NOMINAL_REFRESH_HZ, PACING_MODES
from rtserver import bids, protocol
from rtserver.errors import ConfigError, InputError

#: What can start the run: the trigger key, the server's first feedback event, or either.
START_MODES = ("auto", "trigger", "server")


@dataclass(frozen=True)
class DisplayOptions:
    """How the display runs.

    Parameters
    ----------
    fullscreen : bool
        Full screen (the default for participants) or a window of ``window_size``.
    window_size : tuple of int
        Size of the window when not full screen.
    refresh_hz : float
        Nominal refresh rate: the frame rate without vsync; with vsync the rate is measured.
        Frame intervals over 1.5 periods count as dropped frames.
    animation_frames : int
        Frames the bar takes to move to a new value (9 = 150 ms at 60 Hz).
    timeout : float
        Seconds to wait for the run to start (trigger or first event) before giving up.
    screenshots : Path or None
        Folder for PNGs of what was shown (see
        :func:`feedback_display.outputs.screenshot_name`), or None.
    out : Path or None
        Folder for ``*_events.tsv``, ``*_events.json`` and ``*_desc-display.json``.
    subject, run : str, int
        BIDS entities of the output file names (the subject label without ``sub-``).
    pacing : {"auto", "vsync", "software"}
        See :class:`feedback_display.timing.FramePacer`.
    start_on : {"auto", "trigger", "server"}
        What starts the run: the trigger key, the server's first feedback event, or either.
    trigger_keys : tuple of str
        Keys the scanner's trigger arrives as (PsychoPy key names: ``"5"``, ``"t"``).
    left_keys, right_keys, confirm_keys : tuple of str
        Keys that move the rating marker and confirm the rating (keyboard or button box).
    rating_step : float
        Scale points (of 100) one key press moves the marker.
    stale_after : float or None
        Seconds without feedback after which the bar shows the neutral state; None: 2.5 TR.
    skip_ratings : bool
        Leave out the ratings before and after the run (development).
    pictures : Path or None
        Cue picture folder, overriding the paradigm's; None: the paradigm's, else the
        shipped placeholders.
    results : str or None
        The server's results endpoint, asked before the run whether volumes were already
        processed (then the display rejoins the run: see :mod:`feedback_display.rejoin`);
        None: not asked.
    curve : Path or None
        Folder of CURVE certificates for the feedback channel (``server.key`` and
        ``client_display.key_secret``); None: no CURVE.

    Raises
    ------
    ConfigError
        If a value is out of range, the subject is not a BIDS label, or a key has two roles.
    """

    fullscreen: bool = True
    window_size: tuple[int, int] = (1024, 768)
    refresh_hz: float = NOMINAL_REFRESH_HZ
    animation_frames: int = 9
    timeout: float = 120.0
    screenshots: Path | None = None
    out: Path | None = None
    subject: str = "01"
    run: int = 1
    pacing: str = "auto"
    start_on: str = "auto"
    trigger_keys: tuple[str, ...] = ("5",)
    left_keys: tuple[str, ...] = ("left", "1")
    right_keys: tuple[str, ...] = ("right", "2")
    confirm_keys: tuple[str, ...] = ("space", "return", "3")
    rating_step: float = 5.0
    stale_after: float | None = None
    skip_ratings: bool = False
    pictures: Path | None = None
    results: str | None = None
    curve: Path | None = None

    def __post_init__(self) -> None:
        """Check every value (see Raises)."""
        self._check_values()
        _check_subject(self.subject)
        self._check_keys()

    @property
    def rating_keys(self) -> RatingKeys:
        """The keys (and step) of the rating scale."""
        return RatingKeys(left=self.left_keys, right=self.right_keys,
                          confirm=self.confirm_keys, step=self.rating_step)

    def _check_values(self) -> None:
        """Ranges and choices."""
        if not self.timeout > 0:
            raise ConfigError(f"'timeout' should be > 0 seconds. Got {self.timeout!r}.")
        if isinstance(self.run, bool) or not isinstance(self.run, int) or self.run < 1:
            raise ConfigError(f"'run' should be a positive integer. Got {self.run!r}.")
        if self.start_on not in START_MODES:
            raise ConfigError(f"'start_on' should be one of {START_MODES}. "
                              f"Got {self.start_on!r}.")
        if self.pacing not in PACING_MODES:
            raise ConfigError(f"'pacing' should be one of {PACING_MODES}. Got {self.pacing!r}.")
        if not self.refresh_hz > 0:
            raise ConfigError(f"'refresh_hz' should be > 0. Got {self.refresh_hz!r}.")
        if (isinstance(self.animation_frames, bool) or not isinstance(self.animation_frames, int)
                or self.animation_frames < 1):
            raise ConfigError(f"'animation_frames' should be a positive integer. "
                              f"Got {self.animation_frames!r}.")
        if self.stale_after is not None and not self.stale_after > 0:
            raise ConfigError(f"'stale_after' should be > 0 seconds. Got {self.stale_after!r}.")
        if not 0 < self.rating_step <= 100:
            raise ConfigError(f"'rating_step' should be in (0, 100]. Got {self.rating_step!r}.")
        if self.results is not None and not protocol.is_endpoint(self.results):
            raise ConfigError(f"'results' should be a ZeroMQ endpoint such as "
                              f"{protocol.DEFAULT_RESULTS}. Got {self.results!r}.")

    def _check_keys(self) -> None:
        """Every role has a key; no key has two roles (Escape quits)."""
        roles = {"trigger": self.trigger_keys, "left": self.left_keys,
                 "right": self.right_keys, "confirm": self.confirm_keys}
        seen = {"escape": "quit"}
        for role, keys in roles.items():
            if not keys:
                raise ConfigError(f"At least one {role} key is needed. Got {keys!r}.")
            for key in keys:
                if key in seen:
                    raise ConfigError(f"Key {key!r} is both a {seen[key]} key and a {role} "
                                      f"key.")
                seen[key] = role


def _check_subject(subject: str) -> None:
    """The subject is a BIDS label, given without its ``sub-`` prefix."""
    try:
        checked = bids.label(subject, "sub")
    except InputError:
        raise ConfigError(f"'subject' should be a BIDS label (letters and digits only). "
                          f"Got {subject!r}.") from None
    if checked != subject:
        raise ConfigError(f"'subject' should be the label without 'sub-' ({checked!r}). "
                          f"Got {subject!r}.")
