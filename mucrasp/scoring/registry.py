"""Method name (as given to --method) -> scoring method."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from mucrasp.errors import MucraspError

if TYPE_CHECKING:
    from mucrasp.scoring.base import ScoringMethod

#: Modules whose import registers the bundled methods (loaded on first lookup: they import torch).
BUILTIN_METHODS = ("flap", "llm_pruner", "magnitude", "mucrasp_method", "random_method", "taylor", "wanda_sp")

_METHODS: dict[str, ScoringMethod] = {}
_loaded = False
M = TypeVar("M")


def register_method(cls: M) -> M:
    """Class decorator: make a scoring method available under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set `name`")
    _METHODS[cls.name] = cls()
    return cls


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_METHODS:
            importlib.import_module(f"mucrasp.scoring.{module}")


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> ScoringMethod:
    _load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise MucraspError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
