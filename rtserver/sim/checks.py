"""Argument checks of the simulator's public functions.

Each check returns the value in its canonical type or raises :class:`~rtserver.errors.InputError`
saying what was expected and what was got. The messages name the Python argument, never a
command-line flag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rtserver import bids
from rtserver.errors import InputError
from rtserver.paradigm import Paradigm

#: A paradigm (shipped name, file or object) or a sequence of them.
ParadigmChoice = str | Path | Paradigm | Sequence[str | Path | Paradigm]


def load_paradigms(paradigm: object) -> tuple[Paradigm, ...]:
    """Load one or several paradigms (names, files or objects), with distinct tasks.

    Parameters
    ----------
    paradigm : str, Path, Paradigm or a sequence of them
        A shipped paradigm's name, a paradigm file or a paradigm, or several.

    Returns
    -------
    tuple of Paradigm
        In the order given.

    Raises
    ------
    InputError
        If the sequence is empty, a paradigm cannot be read, or two share a task.
    """
    items = [paradigm] if isinstance(paradigm, str | Path | Paradigm) else list(paradigm)
    if not items:
        raise InputError(f"paradigm should name at least one paradigm. Got {paradigm!r}.")
    paradigms = tuple(p if isinstance(p, Paradigm) else Paradigm.from_file(p) for p in items)
    tasks = [p.task for p in paradigms]
    if len(set(tasks)) != len(tasks):
        raise InputError(f"paradigms should have distinct tasks. Got {tasks}.")
    return paradigms


def check_subject(subject: object) -> str:
    """Return a subject's BIDS label (a leading ``sub-`` dropped).

    Raises
    ------
    InputError
        If ``subject`` is not text or not an alphanumeric label.
    """
    if not isinstance(subject, str):
        raise InputError(f"subject should be a text label such as 'P01'. Got {subject!r}.")
    try:
        return bids.label(subject)
    except InputError:
        raise InputError(f"subject should be an alphanumeric BIDS label such as 'P01'. "
                         f"Got {subject!r}.") from None


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises
    ------
    InputError
        If it is not.
    """
    if value not in choices:
        raise InputError(f"{name} should be one of {', '.join(choices)}. Got {value!r}.")
    return str(value)


def check_int(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) of at least ``minimum``.

    Raises
    ------
    InputError
        If it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} should be an integer >= {minimum}. Got {value!r}.")
    return int(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number above 0.

    Raises
    ------
    InputError
        If it is not.
    """
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
            or not math.isfinite(value) or value <= 0):
        raise InputError(f"{name} should be a positive number. Got {value!r}.")
    return float(value)


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number of at least 0.

    Raises
    ------
    InputError
        If it is not.
    """
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
            or not math.isfinite(value) or value < 0):
        raise InputError(f"{name} should be a number >= 0. Got {value!r}.")
    return float(value)


def check_shape(shape: object) -> tuple[int, int, int]:
    """Return a grid shape: 3 positive integers.

    Raises
    ------
    InputError
        If ``shape`` is not 3 positive integers.
    """
    try:
        values = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        values = None
    if (values is None or len(values) != 3
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0
                       for v in values)):
        raise InputError(f"shape should be 3 positive integers (x, y, z). Got {shape!r}.")
    return tuple(int(v) for v in values)


def check_out_dir(out_dir: object) -> Path:
    """Create the output folder if missing and return its absolute path.

    Raises
    ------
    InputError
        If ``out_dir`` is not a path or names an existing file.
    """
    try:
        root = Path(out_dir)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"out_dir should be a folder path. Got {out_dir!r}.") from None
    if root.exists() and not root.is_dir():
        raise InputError(f"out_dir should be a folder. Got the file {root}.")
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()
