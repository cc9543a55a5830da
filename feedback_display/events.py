"""The rows of the run's BIDS ``*_events.tsv``: what each row holds, and when it starts and ends.

The file has one row per thing shown: each block (its instruction is on screen for the
whole block), each cue picture, each feedback value, each period without feedback, each
intermittent result and each rating. ``*_events.json`` describes its columns
(:data:`EVENTS_COLUMN_DESCRIPTIONS`):

============= ============================================================================
onset         seconds from the run start (the trigger, or the server's first volume) to the
              flip of the first frame that showed the row; negative for the rating before
              the run.
duration      seconds until the flip that removed it.
trial_type    the block's ``trial_type`` (``fixation``, ``look_drug``, ``reappraise_drug``,
              ...), ``cue_drug`` / ``cue_food`` / ``cue_neutral`` for a picture,
              ``feedback``, ``feedback_unavailable`` (bar at rest, no feedback from the
              server), ``feedback_intermittent``, ``rating_before``, ``rating_after``,
              ``rating`` (a rating block in the run).
block         1-based number of the paradigm block.
frame         frame count since the run start at which the row was first shown.
volume        the 0-based volume whose feedback is shown (intermittent: ``first-last``).
value         the feedback value in [0, 1] (intermittent: the block's mean).
censored      1 if the value was censored for motion, else 0.
stim_file     the cue picture, relative to the picture folder.
response      the rating (0-100) once confirmed; ``n/a`` without a response.
response_time seconds from the rating scale's onset to the confirming key press.
instruction   the block's instruction text (block rows).
attempt       which start of the display wrote the row: 1, then 2, ... for each restart
              that rejoined the run (see :mod:`feedback_display.attempts`).
============= ============================================================================

Rows are grouped by *kind* (``block``, ``cue``, ``feedback``, ``intermittent``,
``rating``): at most one row of each kind is on screen at a time. :class:`EventRows` keeps
them from the frame that showed them to the frame that removed them, on flip times; nothing
here touches a file or a window (:class:`feedback_display.outputs.EventsLog` writes them).
"""

from __future__ import annotations

from typing import Any

from rtserver.paradigm import Block
from rtserver.protocol import FeedbackEvent

#: The columns of ``*_events.tsv``, in order.
EVENTS_COLUMNS = ("onset", "duration", "trial_type", "block", "frame", "volume", "value",
                  "censored", "stim_file", "response", "response_time", "instruction",
                  "attempt")

EVENTS_COLUMN_DESCRIPTIONS = {
    "onset": "Seconds from the run start (the scanner trigger, or the arrival of the server's "
             "first feedback event minus its volume index times the TR) to the flip of the "
             "first frame that showed this row. Negative for the rating before the run.",
    "duration": "Seconds from the row's first frame to the flip that removed it.",
    "trial_type": "The paradigm block's trial_type; cue_<category> for a cue picture; "
                  "feedback (a value shown by the thermometer), feedback_unavailable (no "
                  "feedback from the server: the bar rests at baseline in a neutral colour), "
                  "feedback_intermittent (a block's mean shown after it); rating_before, "
                  "rating_after (craving scale outside the scanned run), rating (a rating "
                  "block of the run).",
    "block": "1-based number of the paradigm block the row belongs to.",
    "frame": "Frame count since the run start at which the row was first shown.",
    "volume": "0-based volume index whose feedback is shown (intermittent rows: first-last "
              "volume of the block).",
    "value": "Feedback value in [0, 1] shown by the thermometer (0.5 is baseline); for "
             "intermittent rows the mean of the block's uncensored values.",
    "censored": "1 if the value was censored for motion (grey bar, 'Hold still').",
    "stim_file": "Cue picture shown, relative to the picture folder.",
    "response": "Rating on the 0-100 visual analogue scale, once confirmed; n/a without a "
                "confirmed response.",
    "response_time": "Seconds from the rating scale's first frame to the confirming key "
                     "press.",
    "instruction": "Instruction text shown during the block.",
    "attempt": "Which start of the display wrote the row: 1 for the first; a display "
               "restarted during the run appends its rows after the earlier ones (never "
               "rewriting them) as attempt 2, 3, ..., joining the run at the volume being "
               "acquired. Every attempt's onsets are seconds from the same run start (a "
               "restarted display takes it from the first feedback event it receives: "
               "its arrival minus its volume index times the TR).",
}

#: Order of rows with the same onset: the block first, then these kinds (by trial_type prefix).
_KIND_ORDER = {name: order for order, name in enumerate(("cue", "feedback", "rating"))}


def events_sidecar() -> dict[str, dict[str, str]]:
    """The BIDS ``*_events.json`` sidecar.

    Returns
    -------
    dict
        A ``Description`` (and ``Units`` for times) of every column.
    """
    units = {"onset": "s", "duration": "s", "response_time": "s"}
    return {column: {"Description": text, **({"Units": units[column]} if column in units
                                              else {})}
            for column, text in EVENTS_COLUMN_DESCRIPTIONS.items()}


# ------------------------------------------------------------------------- row contents
def block_row(block: Block, index: int, frame: int) -> dict[str, Any]:
    """The row of paradigm block ``index`` (0-based), first shown on ``frame``."""
    return {"trial_type": block.trial_type, "block": index + 1, "frame": frame,
            "instruction": block.instruction}


def cue_row(category: str, block_number: int, frame: int, stim_file: str) -> dict[str, Any]:
    """The row of a cue picture (``stim_file`` relative to the picture folder)."""
    return {"trial_type": f"cue_{category}", "block": block_number, "frame": frame,
            "stim_file": stim_file}


def feedback_row(event: FeedbackEvent, block_number: int, frame: int) -> dict[str, Any]:
    """The row of a feedback value the thermometer shows."""
    return {"trial_type": "feedback", "block": block_number, "frame": frame,
            "volume": event.volume, "value": event.value, "censored": event.censored}


def unavailable_row(block_number: int, frame: int) -> dict[str, Any]:
    """The row of a period without feedback (the bar at rest in its neutral colour)."""
    return {"trial_type": "feedback_unavailable", "block": block_number, "frame": frame}


def intermittent_row(block_number: int, frame: int, mean: float | None,
                     volumes: tuple[int, int]) -> dict[str, Any]:
    """The row of an intermittent result: block ``block_number``'s mean over ``volumes``.

    Parameters
    ----------
    block_number : int
        1-based number of the block whose mean is shown (the one before the current block).
    frame : int
        Frame the result is first shown on.
    mean : float or None
        The mean of the block's uncensored values; None without any.
    volumes : tuple of int
        First volume and one past the last volume of the block.
    """
    first, stop = volumes
    return {"trial_type": "feedback_intermittent", "block": block_number, "frame": frame,
            "value": mean, "volume": f"{first}-{stop - 1}"}


def rating_row(trial_type: str) -> dict[str, Any]:
    """The row of a rating scale outside the run (its answer is added when it ends)."""
    return {"trial_type": trial_type}


# ------------------------------------------------------------------------- cells and order
def cell(value: Any) -> str:
    """One TSV cell: ``n/a`` for None, ``1``/``0`` for booleans, 4 decimals for floats."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\t", " ").replace("\n", " ")


def row_cells(row: dict[str, Any]) -> list[str]:
    """The cells of a finished row in :data:`EVENTS_COLUMNS` order (missing ones ``n/a``)."""
    return [cell(row.get(column)) for column in EVENTS_COLUMNS]


def sort_key(cells: list[str]) -> tuple[float, int]:
    """Order of written rows: by onset; at equal onsets blocks, cues, feedback, ratings."""
    prefix = cells[2].split("_")[0]
    return float(cells[0]), _KIND_ORDER.get(prefix, -1)


def timed_row(row: dict[str, Any], t0: float) -> dict[str, Any]:
    """A finished row with ``onset`` and ``duration`` relative to the run start ``t0``.

    Parameters
    ----------
    row : dict
        Row contents with absolute ``t_onset`` and ``t_end`` (flip times, seconds).
    t0 : float
        The run start on the same clock.

    Returns
    -------
    dict
        The contents without ``t_onset`` and ``t_end``; a negative span gives duration 0.
    """
    timed = {key: value for key, value in row.items() if key not in ("t_onset", "t_end")}
    onset = row["t_onset"] - t0
    timed["duration"] = max(0.0, row["t_end"] - t0 - onset)
    timed["onset"] = onset
    return timed


# ------------------------------------------------------------------------- rows on screen
class EventRows:
    """The rows on screen, from the flip that shows them to the flip that removes them.

    Drawing a frame queues changes (:meth:`show`, :meth:`remove`); :meth:`flipped` applies
    them at the frame's flip time and returns the rows that ended. Rows that end before the
    run start (the rating before it) are held until :meth:`start` gives the start time.
    """

    def __init__(self) -> None:
        self.t0: float | None = None
        self._pending: list[tuple[str, dict[str, Any] | None]] = []
        self._open: dict[str, dict[str, Any]] = {}
        self._early: list[dict[str, Any]] = []

    def show(self, kind: str, row: dict[str, Any]) -> None:
        """Start ``row`` at the next flip, ending the row of its kind on screen."""
        self._pending.append((kind, row))

    def remove(self, kind: str) -> None:
        """End the row of ``kind`` at the next flip."""
        self._pending.append((kind, None))

    def is_open(self, kind: str) -> bool:
        """True if a row of ``kind`` is on screen."""
        return kind in self._open

    def annotate(self, kind: str, fields: dict[str, Any]) -> None:
        """Add ``fields`` to the row of ``kind`` on screen (none: nothing to do)."""
        row = self._open.get(kind)
        if row is not None:
            row.update({key: value for key, value in fields.items() if key != "trial_type"})

    def flipped(self, t_flip: float) -> list[dict[str, Any]]:
        """Apply the queued changes at a flip.

        Returns
        -------
        list of dict
            The rows that ended, timed (:func:`timed_row`); none before :meth:`start`.
        """
        ended: list[dict[str, Any]] = []
        for kind, row in self._pending:
            ended += self._end(kind, t_flip)
            if row is not None:
                self._open[kind] = {**row, "t_onset": t_flip}
        self._pending.clear()
        return ended

    def start(self, t0: float) -> list[dict[str, Any]]:
        """Set the run start; return the rows that ended before it, timed."""
        self.t0 = t0
        early = [timed_row(row, t0) for row in self._early]
        self._early.clear()
        return early

    def end_at_next_flip(self) -> None:
        """End every row at the next flip; rows queued for it are never shown."""
        self._pending = [(kind, None) for kind, _ in self._pending]
        self._pending += [(kind, None) for kind in self._open]

    def close(self, t_end: float) -> list[dict[str, Any]]:
        """End every row on screen at ``t_end``, drop queued changes; return the ended rows."""
        ended: list[dict[str, Any]] = []
        for kind in list(self._open):
            ended += self._end(kind, t_end)
        self._pending.clear()
        return ended

    def _end(self, kind: str, t_end: float) -> list[dict[str, Any]]:
        """End the row of ``kind``, if any; it is returned once the start is known."""
        row = self._open.pop(kind, None)
        if row is None:
            return []
        row["t_end"] = t_end
        if self.t0 is None:
            self._early.append(row)
            return []
        return [timed_row(row, self.t0)]
