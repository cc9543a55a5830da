"""The PsychoPy window: opening it, building the stimuli, key presses, flips, screenshots.

The only module (with :mod:`feedback_display.screens`) that talks to PsychoPy, and it
imports PsychoPy only when a window opens, so everything else is checked and tested without
a screen. Key presses and flips are reported on the monotonic clock
(:func:`time.monotonic`), the clock of the feedback events' arrival times.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from feedback_display.screens import BACKGROUND, Screens
from feedback_display.timing import FramePacer
from rtserver.errors import DisplayError
from rtserver.paradigm import Paradigm

log = logging.getLogger(__name__)

#: Windows lower than this (pixels) may not fit the thermometer and the texts.
MIN_HEIGHT = 700


class DisplayWindow:
    """One PsychoPy window and its stimuli.

    Parameters
    ----------
    fullscreen : bool
        Full screen, or a window of ``size`` with the mouse visible.
    size : tuple of int
        Size of the window when not full screen.
    """

    def __init__(self, fullscreen: bool = True, size: tuple[int, int] = (1024, 768)) -> None:
        self.fullscreen = fullscreen
        self.requested_size = size
        self.screens: Screens | None = None
        self._win: Any = None
        self._event_module: Any = None
        self._offset = 0.0

    @property
    def is_open(self) -> bool:
        """True while the window is open."""
        return self._win is not None

    @property
    def size(self) -> list[int] | None:
        """The window's size in pixels (None when closed)."""
        return [int(v) for v in self._win.size] if self._win is not None else None

    def open(self) -> Any:
        """Open the window.

        Returns
        -------
        psychopy.visual.Window
            The window, in ``"pix"`` units.

        Raises
        ------
        DisplayError
            If no window can be opened (no screen, no OpenGL).
        """
        try:
            from psychopy import logging as psychopy_logging

            psychopy_logging.console.setLevel(psychopy_logging.CRITICAL)
            from psychopy import visual

            self._win = visual.Window(
                size=self.requested_size, fullscr=self.fullscreen, units="pix",
                color=BACKGROUND, colorSpace="rgb255", winType="pyglet",
                allowGUI=not self.fullscreen, checkTiming=False, waitBlanking=True,
                gammaErrorPolicy="ignore", autoLog=False,
            )
        except Exception as exc:  # pyglet and OpenGL raise many types; say it in one line
            raise DisplayError(f"Cannot open a window: {type(exc).__name__}: {exc}".rstrip()
                               + ". Is a screen available (DISPLAY set, or xvfb-run)?") from None
        self._win.mouseVisible = not self.fullscreen
        return self._win

    def build(self, paradigm: Paradigm, hint: str, pictures: dict[str, list[Any]]) -> Screens:
        """Build (and pre-draw) every stimulus of a run, pictures included.

        Parameters
        ----------
        paradigm : Paradigm
            Its instructions and rating texts.
        hint : str
            How to answer a rating (which keys).
        pictures : dict of str to list
            The cue picture files of each category.

        Returns
        -------
        Screens
            The stimuli, also kept as :attr:`screens`.
        """
        height = int(self._win.size[1])
        if height < MIN_HEIGHT:
            log.warning("the window is %d px high; the thermometer and texts may not fit",
                        height)
        ratings = paradigm.ratings
        instructions = sorted({b.instruction or b.condition.upper() for b in paradigm.blocks})
        self.screens = Screens(self._win, instructions, pictures,
                               (ratings.question, ratings.low_label, ratings.high_label, hint))
        self.screens.prepare()
        return self.screens

    def close(self) -> None:
        """Close the window."""
        if self._win is not None:
            self._win.close()
            self._win = None

    def start_keyboard(self) -> None:
        """Start taking key presses: note the PsychoPy clock's offset, drop earlier keys."""
        from psychopy import core
        from psychopy import event as psychopy_event

        self._event_module = psychopy_event
        self._offset = time.monotonic() - core.getTime()
        psychopy_event.clearEvents()

    def keys(self) -> list[tuple[str, float]]:
        """Key presses since the last call: names and times (monotonic clock)."""
        return [(key, t_key + self._offset)
                for key, t_key in self._event_module.getKeys(timeStamped=True)]

    def flip(self, pacer: FramePacer) -> float:
        """Pace (software pacing), flip; return when the flip returned (monotonic clock)."""
        # Like a vsync'd flip, the software pacer waits after drawing, so a slow draw
        # (a screenshot) is absorbed by the wait instead of delaying the flip.
        pacer.wait()
        self._win.flip()
        t_flip = time.monotonic()
        pacer.flipped(t_flip)
        return t_flip

    def grab(self) -> Any:
        """The frame drawn so far (the back buffer), as a PIL image."""
        image = self._win.getMovieFrame(buffer="back")
        frames = self._win.movieFrames
        if frames and frames[-1] is image:
            frames.pop()  # getMovieFrame keeps every frame; we only want this one
        return image
