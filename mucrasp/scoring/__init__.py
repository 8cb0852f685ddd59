"""Scoring methods. A new method is one module here plus one line in the import list below."""

from mucrasp.scoring.base import ScoringContext, ScoringMethod, ScoringResult, normalize_per_unit_type
from mucrasp.scoring.registry import available_methods, get_method, register_method

# Importing a method module registers it.
from mucrasp.scoring import flap, llm_pruner, magnitude, mucrasp_method, random_method, taylor, wanda_sp  # noqa: E402,F401

__all__ = [
    "ScoringContext", "ScoringMethod", "ScoringResult", "available_methods", "get_method",
    "normalize_per_unit_type", "register_method",
]
