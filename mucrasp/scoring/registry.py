"""Method name (as given to --method) -> scoring method."""

from __future__ import annotations

from typing import TypeVar

from mucrasp.errors import MucraspError
from mucrasp.scoring.base import ScoringMethod

_METHODS: dict[str, ScoringMethod] = {}
M = TypeVar("M", bound=type[ScoringMethod])


def register_method(cls: M) -> M:
    """Class decorator: make a scoring method available under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set `name`")
    _METHODS[cls.name] = cls()
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> ScoringMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise MucraspError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
