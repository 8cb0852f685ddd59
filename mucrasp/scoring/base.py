"""The interface every scoring method implements.

A method turns a model (and, when it needs them, calibration data) into one value per unit. The
values must be comparable across layers and unit types, because the knapsack ranks them by value
per parameter; `normalize_per_unit_type` is the usual way to get there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.units import KeepPlan, UnitScores

ProgressCallback = Callable[[str, int, int], None]  # (description, done, total)


def _no_progress(description: str, done: int, total: int) -> None:
    return None


@dataclass
class ScoringContext:
    """What a method may use besides the model. Methods ignore what they do not need."""

    ratio: float
    calibration: Any = None  # calibration batches, for methods with `needs_calibration`
    options: dict[str, Any] = field(default_factory=dict)  # method-specific typed config, by name
    progress: ProgressCallback = _no_progress


@dataclass
class ScoringResult:
    values: UnitScores
    #: Anything the method wants recorded with the scores (per-layer statistics, settings).
    details: dict[str, Any] = field(default_factory=dict)


class ScoringMethod:
    """Base class: subclass, set `name`, implement `score`, and register it."""

    name: str = ""
    needs_calibration: bool = False
    #: The layout the method's paper uses; the user's --layout overrides it.
    default_layout: str = "global"
    citation: str = ""

    def score(self, model: PreTrainedModel, adapter: ArchitectureAdapter, context: ScoringContext) -> ScoringResult:
        raise NotImplementedError

    def after_slicing(self, model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan, result: ScoringResult) -> None:
        """Adjust the sliced model (e.g. FLAP's bias compensation). Most methods need nothing."""


def normalize_per_unit_type(scores: UnitScores, eps: float = 1e-12) -> UnitScores:
    """Divide each unit type's values by their mean over the whole model, so that a unit of average
    importance is worth 1 whether it is an MLP channel or a GQA group."""
    out = {}
    for name in ("mlp", "attn"):
        tensors = getattr(scores, name)
        mean = torch.cat([t.double().reshape(-1) for t in tensors]).mean().clamp_min(eps)
        out[name] = [(t.double() / mean) for t in tensors]
    return UnitScores(out["mlp"], out["attn"])
