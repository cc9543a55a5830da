"""The contract every processing stage follows, and the helpers that enforce it.

A stage follows scikit-learn's estimator conventions:

- the constructor only stores its arguments, each under its own name: no validation, no
  derived state. :meth:`Stage.get_params` and :meth:`Stage.set_params` read and change them,
  and ``sklearn.base.clone(stage)`` gives an unfitted copy with equal parameters;
- ``fit(setup)`` validates the parameters and builds every piece of state, in attributes
  whose names end in ``_``. Fitting again starts over: the online state is reset;
- ``partial_fit`` / ``transform`` take one volume (or one volume's values) at a time, with
  work and state that do not grow with the run. Called before ``fit`` they raise
  :class:`~rtserver.errors.StateError`; an input of the wrong shape raises
  :class:`~rtserver.errors.InputError` saying what was expected and what was got.

``tests/test_stage_contract.py`` checks all of this on every stage the package exports.
The protocol is written here rather than inherited from ``sklearn.base.BaseEstimator``,
which would also give every stage metadata-routing methods (``set_partial_fit_request``)
that present a volume's index and TR as routable metadata.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

from rtserver.errors import InputError, StateError


class Stage:
    """Base class of the processing stages: the parameter protocol of scikit-learn.

    Subclasses list every parameter in ``__init__`` (keyword arguments with defaults, no
    ``*args`` or ``**kwargs``) and store each one unchanged under its own name.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        """Return the constructor's parameter names, in order."""
        signature = inspect.signature(cls.__init__)
        return [name for name, parameter in signature.parameters.items()
                if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL,
                                                             parameter.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the constructor's arguments, by name.

        Parameters
        ----------
        deep : bool
            Also list the parameters of parameters that have ``get_params`` themselves,
            as ``name__parameter``.

        Returns
        -------
        dict
            Parameter name -> value (the stored object itself, not a copy).
        """
        params = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update({f"{name}__{key}": item
                               for key, item in value.get_params(deep=True).items()})
            params[name] = value
        return params

    def set_params(self, **params: Any) -> Stage:
        """Change parameters; the change takes effect at the next :meth:`fit`.

        Parameters
        ----------
        **params
            New values by parameter name (``name__parameter`` for a parameter's own
            parameter).

        Returns
        -------
        self

        Raises
        ------
        InputError
            If a name is not one of the constructor's parameters.
        """
        valid = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise InputError(f"{type(self).__name__} has no parameter {name!r}. "
                                 f"Expected one of {valid}. Got {key!r}.")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        """Show the class name and the parameters that differ from their defaults."""
        signature = inspect.signature(type(self).__init__)
        shown = []
        for name in self._param_names():
            value = getattr(self, name)
            if _differs(value, signature.parameters[name].default):
                shown.append(f"{name}={_short_repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _short_repr(value: object) -> str:
    """``repr(value)``, or its type (and shape) when that is longer than 60 characters."""
    text = repr(value)
    if len(text) <= 60:
        return text
    shape = getattr(value, "shape", None)
    return f"<{type(value).__name__}{'' if shape is None else f' of shape {shape}'}>"


def _differs(value: object, default: object) -> bool:
    """Whether a parameter's value is not its default (arrays count as different)."""
    if value is default:
        return False
    try:
        return bool(value != default)
    except (TypeError, ValueError):  # an array compared element by element
        return True


def check_is_fitted(stage: object, attribute: str) -> None:
    """Raise unless ``stage`` has the fitted ``attribute``.

    Parameters
    ----------
    stage : object
        The stage about to be used.
    attribute : str
        An attribute that ``fit`` sets.

    Raises
    ------
    StateError
        If ``fit`` has not been called.
    """
    if not hasattr(stage, attribute):
        raise StateError(
            f"This {type(stage).__name__} is not fitted yet. Call 'fit' with the reference "
            "volume before using it."
        )


def check_number(stage: object, name: str, *, low: float | None = None,
                 above: bool = False, integer: bool = False) -> None:
    """Raise unless the parameter ``name`` of ``stage`` is a finite number in range.

    Parameters
    ----------
    stage : object
        The stage being fitted.
    name : str
        Its parameter.
    low : float or None
        Smallest allowed value (``None``: no bound).
    above : bool
        The value must be strictly greater than ``low``.
    integer : bool
        The value must be an integer.

    Raises
    ------
    InputError
        If the value is not a number, not finite, not an integer when it must be, or out of
        range.
    """
    value = getattr(stage, name)
    kind = numbers.Integral if integer else numbers.Real
    expected = "an integer" if integer else "a number"
    if low is not None:
        expected += f" {'>' if above else '>='} {low}"
    valid = (isinstance(value, kind) and not isinstance(value, bool)
             and math.isfinite(value)
             and (low is None or (value > low if above else value >= low)))
    if not valid:
        raise InputError(f"{type(stage).__name__}: {name} should be {expected}. "
                         f"Got {value!r}.")


def check_shape(what: str, got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Raise unless an input's shape is the one expected.

    Parameters
    ----------
    what : str
        What the input is, to start the message ("Volume 3", "Motion parameters").
    got, expected : tuple of int
        The input's shape and the one it should have.

    Raises
    ------
    InputError
        If the shapes differ.
    """
    if tuple(got) != tuple(expected):
        wanted = "() (a single number)" if tuple(expected) == () else str(tuple(expected))
        raise InputError(f"{what} has the wrong shape.\nExpected {wanted}.\n"
                         f"Got {tuple(got)}.")
