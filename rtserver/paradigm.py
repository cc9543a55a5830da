"""Paradigm definitions: one file, read alike by the simulator, the server and the display.

A paradigm file (TOML or YAML) describes one run as a sequence of blocks::

    name = "regulation"
    task = "regulation"
    tr = 2.0

    [[blocks]]
    condition = "fixation"
    duration = 12.0
    instruction = "Rest your eyes on the cross."

    [[blocks]]
    condition = "reappraise"
    cue = "drug"
    duration = 20.0
    feedback = "continuous"
    instruction = "Think: these drugs are fake, the people are actors."

Durations are in seconds and must be whole multiples of the TR, so that every block starts
on a volume and block onsets do not drift against the scanner.

Optional per-block key: ``target`` (``"up"``, ``"down"`` or ``"none"``), the direction the
participant should move the thermometer; it defaults to ``"down"`` for ``reappraise`` and
``"up"`` for ``savor`` blocks, ``"none"`` otherwise.

Two optional tables concern only the participant display; the server and the simulator
ignore them, and they never change the scanned run (``n_volumes``, ``events()``,
``block_of_volume``)::

    [ratings]                 # craving ratings OUTSIDE the scanned run
    before = true             # before the trigger (while the scanner waits)
    after = true              # after the run's last volume
    question = "How strong is your craving for drugs right now?"
    low_label = "Not at all"
    high_label = "Extremely"
    max_seconds = 10.0        # time to respond; no response is recorded as n/a

    [display]
    pictures = "images"       # cue picture folder (drug/, food/, neutral/), relative to
                              # this file; the display's --pictures overrides it
    cue_seconds = 4.0         # each cue picture stays this long; pictures cycle in a block
    intermittent_seconds = 4.0  # an intermittent block's mean is shown this long at the
                                # start of the next block

A rating *block* (``condition = "rating"``) is different: it is part of the scanned run and
occupies scanner time like any other block.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rtserver.errors import ConfigError

CONDITIONS = ("look", "reappraise", "savor", "neutral", "fixation", "rating")
CUES = ("drug", "food", "neutral", "none")
FEEDBACK_MODES = ("none", "continuous", "intermittent")
TARGETS = ("up", "down", "none")
#: Direction of regulation by condition, when a block does not say.
DEFAULT_TARGETS = {"reappraise": "down", "savor": "up"}
#: Conditions whose volumes form the feedback baseline.
BASELINE_CONDITIONS = ("fixation",)

def shipped_paradigms() -> Path:
    """The folder of the shipped paradigms (``feedback_display/paradigms``, package data)."""
    return Path(str(resources.files("feedback_display").joinpath("paradigms")))


@dataclass(frozen=True)
class Block:
    """One block of a run.

    Attributes
    ----------
    condition : str
        One of :data:`CONDITIONS`.
    cue : str
        Cue category shown (one of :data:`CUES`).
    onset : float
        Seconds from the run's first volume (the trigger).
    duration : float
        Seconds.
    instruction : str
        Text shown to the participant.
    feedback : str
        One of :data:`FEEDBACK_MODES`.
    target : str
        Direction the participant should move the thermometer: one of :data:`TARGETS`.
    """

    condition: str
    cue: str
    onset: float
    duration: float
    instruction: str
    feedback: str
    target: str = "none"

    @property
    def trial_type(self) -> str:
        """BIDS ``trial_type``: ``condition`` or ``condition_cue`` (``reappraise_drug``)."""
        return self.condition if self.cue == "none" else f"{self.condition}_{self.cue}"

    @property
    def is_baseline(self) -> bool:
        """True if the block's volumes belong to the feedback baseline."""
        return self.condition in BASELINE_CONDITIONS


@dataclass(frozen=True)
class Ratings:
    """Craving ratings on a visual analogue scale, outside the scanned run.

    Attributes
    ----------
    before, after : bool
        Rate before the run starts (before the trigger) and after its last volume.
    question : str
        The question shown above the scale.
    low_label, high_label : str
        Labels of the scale's two ends (0 and 100).
    max_seconds : float
        Time allowed for a response; without one the rating is recorded as missing.
    """

    before: bool = False
    after: bool = False
    question: str = "How strong is your craving for drugs right now?"
    low_label: str = "Not at all"
    high_label: str = "Extremely"
    max_seconds: float = 10.0


@dataclass(frozen=True)
class DisplaySettings:
    """Settings read only by the participant display.

    Attributes
    ----------
    pictures : Path or None
        Cue picture folder with ``drug/``, ``food/`` and ``neutral/`` subfolders; None uses
        the display's shipped placeholder pictures. Not checked here (the server and the
        simulator need no pictures): the display checks it before opening a window.
    cue_seconds : float
        Seconds each cue picture stays on screen; pictures cycle within a block.
    intermittent_seconds : float
        Seconds an intermittent block's mean feedback is shown, at the next block's start.
    """

    pictures: Path | None = None
    cue_seconds: float = 4.0
    intermittent_seconds: float = 4.0


@dataclass(frozen=True)
class Paradigm:
    """A validated run definition.

    Use :meth:`from_file` to read one; the constructor takes already-checked blocks.
    ``ratings`` and ``display`` concern only the participant display and never change the
    scanned run.
    """

    name: str
    task: str
    tr: float
    blocks: tuple[Block, ...]
    ratings: Ratings = Ratings()
    display: DisplaySettings = DisplaySettings()

    @classmethod
    def from_file(cls, path: str | Path) -> Paradigm:
        """Read and validate a TOML or YAML paradigm file.

        Parameters
        ----------
        path : str or Path
            The file, or the bare name of a shipped paradigm (``"regulation"``).

        Raises
        ------
        ConfigError
            If the file is missing, unreadable, or any block is invalid.
        """
        path = resolve_paradigm_path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"Cannot read paradigm file {path}: {exc.strerror}.") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                raw = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"Paradigm file {path} is not valid YAML: {exc}") from None
        else:
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"Paradigm file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, source=str(path), base=path.parent)

    @classmethod
    def from_dict(cls, raw: object, source: str = "paradigm",
                  base: str | Path | None = None) -> Paradigm:
        """Validate a paradigm given as a dict (the parsed file).

        Parameters
        ----------
        raw : dict
            The parsed file.
        source : str
            Where it came from, for error messages.
        base : str or Path or None
            Folder that a relative ``[display] pictures`` path is relative to (the
            paradigm file's folder); None: the current folder.
        """
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: should be a table of name, task, tr and blocks.")
        unknown = set(raw) - {"name", "task", "tr", "blocks", "description", "ratings",
                              "display"}
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}.")
        tr = raw.get("tr")
        if isinstance(tr, bool) or not isinstance(tr, int | float) or not tr > 0:
            raise ConfigError(f"{source}: 'tr' should be a positive number of seconds. Got {tr!r}.")
        name = str(raw.get("name", Path(source).stem))
        task = str(raw.get("task", name))
        if not task.isalnum():
            raise ConfigError(f"{source}: 'task' should be alphanumeric (a BIDS label). Got {task!r}.")
        blocks_raw = raw.get("blocks")
        if not isinstance(blocks_raw, list) or not blocks_raw:
            raise ConfigError(f"{source}: 'blocks' should be a non-empty list of blocks.")
        blocks = []
        onset = 0.0
        for number, item in enumerate(blocks_raw, start=1):
            block = _check_block(item, onset, float(tr), f"{source}: block {number}")
            blocks.append(block)
            onset += block.duration
        ratings = _check_ratings(raw.get("ratings", {}), f"{source}: [ratings]")
        display = _check_display(raw.get("display", {}), f"{source}: [display]", base)
        _check_intermittent(blocks, display.intermittent_seconds, source)
        return cls(name=name, task=task, tr=float(tr), blocks=tuple(blocks), ratings=ratings,
                   display=display)

    @property
    def duration(self) -> float:
        """Length of the run in seconds."""
        return sum(block.duration for block in self.blocks)

    @property
    def n_volumes(self) -> int:
        """Number of volumes the run acquires."""
        return round(self.duration / self.tr)

    def block_at(self, seconds: float) -> Block:
        """The block running ``seconds`` after the trigger (the last one past the end)."""
        for block in self.blocks:
            if seconds < block.onset + block.duration:
                return block
        return self.blocks[-1]

    def block_of_volume(self, index: int) -> Block:
        """The block during which volume ``index`` (0-based) was acquired."""
        return self.block_at(index * self.tr)

    def events(self) -> list[dict]:
        """BIDS events rows (onset, duration, trial_type) for every non-fixation block."""
        return [
            {"onset": b.onset, "duration": b.duration, "trial_type": b.trial_type}
            for b in self.blocks
            if b.condition != "fixation"
        ]


def resolve_paradigm_path(path: str | Path) -> Path:
    """Return a paradigm file's path; bare names resolve to the shipped paradigms."""
    candidate = Path(path)
    if candidate.exists() or candidate.suffix:
        if not candidate.exists():
            raise ConfigError(f"Paradigm file {candidate} does not exist.")
        return candidate
    for suffix in (".toml", ".yaml", ".yml"):
        shipped = shipped_paradigms() / f"{path}{suffix}"
        if shipped.exists():
            return shipped
    names = sorted(p.stem for p in shipped_paradigms().glob("*.toml"))
    raise ConfigError(f"No paradigm file {path!r}; shipped paradigms are {names}.")


def _check_block(item: object, onset: float, tr: float, where: str) -> Block:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: should be a table. Got {item!r}.")
    unknown = set(item) - {"condition", "cue", "duration", "instruction", "feedback", "target"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}.")
    condition = item.get("condition")
    if condition not in CONDITIONS:
        raise ConfigError(f"{where}: 'condition' should be one of {CONDITIONS}. Got {condition!r}.")
    cue = item.get("cue", "none")
    if cue not in CUES:
        raise ConfigError(f"{where}: 'cue' should be one of {CUES}. Got {cue!r}.")
    feedback = item.get("feedback", "none")
    if feedback not in FEEDBACK_MODES:
        raise ConfigError(
            f"{where}: 'feedback' should be one of {FEEDBACK_MODES}. Got {feedback!r}."
        )
    duration = item.get("duration")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
        raise ConfigError(f"{where}: 'duration' should be a positive number. Got {duration!r}.")
    n_trs = duration / tr
    if not math.isclose(n_trs, round(n_trs), abs_tol=1e-6):
        raise ConfigError(
            f"{where}: 'duration' should be a whole number of TRs ({tr} s). Got {duration} s."
        )
    instruction = item.get("instruction", "")
    if not isinstance(instruction, str):
        raise ConfigError(f"{where}: 'instruction' should be text. Got {instruction!r}.")
    target = item.get("target", DEFAULT_TARGETS.get(condition, "none"))
    if target not in TARGETS:
        raise ConfigError(f"{where}: 'target' should be one of {TARGETS}. Got {target!r}.")
    return Block(
        condition=condition,
        cue=cue,
        onset=onset,
        duration=float(duration),
        instruction=instruction,
        feedback=feedback,
        target=target,
    )


def _positive_seconds(table: dict, key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where}: {key!r} should be a positive number of seconds. "
                          f"Got {value!r}.")
    return float(value)


def _check_table(raw: object, keys: set[str], where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: should be a table. Got {raw!r}.")
    unknown = set(raw) - keys
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; expected some of "
                          f"{sorted(keys)}.")
    return raw


def _check_ratings(raw: object, where: str) -> Ratings:
    defaults = Ratings()
    table = _check_table(raw, {"before", "after", "question", "low_label", "high_label",
                               "max_seconds"}, where)
    for key in ("before", "after"):
        if not isinstance(table.get(key, False), bool):
            raise ConfigError(f"{where}: {key!r} should be true or false. Got {table[key]!r}.")
    for key in ("question", "low_label", "high_label"):
        if not isinstance(table.get(key, ""), str):
            raise ConfigError(f"{where}: {key!r} should be text. Got {table[key]!r}.")
    return Ratings(
        before=table.get("before", False), after=table.get("after", False),
        question=table.get("question", defaults.question),
        low_label=table.get("low_label", defaults.low_label),
        high_label=table.get("high_label", defaults.high_label),
        max_seconds=_positive_seconds(table, "max_seconds", defaults.max_seconds, where),
    )


def _check_display(raw: object, where: str, base: str | Path | None) -> DisplaySettings:
    defaults = DisplaySettings()
    table = _check_table(raw, {"pictures", "cue_seconds", "intermittent_seconds"}, where)
    pictures = table.get("pictures")
    if pictures is not None:
        if not isinstance(pictures, str) or not pictures:
            raise ConfigError(f"{where}: 'pictures' should be a folder. Got {pictures!r}.")
        pictures = Path(base if base is not None else ".") / Path(pictures).expanduser()
    return DisplaySettings(
        pictures=pictures,
        cue_seconds=_positive_seconds(table, "cue_seconds", defaults.cue_seconds, where),
        intermittent_seconds=_positive_seconds(table, "intermittent_seconds",
                                               defaults.intermittent_seconds, where),
    )


def _check_intermittent(blocks: list[Block], seconds: float, source: str) -> None:
    """Check that each intermittent block is followed by one long enough to show its result."""
    for number, (block, following) in enumerate(zip(blocks, [*blocks[1:], None], strict=True), start=1):
        if block.feedback != "intermittent":
            continue
        if following is None or following.duration < seconds:
            raise ConfigError(
                f"{source}: block {number}: intermittent feedback is shown for "
                f"{seconds:g} s at the start of the next block, so it should be followed by "
                f"a block of at least {seconds:g} s. Got "
                f"{'none' if following is None else f'{following.duration:g} s'}.")
