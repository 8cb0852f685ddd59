"""Scoring methods. A new method is one module here plus one name in `registry.BUILTIN_METHODS`.

The method modules import torch; they load on first use (`get_method`, `available_methods`, or
any name below), so importing a config such as `mucrasp.scoring.score_job.ScoreConfig` stays cheap.
"""

from mucrasp.scoring.registry import available_methods, get_method, register_method

_FROM_BASE = ("ScoringContext", "ScoringMethod", "ScoringResult", "normalize_per_unit_type")

__all__ = [
    "ScoringContext",
    "ScoringMethod",
    "ScoringResult",
    "available_methods",
    "get_method",
    "normalize_per_unit_type",
    "register_method",
]


def __getattr__(name: str):
    if name in _FROM_BASE:
        from mucrasp.scoring import base

        return getattr(base, name)
    raise AttributeError(f"module 'mucrasp.scoring' has no attribute {name!r}")
