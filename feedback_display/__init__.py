"""The participant display: shows the neurofeedback thermometer and the paradigm's instructions.

Layers, from the socket to the screen. Everything above the window layer is pure (given
messages, times and frame numbers; no window, no clock of its own) and is tested without a
screen:

- :mod:`feedback_display.subscriber` -- one thread owns the SUB socket, decodes each message
  with :func:`rtserver.protocol.decode_feedback` and hands it over on a queue.
- :mod:`feedback_display.options` -- :class:`~feedback_display.options.DisplayOptions` and
  its checks, all made before a window opens.
- :mod:`feedback_display.schedule` -- the paradigm on a frame clock: block and cue onsets
  in whole frames, picture cycling, which block and result frame ``n`` shows,
  realignment to volumes ahead of the schedule.
- :mod:`feedback_display.rejoin` -- what starts the run, and where a display joining a run
  already going lands on its clock.
- :mod:`feedback_display.attempts` -- what earlier starts of the display left in the
  output folder: this attempt's number, whether it rejoins the run.
- :mod:`feedback_display.feedback_state` -- the feedback received (latest value, censored,
  staleness, block means) and what the bar shows from it.
- :mod:`feedback_display.rating` -- the rating scale's state (keys, answer, response time).
- :mod:`feedback_display.thermometer` -- geometry and animation of the bar.
- :mod:`feedback_display.timing` -- frame pacing and frame-interval statistics.
- :mod:`feedback_display.events` -- the rows of ``*_events.tsv``, from the flip that shows
  them to the flip that removes them.
- :mod:`feedback_display.summary` -- the run summary, ``*_desc-display.json``.
- :mod:`feedback_display.outputs` -- the files: events, JSON and screenshots, written on a
  background thread; an earlier attempt's are appended to, never replaced.
- :mod:`feedback_display.pictures` -- the cue picture folder, and the placeholder pictures
  the project draws itself (package data).
- :mod:`feedback_display.screens` -- every PsychoPy stimulus (instructions, pictures,
  thermometer, rating scale), built before the run.
- :mod:`feedback_display.window` -- the PsychoPy window: key presses, flips, screenshots.
- :mod:`feedback_display.display` -- the drawing loop wiring them together: ratings, the
  wait for the trigger, the paradigm frame by frame. See ``docs/display.md``.
- :mod:`feedback_display.cli` -- the ``feedback-display`` command.

Only :mod:`rtserver.protocol`, :mod:`rtserver.paradigm`, :mod:`rtserver.errors` and
:mod:`rtserver.bids` are imported from the server package, never its processing core.
"""

from rtserver.errors import DisplayError

__all__ = ["DisplayError"]
