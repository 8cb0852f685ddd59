"""The prune job: load, score, allocate, slice, save. `prune` is what `mucrasp-deploy prune` calls.

`PruneConfig` is a pydantic model (mucrasp.validation); the allocation knobs and their defaults
come from `mucrasp.allocation.AllocationSettings`. Torch and transformers are imported inside the
functions, so reading the config's fields stays cheap.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

import mucrasp
from mucrasp.allocation import AllocationConfig, AllocationSettings, Layout, Ratio
from mucrasp.errors import MucraspError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mucrasp.adapters.base import ArchitectureAdapter
    from mucrasp.params import ParameterCounts
    from mucrasp.scoring.base import ProgressCallback, ScoreComponents, ScoringResult
    from mucrasp.units import KeepPlan


def _no_progress(description: str, done: int, total: int) -> None:
    return None


class PruneConfig(AllocationSettings):
    model: Path
    out: Path
    ratio: Ratio
    method: str | None = None  # None: the scores file's method, else magnitude
    layout: Layout | None = None  # None: the method's own default
    calibration: Path | None = None
    scores: Path | None = None  # a file from `mucrasp-deploy score`: reused instead of scoring again
    overwrite: bool = False
    method_options: dict[str, Any] = Field(default_factory=dict)
    max_seq_len: int | None = Field(None, ge=1)  # calibration sequences are cut to this; None: the model's context

    def allocation_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in AllocationSettings.model_fields}


@dataclass
class PruneOutcome:
    """What pruning a model in memory produced."""

    plan: KeepPlan
    scoring: ScoringResult
    before: ParameterCounts
    after: ParameterCounts
    widths_before: list[tuple[int, int]]
    layout: str

    @property
    def ratio_achieved(self) -> float:
        return 1.0 - self.after.prunable / self.before.prunable

    @property
    def total_share_removed(self) -> float:
        return 1.0 - self.after.total / self.before.total


@dataclass
class PruneReport:
    out: Path
    outcome: PruneOutcome
    checkpoint_bytes: int


def prune_in_memory(
    model: PreTrainedModel,
    adapter: ArchitectureAdapter,
    ratio: float,
    method: str = "magnitude",
    layout: str | None = None,
    calibration: Any = None,
    method_options: dict[str, Any] | None = None,
    progress: ProgressCallback = _no_progress,
    scores: ScoreComponents | None = None,
    **allocation_settings: Any,
) -> PruneOutcome:
    """Score, allocate and slice `model` in place; usable from Python with no files involved.

    `allocation_settings` are `AllocationSettings` fields (align, tp, min_mlp_fraction, min_kv_groups).
    """
    from mucrasp.params import count_parameters, unit_costs
    from mucrasp.scoring import ScoringContext, get_method
    from mucrasp.slicing import slice_model

    scoring_method = get_method(method)
    chosen_layout = layout or scoring_method.default_layout
    allocation = AllocationConfig(
        ratio=ratio,
        layout=chosen_layout,
        # A uniform layout is chosen to get a stock checkpoint; families whose stock code derives
        # head_dim from the head count can only get one if every GQA group stays.
        prune_attention=chosen_layout != "uniform" or adapter.stock_config_honours_head_dim,
        balance_unit_types=scoring_method.balance_unit_types,
        **allocation_settings,
    )
    from mucrasp.allocation import allocate

    before = count_parameters(model, adapter)
    widths_before = adapter.layer_widths(model)
    context = ScoringContext(ratio=ratio, calibration=calibration, options=method_options or {}, progress=progress)
    result = (
        scoring_method.fuse(scores, context) if scores is not None else scoring_method.score(model, adapter, context)
    )
    plan = allocate(result.values, unit_costs(model, adapter), allocation)
    scoring_method.before_slicing(model, adapter, plan, result)
    slice_model(model, adapter, plan)
    scoring_method.after_slicing(model, adapter, plan, result)
    return PruneOutcome(plan, result, before, count_parameters(model, adapter), widths_before, chosen_layout)


def build_manifest(config: PruneConfig, outcome: PruneOutcome, architecture: str) -> dict[str, Any]:
    return {
        "format_version": 1,
        "tool": f"mucrasp-deploy {mucrasp.__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": str(Path(config.model).resolve()),
        "architecture": architecture,
        "method": config.method,
        "ratio": config.ratio,
        "ratio_definition": "fraction of the decoder's attention + MLP projection parameters removed",
        "ratio_achieved": round(outcome.ratio_achieved, 6),
        "total_share_removed": round(outcome.total_share_removed, 6),
        "layout": outcome.layout,
        "allocation": config.allocation_settings(),
        "parameters": {"before": outcome.before.as_dict(), "after": outcome.after.as_dict()},
        "widths_before": [{"mlp_channels": m, "kv_groups": g} for m, g in outcome.widths_before],
        "widths_after": outcome.plan.widths(),
        "kept_units": outcome.plan.to_json(),
        "scoring_details": outcome.scoring.details,
    }


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prune(config: PruneConfig, progress: ProgressCallback = _no_progress) -> PruneReport:
    """Prune the model at `config.model` and write the pruned checkpoint to `config.out`."""
    from mucrasp.atomic_io import check_output_dir
    from mucrasp.model_loading import load_model, read_model_config
    from mucrasp.scoring.scores_file import load_scores

    scores, stored = load_scores(config.scores) if config.scores is not None else (None, None)
    if scores is not None and config.method is not None and config.method != scores.method:
        raise MucraspError(f"{config.scores} holds {scores.method!r} scores, not {config.method!r}")
    config = config.model_copy(
        update={"method": config.method or (scores.method if scores is not None else "magnitude")}
    )
    check_prune_inputs(config, has_scores=scores is not None)  # before loading anything
    check_output_dir(Path(config.out), config.overwrite, inputs=(config.model, config.calibration, config.scores))
    read_model_config(config.model)
    progress("loading model", 0, 1)
    loaded = load_model(config.model)
    progress("loading model", 1, 1)
    return prune_loaded(config, loaded, progress, scores=scores, stored=stored)


def check_prune_inputs(config: PruneConfig, has_scores: bool) -> None:
    """The checks that need no model: the method's name and options, and its calibration data."""
    from mucrasp.scoring import get_method
    from mucrasp.scoring.options import method_config

    method = get_method(config.method or "magnitude")
    method_config(method.config_class, config.method_options, method.name)
    if method.needs_calibration and not has_scores and config.calibration is None:
        raise MucraspError(f"method {method.name!r} needs calibration data (--calib FILE) or --scores FILE")


def prune_loaded(
    config: PruneConfig,
    loaded: Any,
    progress: ProgressCallback = _no_progress,
    scores: ScoreComponents | None = None,
    stored: dict[str, Any] | None = None,
) -> PruneReport:
    """Prune an already loaded model (`mucrasp.model_loading.load_model`'s result) and save it to `config.out`.

    The model is sliced in place. The deployment chain calls this with the model it loaded once.
    """
    from mucrasp.calibration import CalibrationSource
    from mucrasp.checkpoint import save_pruned
    from mucrasp.scoring.scores_file import check_scores_match

    if stored is not None:
        check_scores_match(
            config.scores, stored, loaded.adapter.architecture, loaded.adapter.layer_widths(loaded.model)
        )
    calibration = (
        CalibrationSource(Path(config.calibration), Path(config.model), max_seq_len=config.max_seq_len)
        if config.calibration
        else None
    )
    outcome = prune_in_memory(
        loaded.model,
        loaded.adapter,
        config.ratio,
        method=config.method or "magnitude",
        layout=config.layout,
        calibration=calibration,
        method_options=config.method_options,
        progress=progress,
        scores=scores,
        **config.allocation_settings(),
    )
    progress("saving checkpoint", 0, 1)
    manifest = build_manifest(config, outcome, loaded.adapter.architecture)
    out = save_pruned(
        loaded.model, config.out, outcome.plan, manifest, source_dir=config.model, overwrite=config.overwrite
    )
    progress("saving checkpoint", 1, 1)
    return PruneReport(out=out, outcome=outcome, checkpoint_bytes=_dir_bytes(out))


__all__ = [
    "PruneConfig",
    "PruneOutcome",
    "PruneReport",
    "build_manifest",
    "check_prune_inputs",
    "prune",
    "prune_in_memory",
    "prune_loaded",
]
