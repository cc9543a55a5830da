"""One contract for every processing stage, checked by one suite on every stage.

In the spirit of scikit-learn's ``parametrize_with_checks`` and nilearn's estimator checks.
The stages are discovered from :mod:`rtserver.core.stages`: every class its ``__all__``
exports that has ``fit`` (and no class of the package with ``fit`` may be left out of
``__all__``). Each stage needs a recipe in ``RECIPES`` (tests/stage_recipes.py): how to
configure it, what to fit it on, a stream of per-volume inputs and an independent
computation of the whole run's outputs at once. A discovered stage without a recipe fails
every check, so a new stage cannot slip past.

The contract (:mod:`rtserver.core.stages._base`):

- the constructor only stores its arguments; ``get_params`` / ``set_params`` work and
  ``sklearn.base.clone`` gives an unfitted copy with equal parameters;
- ``fit`` validates the parameters (InputError) and builds every piece of state, in
  attributes ending in ``_``; neither it nor the per-volume calls change a parameter;
- every method but the pure functions of the parameters a recipe names raises StateError
  before ``fit``;
- ``fit`` is idempotent, and fitting again resets the online state;
- one volume at a time equals the whole run computed at once (each recipe's tolerance);
- an input of the wrong shape is refused with an InputError that says what was expected
  and what was got, and leaves the state as it was;
- the fitted state has the same size after 1,000 volumes as after the first few.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import pkgutil
import re
from collections import deque
from collections.abc import Iterator
from itertools import islice

import numpy as np
import pytest
from sklearn.base import clone

import rtserver.core.stages as stages_package
from rtserver.core.stages._base import Stage
from rtserver.errors import InputError, StateError

from .stage_recipes import RECIPES, Recipe


def discover_stages() -> list[type]:
    """Every class ``rtserver.core.stages.__all__`` exports that has ``fit``."""
    exported = (getattr(stages_package, name) for name in stages_package.__all__)
    return [obj for obj in exported if inspect.isclass(obj) and hasattr(obj, "fit")]


STAGES = discover_stages()
#: Volumes of the run compared with the batch computation.
N_RUN = 40
#: Volumes of the long run whose state size is measured.
N_LONG = 1000


# --------------------------------------------------------------------------- helpers
def recipe_of(stage_class: type) -> Recipe:
    """Return the stage's recipe; a stage without one fails the check."""
    if stage_class.__name__ not in RECIPES:
        pytest.fail(f"{stage_class.__name__} is a stage of rtserver.core.stages without a "
                    "recipe in RECIPES of tests/stage_recipes.py: add one so that the "
                    "contract is checked on it.")
    return RECIPES[stage_class.__name__]


def fitted(recipe: Recipe) -> Stage:
    """Make and fit a stage."""
    return recipe.make().fit(*recipe.fit_args())


def run(stage: Stage, recipe: Recipe, inputs: Iterator[tuple]) -> list[np.ndarray]:
    """Feed ``inputs`` one volume at a time; each volume's output."""
    step = getattr(stage, recipe.step)
    return [recipe.output(stage, step(*args)) for args in inputs]


def fitted_state(stage: Stage) -> dict[str, object]:
    """Return the attributes that ``fit`` and the per-volume calls set."""
    return {name: value for name, value in vars(stage).items() if name.endswith("_")}


def param_names(stage_class: type) -> list[str]:
    """Return the constructor's parameters."""
    return [name for name in inspect.signature(stage_class.__init__).parameters
            if name != "self"]


def same(a: object, b: object) -> bool:
    """Deep equality of parameters and state: arrays, containers, objects by attributes."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, deque) and a.maxlen != b.maxlen:
        return False
    if isinstance(a, list | tuple | deque):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if hasattr(a, "__dict__") and not inspect.isclass(a):
        return same(vars(a), vars(b))
    return bool(a == b)


def size(value: object, seen: set[int]) -> int:
    """Bytes of arrays plus lengths of containers, through nested objects.

    A bounded deque counts its capacity (``maxlen``), so its filling up to the bound is not
    taken for growth; every other container counts its length.
    """
    if id(value) in seen or value is None or isinstance(value, str | bytes | int | float):
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, deque) and value.maxlen is not None:
        return value.maxlen + sum(size(item, seen) for item in value)
    if isinstance(value, list | tuple | set | frozenset | deque):
        return len(value) + sum(size(item, seen) for item in value)
    if isinstance(value, dict):
        return len(value) + sum(size(k, seen) + size(v, seen) for k, v in value.items())
    if hasattr(value, "__dict__") and not inspect.isclass(value):
        return size(vars(value), seen)
    return 0


def state_size(stage: Stage) -> int:
    """Size of everything ``fit`` and the per-volume calls keep."""
    seen: set[int] = set()
    return sum(size(value, seen) for value in fitted_state(stage).values())


def public_methods(stage_class: type) -> set[str]:
    """Public methods beyond ``fit`` and the parameter protocol."""
    names = set()
    for name in dir(stage_class):
        if name.startswith("_") or name in {"fit", "get_params", "set_params"}:
            continue
        attribute = inspect.getattr_static(stage_class, name)
        if isinstance(attribute, staticmethod | classmethod) or inspect.isfunction(attribute):
            names.add(name)
    return names


parametrize_stages = pytest.mark.parametrize("stage_class", STAGES,
                                             ids=[cls.__name__ for cls in STAGES])


# --------------------------------------------------------------------------- the suite
def test_stages_are_discovered():
    """The five stages are found; the data classes the package exports are not."""
    names = {cls.__name__ for cls in STAGES}
    assert {"MotionCorrector", "RoiExtractor", "SignalModel", "FeedbackScaler",
            "DecoderFeedback"} <= names
    assert not {"MotionEstimate", "RoiSet"} & names  # data classes, not stages


def test_every_stage_has_a_recipe():
    """A stage added to the package without a recipe fails here (and in every check)."""
    names = {cls.__name__ for cls in STAGES}
    missing = sorted(names - RECIPES.keys())
    assert not missing, f"stages without a recipe in RECIPES: {missing}"
    stale = sorted(RECIPES.keys() - names)
    assert not stale, f"recipes of classes that are not exported stages: {stale}"


def test_every_stage_is_exported():
    """No public class with ``fit`` in a module of the package escapes ``__all__``."""
    for module_info in pkgutil.iter_modules(stages_package.__path__):
        module = importlib.import_module(f"{stages_package.__name__}.{module_info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and not name.startswith("_") and hasattr(obj, "fit")):
                assert name in stages_package.__all__, (
                    f"{module.__name__}.{name} has fit but is not in rtserver.core.stages."
                    "__all__, so the contract suite would not check it")


@parametrize_stages
def test_constructor_only_stores_its_arguments(stage_class):
    """Every parameter has a default; the constructor stores arbitrary objects untouched."""
    recipe_of(stage_class)
    assert issubclass(stage_class, Stage)
    parameters = [p for p in inspect.signature(stage_class.__init__).parameters.values()
                  if p.name != "self"]
    for parameter in parameters:
        assert parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        assert parameter.default is not parameter.empty, f"{parameter.name} has no default"
        assert not parameter.name.endswith("_") and not parameter.name.startswith("_")
    # Arbitrary objects go in untouched: the constructor neither checks nor derives.
    sentinels = {p.name: object() for p in parameters}
    stage = stage_class(**sentinels)
    assert vars(stage).keys() == sentinels.keys()
    assert all(vars(stage)[name] is value for name, value in sentinels.items())
    default = stage_class()
    assert all(vars(default)[p.name] is p.default for p in parameters)


@parametrize_stages
def test_get_params_set_params_and_clone(stage_class):
    """The parameter protocol, and ``clone`` of a fitted stage gives an unfitted one."""
    recipe = recipe_of(stage_class)
    stage = recipe.make()
    params = stage.get_params()
    assert list(params) == param_names(stage_class)
    assert all(params[name] is getattr(stage, name) for name in params)
    assert stage.set_params(**params) is stage
    assert all(same(value, stage.get_params()[name]) for name, value in params.items())
    with pytest.raises(InputError, match="has no parameter 'no_such_parameter'"):
        stage.set_params(no_such_parameter=1)
    stage.fit(*recipe.fit_args())
    copied = clone(stage)
    assert type(copied) is stage_class
    assert same(copied.get_params(), stage.get_params())
    assert vars(copied).keys() == params.keys()  # unfitted
    first = next(iter(recipe.inputs(1)))
    with pytest.raises(StateError, match="not fitted yet"):
        getattr(copied, recipe.step)(*first)
    run(copied.fit(*recipe.fit_args()), recipe, recipe.inputs(3))


@parametrize_stages
def test_fit_validates_the_parameters(stage_class):
    """``fit`` refuses out-of-range values and values of the wrong kind (InputError)."""
    recipe = recipe_of(stage_class)
    assert recipe.bad_params, "a recipe lists at least one setting that fit must refuse"
    for bad in recipe.bad_params:
        stage = recipe.make().set_params(**bad)  # accepted: the constructor does not check
        with pytest.raises(InputError) as refused:
            stage.fit(*recipe.fit_args())
        message = str(refused.value)
        assert re.search("expected|should", message, re.IGNORECASE) and "Got" in message, (
            bad, message)
    for name in param_names(stage_class):  # a value of the wrong kind, for every parameter
        stage = recipe.make().set_params(**{name: object()})
        with pytest.raises(InputError):
            stage.fit(*recipe.fit_args())


@parametrize_stages
def test_calls_before_fit_raise_state_error(stage_class):
    """Every public method but the pure ones raises StateError before ``fit``."""
    recipe = recipe_of(stage_class)
    declared = {recipe.step, *recipe.needs_fit, *recipe.pure}
    undeclared = sorted(public_methods(stage_class) - declared)
    assert not undeclared, (f"public methods of {stage_class.__name__} the recipe neither "
                            f"checks before fit nor lists as pure: {undeclared}")
    calls = {recipe.step: lambda: next(iter(recipe.inputs(1))), **recipe.needs_fit}
    for name, arguments in calls.items():
        with pytest.raises(StateError, match="not fitted yet"):
            getattr(recipe.make(), name)(*arguments())


@parametrize_stages
def test_fitted_state_ends_in_underscore_and_params_stay(stage_class):
    """State is in attributes ending in ``_``; parameters are neither replaced nor changed."""
    recipe = recipe_of(stage_class)
    stage = recipe.make()
    params = stage.get_params()
    originals = copy.deepcopy(params)
    stage.fit(*recipe.fit_args())
    names = set(params)
    assert all(name.endswith("_") for name in set(vars(stage)) - names), vars(stage).keys()
    assert fitted_state(stage), "fit sets its state in attributes ending in '_'"
    run(stage, recipe, recipe.inputs(5))
    assert all(name.endswith("_") for name in set(vars(stage)) - names), vars(stage).keys()
    after = stage.get_params()
    for name in names:
        assert after[name] is params[name], f"{name} was replaced"
        assert same(after[name], originals[name]), f"{name} was changed in place"


@parametrize_stages
def test_fit_is_idempotent_and_resets_the_online_state(stage_class):
    """Fitting twice equals fitting once; fitting after a run starts the run over."""
    recipe = recipe_of(stage_class)
    once = fitted(recipe)
    twice = fitted(recipe).fit(*recipe.fit_args())
    assert same(fitted_state(once), fitted_state(twice))
    refitted = fitted(recipe)
    outputs = run(refitted, recipe, recipe.inputs(25))
    refitted.fit(*recipe.fit_args())
    assert same(fitted_state(once), fitted_state(refitted))
    # ... and a refitted stage gives the same outputs again.
    again = run(refitted, recipe, recipe.inputs(25))
    assert all(same(a, b) for a, b in zip(outputs, again, strict=True))


@parametrize_stages
def test_one_volume_at_a_time_equals_the_whole_run(stage_class):
    """The per-volume outputs equal the recipe's whole-run computation, within tolerance."""
    recipe = recipe_of(stage_class)
    inputs = list(recipe.inputs(N_RUN))
    online = np.array(run(fitted(recipe), recipe, inputs))
    batch = np.asarray(recipe.batch(fitted(recipe), inputs))
    assert online.shape == batch.shape
    assert np.ptp(online) > 0  # the run exercises the stage: its output changes
    np.testing.assert_allclose(online, batch, rtol=recipe.rtol, atol=recipe.atol)


@parametrize_stages
def test_wrong_shape_is_refused_saying_expected_and_got(stage_class):
    """InputError naming what was expected and what was got; the state is untouched."""
    recipe = recipe_of(stage_class)
    stage = fitted(recipe)
    run(stage, recipe, recipe.inputs(3))
    before = copy.deepcopy(fitted_state(stage))
    arguments, expected, got = recipe.wrong_shape()
    with pytest.raises(InputError) as refused:
        getattr(stage, recipe.step)(*arguments)
    message = str(refused.value)
    assert expected in message and got in message, message
    assert re.search("expected", message, re.IGNORECASE) and re.search("got", message,
                                                                       re.IGNORECASE)
    assert same(fitted_state(stage), before), "a refused input changed the state"


@parametrize_stages
def test_state_size_is_constant_over_a_long_run(stage_class):
    """The state's size after 1,000 volumes equals its size after the warm-up."""
    recipe = recipe_of(stage_class)
    stage = fitted(recipe)
    inputs = recipe.inputs(N_LONG)
    run(stage, recipe, islice(inputs, max(10, recipe.warmup)))
    early = state_size(stage)
    run(stage, recipe, inputs)
    assert state_size(stage) == early
    assert early > 0
