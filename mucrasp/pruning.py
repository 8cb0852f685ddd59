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
from mucrasp.devices import DeviceSpec, DtypeSpec
from mucrasp.errors import MucraspError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mucrasp.adapters.base import ArchitectureAdapter
    from mucrasp.params import ParameterCounts
    from mucrasp.reconstruction import ReconstructionSettings
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
    device: DeviceSpec = "auto"  # where scoring runs (mucrasp.devices)
    # The dtype the model runs in; auto: the checkpoint's (mucrasp.devices). The pruned checkpoint is written
    # in the source's dtype unless a dtype is named here.
    dtype: DtypeSpec = "auto"
    device_map: str | None = None  # accelerate's "auto"/"balanced"/"sequential": spread over devices, offload
    offload_folder: Path | None = None  # where a device_map's "disk" part goes
    # With --scores, slice the checkpoint shard by shard without loading the model (None: whenever the method
    # allows it, i.e. it changes nothing around slicing); False: load it, slice in memory.
    stream: bool | None = None
    # Refit o_proj/down_proj layer by layer on the calibration data after slicing (mucrasp.reconstruction).
    # None: whenever there is calibration data (--calib); it won on the validation splits (README, issue 17).
    reconstruct: bool | None = None

    def reconstructs(self) -> bool:
        return self.reconstruct if self.reconstruct is not None else self.calibration is not None

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
    reconstruct: bool | ReconstructionSettings = False,  # settings: reconstruct with them
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
        per_layer_floor=scoring_method.per_layer_floor,
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
    if reconstruct:
        # The refit's intercept generalises FLAP-style bias compensation, so the method's hooks are not stacked on it.
        from mucrasp.reconstruction import reconstruct_with_calibration

        settings = None if isinstance(reconstruct, bool) else reconstruct
        result.details["reconstruction"] = reconstruct_with_calibration(
            model, adapter, plan, calibration, progress, settings
        )
    else:
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
    if _streams(config, scores):
        return prune_streaming(config, scores, stored, progress)
    if config.device_map is not None:
        raise MucraspError(
            "prune slices the model in memory, which a device_map'd model is not: score it with "
            "`mucrasp-deploy score --device-map ...`, then `prune --scores FILE` streams the checkpoint"
        )
    progress("loading model", 0, 1)
    loaded = load_model(config.model, dtype=config.dtype, device=config.device)
    progress("loading model", 1, 1)
    return prune_loaded(config, loaded, progress, scores=scores, stored=stored)


def _changes_slicing(method_name: str) -> bool:
    from mucrasp.scoring import get_method
    from mucrasp.scoring.base import ScoringMethod

    method = type(get_method(method_name))
    return method.before_slicing is not ScoringMethod.before_slicing or method.after_slicing is not (
        ScoringMethod.after_slicing
    )


def _streams(config: PruneConfig, scores: ScoreComponents | None) -> bool:
    """Whether to slice the checkpoint shard by shard (`config.stream`; None: whenever it can)."""
    why_not = (
        "it needs --scores FILE"
        if scores is None
        else f"method {config.method!r} changes the model around slicing"
        if _changes_slicing(config.method or "magnitude")
        else "--reconstruct refits the model after slicing (--no-reconstruct to stream)"
        if config.reconstructs()
        else None
    )
    if config.stream and why_not:
        raise MucraspError(f"cannot prune shard by shard: {why_not}")
    return config.stream is not False and why_not is None


def _save_dtype(config: PruneConfig, source_dtype: Any) -> Any:
    """The dtype the pruned checkpoint is written in: the one asked for, else the source's own."""
    from mucrasp.devices import torch_dtype

    return torch_dtype(config.dtype) if config.dtype != "auto" else source_dtype


def prune_streaming(
    config: PruneConfig,
    scores: ScoreComponents,
    stored: dict[str, Any] | None = None,
    progress: ProgressCallback = _no_progress,
) -> PruneReport:
    """Prune from a scores file without loading the weights: plan on the model's shapes (meta device), then
    copy the checkpoint shard by shard with each projection sliced (`mucrasp.checkpoint_streaming`)."""
    from mucrasp.adapters import adapter_for_config
    from mucrasp.checkpoint import empty_model
    from mucrasp.checkpoint_streaming import save_pruned_streaming
    from mucrasp.devices import checkpoint_dtype
    from mucrasp.scoring.scores_file import check_scores_match

    model = empty_model(config.model)
    adapter = adapter_for_config(model.config)
    if stored is not None:
        check_scores_match(config.scores, stored, adapter.architecture, adapter.layer_widths(model))
    outcome = prune_in_memory(
        model,
        adapter,
        config.ratio,
        method=config.method or "magnitude",
        layout=config.layout,
        method_options=config.method_options,
        progress=progress,
        scores=scores,
        **config.allocation_settings(),
    )
    dtype = _save_dtype(config, checkpoint_dtype(config.model))
    manifest = build_manifest(config, outcome, adapter.architecture) | {"dtype": str(dtype).removeprefix("torch.")}
    out = save_pruned_streaming(
        model,
        adapter,
        config.model,
        config.out,
        outcome.plan,
        manifest,
        dtype=dtype,
        overwrite=config.overwrite,
        progress=progress,
    )
    return PruneReport(out=out, outcome=outcome, checkpoint_bytes=_dir_bytes(out))


def check_prune_inputs(config: PruneConfig, has_scores: bool) -> None:
    """The checks that need no model: the method's name and options, and its calibration data."""
    from mucrasp.scoring import get_method
    from mucrasp.scoring.options import method_config

    method = get_method(config.method or "magnitude")
    method_config(method.config_class, config.method_options, method.name)
    from mucrasp.devices import resolve_device

    resolve_device(config.device)  # `--device cuda` on a machine without CUDA: one line, before any loading
    if method.needs_calibration and not has_scores and config.calibration is None:
        raise MucraspError(f"method {method.name!r} needs calibration data (--calib FILE) or --scores FILE")
    if config.reconstruct and config.calibration is None:
        raise MucraspError("--reconstruct needs calibration data (--calib FILE): it refits on calibration activations")


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
        reconstruct=config.reconstructs(),
        **config.allocation_settings(),
    )
    progress("saving checkpoint", 0, 1)
    dtype = _save_dtype(config, getattr(loaded, "source_dtype", None))
    manifest = build_manifest(config, outcome, loaded.adapter.architecture)
    if dtype is not None:
        manifest["dtype"] = str(dtype).removeprefix("torch.")
    out = save_pruned(
        loaded.model,
        config.out,
        outcome.plan,
        manifest,
        source_dir=config.model,
        overwrite=config.overwrite,
        dtype=dtype,
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
    "prune_streaming",
]
