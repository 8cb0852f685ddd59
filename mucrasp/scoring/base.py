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
    #: In-memory state for `after_slicing` (e.g. FLAP's calibration means); never written out.
    internals: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreComponents:
    """What a scoring pass measured, before the ratio-dependent fusion into unit values.

    "Score once, prune many": this is what a scores file holds, and `ScoringMethod.fuse` turns it
    into values for one ratio without touching calibration data again.
    """

    method: str
    unit_scores: dict[str, UnitScores]  # e.g. "a_global", "a_pivot"; "values" for one-part methods
    layer_stats: dict[str, torch.Tensor] = field(default_factory=dict)  # one value per decoder layer
    details: dict[str, Any] = field(default_factory=dict)
    internals: dict[str, Any] = field(default_factory=dict)  # not saved
    #: Saved: per-layer tensors of any length that the method needs at prune time (FLAP's calibration
    #: means for its bias compensation), so that pruning from a scores file needs no calibration data.
    per_layer: dict[str, list[torch.Tensor]] = field(default_factory=dict)


class ScoringMethod:
    """Base class: subclass, set `name`, implement `score`, and register it."""

    name: str = ""
    needs_calibration: bool = False
    #: The layout the method's paper uses; the user's --layout overrides it.
    default_layout: str = "global"
    #: Let the allocator equalise the unit types' value per parameter (see mucrasp.allocation).
    balance_unit_types: bool = True
    #: Let the allocator apply --min-mlp-fraction in every layer (False: only the structural minimum).
    per_layer_floor: bool = True
    citation: str = ""
    #: The typed options dataclass (`context.options` fills it), or None for a method without options.
    config_class: type | None = None

    def score(self, model: PreTrainedModel, adapter: ArchitectureAdapter, context: ScoringContext) -> ScoringResult:
        return self.fuse(self.components(model, adapter, context), context)

    def components(
        self, model: PreTrainedModel, adapter: ArchitectureAdapter, context: ScoringContext
    ) -> ScoreComponents:
        """The measured parts; methods that only override `score` store their values as-is."""
        if type(self).score is ScoringMethod.score:
            raise NotImplementedError(f"{type(self).__name__} implements neither score nor components")
        result = self.score(model, adapter, context)
        return ScoreComponents(self.name, {"values": result.values}, details=result.details, internals=result.internals)

    def fuse(self, components: ScoreComponents, context: ScoringContext) -> ScoringResult:
        """Unit values for `context.ratio` from the measured parts (the default: stored values)."""
        return ScoringResult(components.unit_scores["values"], dict(components.details), dict(components.internals))

    def before_slicing(
        self, model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan, result: ScoringResult
    ) -> None:
        """Read what slicing is about to remove (e.g. the columns FLAP compensates for)."""

    def after_slicing(
        self, model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan, result: ScoringResult
    ) -> None:
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


def flatten_depth_profile(scores: UnitScores, strength: float, eps: float = 1e-12) -> UnitScores:
    """Divide each layer's values of a unit type by (that layer's mean / the model's mean) ** strength.

    First-order scores grow or shrink with depth as a whole (gradient and activation scales differ by
    layer), and a global knapsack then strips whole layers to their floor. strength 0 leaves the
    values alone; 1 gives every layer the same mean, so only the ranking inside a layer and the
    layer's spread decide; values in between keep part of the depth signal. Order inside a layer
    never changes."""
    if strength == 0.0:
        return scores
    out = {}
    for name in ("mlp", "attn"):
        tensors = [t.double() for t in getattr(scores, name)]
        overall = torch.cat([t.reshape(-1) for t in tensors]).mean().clamp_min(eps)
        out[name] = [t / (t.mean().clamp_min(eps) / overall) ** strength for t in tensors]
    return UnitScores(out["mlp"], out["attn"])
