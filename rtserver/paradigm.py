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
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rtserver.errors import ConfigError

CONDITIONS = ("look", "reappraise", "savor", "neutral", "fixation", "rating")
CUES = ("drug", "food", "neutral", "none")
FEEDBACK_MODES = ("none", "continuous", "intermittent")
#: Conditions whose volumes form the feedback baseline.
BASELINE_CONDITIONS = ("fixation",)

PARADIGM_DIR = Path(__file__).resolve().parent.parent / "feedback_display" / "paradigms"


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
    """

    condition: str
    cue: str
    onset: float
    duration: float
    instruction: str
    feedback: str

    @property
    def trial_type(self) -> str:
        """BIDS ``trial_type``: ``condition`` or ``condition_cue`` (``reappraise_drug``)."""
        return self.condition if self.cue == "none" else f"{self.condition}_{self.cue}"

    @property
    def is_baseline(self) -> bool:
        """True if the block's volumes belong to the feedback baseline."""
        return self.condition in BASELINE_CONDITIONS


@dataclass(frozen=True)
class Paradigm:
    """A validated run definition.

    Use :meth:`from_file` to read one; the constructor takes already-checked blocks.
    """

    name: str
    task: str
    tr: float
    blocks: tuple[Block, ...]

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
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: object, source: str = "paradigm") -> Paradigm:
        """Validate a paradigm given as a dict (the parsed file)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: should be a table of name, task, tr and blocks.")
        unknown = set(raw) - {"name", "task", "tr", "blocks", "description"}
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
        return cls(name=name, task=task, tr=float(tr), blocks=tuple(blocks))

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
        shipped = PARADIGM_DIR / f"{path}{suffix}"
        if shipped.exists():
            return shipped
    names = sorted(p.stem for p in PARADIGM_DIR.glob("*.toml"))
    raise ConfigError(f"No paradigm file {path!r}; shipped paradigms are {names}.")


def _check_block(item: object, onset: float, tr: float, where: str) -> Block:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: should be a table. Got {item!r}.")
    unknown = set(item) - {"condition", "cue", "duration", "instruction", "feedback"}
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
    return Block(
        condition=condition,
        cue=cue,
        onset=onset,
        duration=float(duration),
        instruction=instruction,
        feedback=feedback,
    )
