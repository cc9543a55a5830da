"""The participant display: shows the neurofeedback thermometer and the paradigm's instructions.

Layers, from the socket to the screen:

- :mod:`feedback_display.subscriber` -- one thread owns the SUB socket, decodes each message
  with :func:`rtserver.protocol.decode_feedback` and hands it over on a queue.
- :mod:`feedback_display.thermometer` -- pure geometry and animation of the bar (no window).
- :mod:`feedback_display.timing` -- frame pacing and frame-interval statistics (no window).
- :mod:`feedback_display.outputs` -- BIDS ``*_events.tsv`` and ``*_desc-display.json``, and
  screenshots, written on a background thread.
- :mod:`feedback_display.display` -- the PsychoPy window and the drawing loop.
- :mod:`feedback_display.cli` -- the ``feedback-display`` command.

Only :mod:`rtserver.protocol`, :mod:`rtserver.paradigm` and :mod:`rtserver.errors` are
imported from the server package, never its processing core.
"""

from rtserver.errors import RtfmriError


class DisplayError(RtfmriError, RuntimeError):
    """The display could not be set up (no window, no screen, unwritable output folder)."""


__all__ = ["DisplayError"]
