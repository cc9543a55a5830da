"""Helpers shared by the stages."""

from __future__ import annotations

from rtserver.errors import StateError


def check_is_fitted(stage: object, attribute: str) -> None:
    """Raise :class:`StateError` unless ``stage`` has the fitted ``attribute``."""
    if not hasattr(stage, attribute):
        raise StateError(
            f"This {type(stage).__name__} is not fitted yet. Call 'fit' with the reference "
            "volume before using it."
        )
