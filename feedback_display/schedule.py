"""The paradigm on a frame clock: which block, cue picture and result frame ``n`` shows.

Frame ``n`` is meant to flip ``n`` frame periods after the run's start. Block onsets, cue
picture changes and the end of an intermittent result are whole frame counts
(``round(seconds / period)``); the frame drawn next takes the number of the time its flip is
expected at, so frames count up one by one, and a late frame makes the count skip the
frames it lasted rather than fall behind the scanner.

- :class:`FrameSchedule` -- the frame count, block onsets in frames, the run's last frame,
  and realignment to volumes arriving ahead of the schedule (accelerated replays).
- :class:`CueCycle` -- one cue picture every ``cue_seconds``; each category's pictures cycle
  in file-name order across the run's blocks.
- :class:`Timeline` -- as frames go by: the block entered, the picture changed, an
  intermittent result shown and taken down, and the events rows each of these opens. Its
  first frame may be any frame of the run (a display that rejoins a running run): it
  enters the block running then, showing the picture the run shows then.

Nothing here reads a clock or draws: times and frame numbers are given.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feedback_display.events import block_row, cue_row, intermittent_row
from rtserver.paradigm import Block, Paradigm

log = logging.getLogger(__name__)

#: A volume this many TRs ahead of the schedule moves it forward (server-started runs).
REALIGN_TRS = 1.5


def frames_of(seconds: float, period: float) -> int:
    """Whole frames of ``period`` seconds closest to ``seconds``; at least 1."""
    return max(1, round(seconds / period))


def block_volumes(block: Block, tr: float) -> tuple[int, int]:
    """The first volume acquired in ``block`` and the one after its last."""
    return round(block.onset / tr), round((block.onset + block.duration) / tr)


class FrameSchedule:
    """The run's frame count, anchored at its start.

    Parameters
    ----------
    paradigm : Paradigm
        The run's blocks and TR.
    period : float
        Frame period (seconds): nominal, or measured before the run with vsync.
    t0 : float
        The run start (seconds, the clock of the flip times).

    Attributes
    ----------
    frame : int
        Number of the frame drawn last (-1 before the first).
    t0 : float
        Start of the schedule: the run start, moved earlier by each realignment.
    block_frames : list of int
        Frame of each block's onset.
    end_frame : int
        Frame of the paradigm's end (its first frame after the last block).
    n_realignments : int
        Times the schedule moved forward to a volume ahead of it.
    """

    def __init__(self, paradigm: Paradigm, period: float, t0: float) -> None:
        self.paradigm = paradigm
        self.period = period
        self.t0 = t0
        self.block_frames = [round(block.onset / period) for block in paradigm.blocks]
        self.end_frame = round(paradigm.duration / period)
        self.frame = -1
        self.n_realignments = 0

    def frames_of(self, seconds: float) -> int:
        """Whole frames closest to ``seconds``; at least 1."""
        return frames_of(seconds, self.period)

    def frame_of_volume(self, volume: int) -> int:
        """The frame of a volume's acquisition (its index times the TR)."""
        return round(volume * self.paradigm.tr / self.period)

    def advance(self, t_next_flip: float) -> int:
        """Number the frame about to be drawn, whose flip is expected at ``t_next_flip``.

        Returns
        -------
        int
            The frame whose time that is, but never less than the previous frame's number
            (nor 0): frames normally count up one by one, and skip the frames a late one
            lasted.
        """
        due = round((t_next_flip - self.t0) / self.period)
        self.frame = max(self.frame, due, 0)
        return self.frame

    def realign(self, volume: int) -> bool:
        """Move the schedule forward to ``volume`` if it is over 1.5 TR ahead of it.

        The frame drawn next is then the volume's frame. For server-started runs only: a
        replay faster than real time (the display follows the volumes).

        Returns
        -------
        bool
            True if the schedule moved.
        """
        frame = self.frame_of_volume(volume)
        if (frame - self.frame) * self.period <= REALIGN_TRS * self.paradigm.tr:
            return False
        if self.n_realignments == 0:
            log.warning("volumes arrive faster than real time (an accelerated replay?); "
                        "the paradigm follows the volumes")
        self.n_realignments += 1
        self.t0 -= (frame - self.frame) * self.period
        self.frame = frame - 1  # drawn next
        return True

    def last_frame(self, n_volumes: int | None = None) -> int:
        """The frame that ends the run: the paradigm's end, or that of ``n_volumes`` volumes.

        Parameters
        ----------
        n_volumes : int or None
            Volumes the server announced at the end of the run; None before it does.
        """
        if n_volumes is None:
            return self.end_frame
        return min(self.end_frame, self.frame_of_volume(n_volumes))

    def block_at(self, frame: int) -> int:
        """Index of the block frame ``frame`` belongs to (-1 before the first block)."""
        return bisect.bisect_right(self.block_frames, frame) - 1

    def cue_slot(self, block_index: int, frame: int) -> int:
        """Which picture of its block frame ``frame`` shows: 0, 1, ... one per ``cue_seconds``."""
        per_picture = self.frames_of(self.paradigm.display.cue_seconds)
        return (frame - self.block_frames[block_index]) // per_picture

    def pictures_before(self, frame: int) -> dict[str, int]:
        """Cue pictures of each category a run shows before the one of frame ``frame``.

        Counted as if every frame from the run's first had been drawn: whole blocks before
        the frame's, and the slots of its own block before the frame's slot. A display
        that joins the run at ``frame`` starts each category's cycle there, so it shows
        the picture the run shows then.
        """
        shown: dict[str, int] = {}
        index = self.block_at(frame)
        stops = [*self.block_frames[1:], self.end_frame]
        for number, block in enumerate(self.paradigm.blocks[:max(index + 1, 0)]):
            if block.cue == "none" or block.condition == "rating":
                continue
            if number < index:
                n_frames = stops[number] - self.block_frames[number]
                slots = -(-n_frames // self.frames_of(self.paradigm.display.cue_seconds))
            else:
                slots = self.cue_slot(number, frame)
            shown[block.cue] = shown.get(block.cue, 0) + slots
        return shown


@dataclass(frozen=True)
class Cue:
    """A cue picture to show.

    Its category, its index among the category's pictures, and its file relative to the
    picture folder.
    """

    category: str
    index: int
    stim_file: str


class CueCycle:
    """Each category's pictures in turn, across the run's blocks.

    Parameters
    ----------
    pictures : mapping of str to sequence of str
        Each category's picture files (relative to the picture folder), in showing order.

    Attributes
    ----------
    current : Cue or None
        The picture on screen; None at a block's start, before its first picture.
    """

    def __init__(self, pictures: Mapping[str, Sequence[str]]) -> None:
        self._pictures = pictures
        self._counters = dict.fromkeys(pictures, 0)
        self.current: Cue | None = None
        self._slot = -1

    def reset(self) -> None:
        """A new block: its first frame shows the category's next picture."""
        self.current = None

    def skip(self, shown: Mapping[str, int]) -> None:
        """Count ``shown[category]`` pictures of each category as already shown."""
        for category, n_shown in shown.items():
            if category in self._counters:
                self._counters[category] += n_shown

    def update(self, category: str, slot: int) -> Cue | None:
        """The picture of ``slot`` of a block of ``category``.

        Returns
        -------
        Cue or None
            The category's next picture if the slot changed (or the block just began);
            None if the picture on screen stays.
        """
        if self.current is not None and slot == self._slot:
            return None
        files = self._pictures[category]
        index = self._counters[category] % len(files)
        self._counters[category] += 1
        self.current, self._slot = Cue(category, index, files[index]), slot
        return self.current


@dataclass(frozen=True)
class Intermittent:
    """An intermittent result on screen.

    Until ``end_frame``, the ``mean`` of the block before (None without uncensored
    values), with that block's ``target``.
    """

    end_frame: int
    mean: float | None
    target: str


@dataclass
class FrameUpdate:
    """What changed on a frame of the run.

    Attributes
    ----------
    entered : Block or None
        The block entered on this frame; None within a block.
    changes : list of (str, dict or None)
        Events rows to start (a row) or end (None) at the frame's flip, by kind.
    shots : list of str
        Screenshots to take of the frame (names without ``.png``).
    """

    entered: Block | None = None
    changes: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    shots: list[str] = field(default_factory=list)


class Timeline:
    """The block, cue picture and intermittent result as the run's frames go by.

    Parameters
    ----------
    schedule : FrameSchedule
        The run's frame clock.
    pictures : mapping of str to sequence of str
        Each category's picture files (see :class:`CueCycle`).

    Attributes
    ----------
    block_index : int
        Index of the current block (-1 before the first frame).
    cues : CueCycle
        The cue pictures; ``cues.current`` is the one on screen.
    intermittent : Intermittent or None
        The intermittent result on screen, if any.
    """

    def __init__(self, schedule: FrameSchedule, pictures: Mapping[str, Sequence[str]]) -> None:
        self.schedule = schedule
        self.blocks = schedule.paradigm.blocks
        self.block_index = -1
        self.cues = CueCycle(pictures)
        self.intermittent: Intermittent | None = None

    @property
    def block(self) -> Block:
        """The current block."""
        return self.blocks[self.block_index]

    def update(self, frame: int, block_mean: Callable[[int, int], float | None]
               ) -> FrameUpdate:
        """Move to frame ``frame``.

        Parameters
        ----------
        frame : int
            The frame about to be drawn (from :meth:`FrameSchedule.advance`).
        block_mean : callable
            ``block_mean(first, stop)``: the mean of the uncensored feedback values received
            for volumes ``first`` to ``stop - 1`` (None without any).

        Returns
        -------
        FrameUpdate
            The block entered, if any, and the rows and screenshots of the frame.
        """
        update = FrameUpdate()
        index = self.schedule.block_at(frame)
        if index != self.block_index:
            if self.block_index == -1:  # the first frame: the run's, or a rejoin's
                self.cues.skip(self.schedule.pictures_before(frame))
            self._enter(index, frame, block_mean, update)
        block = self.block
        if block.cue != "none" and block.condition != "rating":
            cue = self.cues.update(block.cue, self.schedule.cue_slot(self.block_index, frame))
            if cue is not None:
                update.changes.append(("cue", cue_row(cue.category, self.block_index + 1,
                                                      frame, cue.stim_file)))
        if self.intermittent is not None and frame >= self.intermittent.end_frame:
            self.intermittent = None
            update.changes.append(("intermittent", None))
        return update

    def _enter(self, index: int, frame: int, block_mean: Callable[[int, int], float | None],
               update: FrameUpdate) -> None:
        """Enter block ``index``: end the previous block's rows, open this one's."""
        previous = self.blocks[self.block_index] if self.block_index >= 0 else None
        self.block_index = index
        block = self.blocks[index]
        update.entered = block
        update.changes += [("cue", None), ("feedback", None)]
        self.cues.reset()
        if self.intermittent is not None:
            self.intermittent = None
            update.changes.append(("intermittent", None))
        update.changes.append(("block", block_row(block, index, frame)))
        update.shots.append(f"block-{index + 1:02d}-{block.trial_type}")
        if previous is not None and previous.feedback == "intermittent":
            self._start_intermittent(previous, index, frame, block_mean, update)

    def _start_intermittent(self, previous: Block, index: int, frame: int,
                            block_mean: Callable[[int, int], float | None],
                            update: FrameUpdate) -> None:
        """Show the previous block's mean for ``intermittent_seconds``."""
        volumes = block_volumes(previous, self.schedule.paradigm.tr)
        mean = block_mean(*volumes)
        seconds = self.schedule.paradigm.display.intermittent_seconds
        self.intermittent = Intermittent(frame + self.schedule.frames_of(seconds), mean,
                                         previous.target)
        update.changes.append(("intermittent", intermittent_row(index, frame, mean, volumes)))
        update.shots.append(f"intermittent-{index:02d}")
