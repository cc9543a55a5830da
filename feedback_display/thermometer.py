"""Geometry and animation of the feedback thermometer, free of any window.

The drawing code (:class:`feedback_display.screens.ThermometerDisplay`) and the tests use the
same numbers from here, so "the bar is ``value * height`` pixels high" is defined once.

Coordinates are PsychoPy ``"pix"`` units: the origin is the centre of the window, y points up.
With whole-pixel sizes every edge falls on a pixel boundary, so a filled rectangle covers
exactly ``fill_height`` rows of pixels (no antialiasing, nothing to round by eye).
"""

from __future__ import annotations

from dataclasses import dataclass

from rtserver.errors import ConfigError

#: Value at which the baseline marker is drawn.
BASELINE_VALUE = 0.5


@dataclass(frozen=True)
class ThermometerGeometry:
    """Where the thermometer's parts are, in pixels.

    Parameters
    ----------
    width, height : int
        Inner size of the tube (the area the fill can cover). Even numbers keep the tube
        centred on the window's pixel grid.
    border : int
        Thickness of the outline drawn around the tube.
    centre : tuple of int
        Centre of the tube.
    marker_length : int
        Length of each of the two baseline ticks, drawn outside the tube left and right, so
        they never cover the fill.

    Raises
    ------
    ConfigError
        If a size is not a positive whole number, or the tube's width or height is odd.
    """

    width: int = 120
    height: int = 500
    border: int = 3
    centre: tuple[int, int] = (0, 0)
    marker_length: int = 22

    def __post_init__(self) -> None:
        """Check the sizes (see Raises)."""
        for name in ("width", "height", "border", "marker_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name!r} should be a positive whole number of pixels. "
                                  f"Got {value!r}.")
        if self.width % 2 or self.height % 2:
            raise ConfigError(f"Tube width and height should be even (to sit on the pixel "
                              f"grid). Got {self.width} x {self.height}.")

    @property
    def bottom(self) -> int:
        """The y of the tube's inner bottom edge (where the fill starts)."""
        return self.centre[1] - self.height // 2

    @property
    def top(self) -> int:
        """The y of the tube's inner top edge."""
        return self.centre[1] + self.height // 2

    def fill_height(self, value: float) -> int:
        """Height in pixels of the fill for a feedback value.

        Parameters
        ----------
        value : float
            Feedback in [0, 1]; values outside are clipped.

        Returns
        -------
        int
            ``round(value * height)``: 0 for 0.0, ``height`` for 1.0.
        """
        clipped = min(1.0, max(0.0, float(value)))
        return round(clipped * self.height)

    def fill_rect(self, value: float) -> tuple[float, float, int, int]:
        """Centre x, centre y, width and height of the fill rectangle for ``value``.

        The rectangle is anchored at the tube's bottom; its height may be 0.
        """
        height = self.fill_height(value)
        return (float(self.centre[0]), self.bottom + height / 2, self.width, height)

    @property
    def marker_y(self) -> int:
        """The y of the baseline marker (the fill's top at :data:`BASELINE_VALUE`)."""
        return self.bottom + self.fill_height(BASELINE_VALUE)


class BarAnimator:
    """Moves the displayed value linearly toward a target over a fixed number of frames.

    Parameters
    ----------
    n_frames : int
        Frames a move takes (9 frames = 150 ms at 60 Hz). The last frame lands exactly on
        the target, not merely close to it.
    initial : float
        Value shown before any target is set.

    Raises
    ------
    ConfigError
        If ``n_frames`` is not a positive integer.

    Examples
    --------
    >>> bar = BarAnimator(n_frames=2, initial=0.0)
    >>> bar.set_target(1.0)
    >>> bar.step(), bar.step(), bar.settled
    (0.5, 1.0, True)
    """

    def __init__(self, n_frames: int = 9, initial: float = 0.5) -> None:
        if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
            raise ConfigError(f"'n_frames' should be a positive integer. Got {n_frames!r}.")
        self.n_frames = n_frames
        self._start = float(initial)
        self._target = float(initial)
        self._value = float(initial)
        self._frame = n_frames

    @property
    def value(self) -> float:
        """The value drawn on the latest frame."""
        return self._value

    @property
    def target(self) -> float:
        """The value the bar is moving to."""
        return self._target

    @property
    def settled(self) -> bool:
        """True once the bar shows the target exactly."""
        return self._frame >= self.n_frames

    def set_target(self, target: float) -> None:
        """Start a move from the value shown now to ``target``.

        A target equal to the value shown is reached at once (the next :meth:`step`).
        """
        self._start = self._value
        self._target = float(target)
        self._frame = 0 if self._target != self._value else self.n_frames

    def step(self) -> float:
        """Advance one frame and return the value to draw on it."""
        if self._frame < self.n_frames:
            self._frame += 1
        if self._frame >= self.n_frames:
            self._value = self._target
        else:
            fraction = self._frame / self.n_frames
            self._value = self._start + (self._target - self._start) * fraction
        return self._value
