"""The participant display: shows the neurofeedback thermometer and the paradigm's instructions.

Layers, from the socket to the screen:

- :mod:`feedback_display.subscriber` -- one thread owns the SUB socket, decodes each message
  with :func:`rtserver.protocol.decode_feedback` and hands it over on a queue.
- :mod:`feedback_display.thermometer` -- pure geometry and animation of the bar (no window).
- :mod:`feedback_display.timing` -- frame pacing and frame-interval statistics (no window).
- :mod:`feedback_display.outputs` -- BIDS ``*_events.tsv`` and ``*_desc-display.json``, and
  screenshots, written on a background thread.
- :mod:`feedback_display.pictures` -- the cue picture folder, and the placeholder pictures
  the project draws itself.
- :mod:`feedback_display.screens` -- every PsychoPy stimulus (instructions, pictures,
  thermometer, rating scale), built before the run.
- :mod:`feedback_display.display` -- the window and the drawing loop: ratings, the wait for
  the trigger, the paradigm on a frame clock. See ``docs/display.md``.
- :mod:`feedback_display.cli` -- the ``feedback-display`` command.

Only :mod:`rtserver.protocol`, :mod:`rtserver.paradigm` and :mod:`rtserver.errors` are
imported from the server package, never its processing core.
"""

from rtserver.errors import DisplayError

__all__ = ["DisplayError"]
