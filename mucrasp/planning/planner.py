"""Pick the smallest pruning ratio that fits a profile's memory and meets the decode target."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mucrasp.errors import MucraspError
from mucrasp.planning.memory_model import estimate_memory
from mucrasp.planning.profiles import Profile, list_profiles, load_profile
from mucrasp.planning.throughput_model import estimate_throughput
from mucrasp.planning.workload import Workload

if TYPE_CHECKING:  # transformers and the adapters load torch: imported where a model is read
    from transformers import PretrainedConfig

    from mucrasp.adapters.base import ArchitectureAdapter
    from mucrasp.planning.model_shape import ModelShape

GB = 1e9
ASSUMPTIONS = [
    "ratio R removes R of the decoder's attention+MLP projection parameters; KV heads shrink by R too",
    "decode reads every weight of the decoder and output head once per step, "
    "plus each sequence's KV cache at full context",
    "throughput is a roofline bound at the profile's peak bandwidth and dense FLOPs",
    "GB = 1e9 bytes",
]


@dataclass(frozen=True)
class PlanRow:
    ratio: float
    weights_gb: float
    kv_gb: float
    activation_gb: float
    reserve_gb: float
    total_gb: float
    budget_gb: float
    decode_tokens_per_s: float
    decode_bound: str
    prefill_tokens_per_s: float
    fits: bool
    meets: bool

    @property
    def ok(self) -> bool:
        return self.fits and self.meets


@dataclass
class Plan:
    model: str
    profile: str
    dtype: str
    workload: dict[str, Any]
    parameters: int  # before pruning
    rows: list[PlanRow]
    ratio: float | None  # the chosen one; None when no ratio up to the max works
    message: str
    shortfall: dict[str, float] = field(default_factory=dict)
    fitting_profiles: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=lambda: list(ASSUMPTIONS))

    @property
    def chosen(self) -> PlanRow | None:
        return next((r for r in self.rows if r.ratio == self.ratio), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_grid(step: float, max_ratio: float) -> list[float]:
    if not 0 < step <= 0.9:
        raise MucraspError("planner field 'step': must be in (0, 0.9]")
    if not 0 <= max_ratio <= 0.9:
        raise MucraspError("planner field 'max_ratio': must be in [0, 0.9]")
    return [round(i * step, 6) for i in range(int(max_ratio / step + 1e-9) + 1)]


def evaluate(shape: ModelShape, ratio: float, workload: Workload, profile: Profile, dtype: str) -> PlanRow:
    memory = estimate_memory(shape, ratio, workload, profile, dtype)
    speed = estimate_throughput(shape, ratio, workload, profile, dtype)
    return PlanRow(
        ratio=ratio,
        weights_gb=memory.weights_bytes / GB,
        kv_gb=memory.kv_bytes / GB,
        activation_gb=memory.activation_bytes / GB,
        reserve_gb=memory.reserve_bytes / GB,
        total_gb=memory.total_bytes / GB,
        budget_gb=profile.budget_bytes / GB,
        decode_tokens_per_s=speed.decode_tokens_per_s,
        decode_bound=speed.decode_bound,
        prefill_tokens_per_s=speed.prefill_tokens_per_s,
        fits=memory.total_bytes <= profile.budget_bytes,
        meets=speed.decode_tokens_per_s >= workload.target_tokens_per_s,
    )


def _fits_somewhere(shape: ModelShape, workload: Workload, grid: list[float], skip: str) -> list[str]:
    names = []
    for name in list_profiles():
        if name == skip:
            continue
        try:
            profile = load_profile(name)
            dtype = workload.dtype_for(profile)
        except MucraspError:  # a broken user profile, or one without the asked-for dtype
            continue
        if any(evaluate(shape, r, workload, profile, dtype).ok for r in grid):
            names.append(name)
    return names


def plan_for_config(
    config: PretrainedConfig,
    adapter: ArchitectureAdapter,
    profile: Profile,
    workload: Workload,
    step: float = 0.05,
    max_ratio: float = 0.5,
    model_name: str = "",
    suggest_profiles: bool = True,
) -> Plan:
    """Evaluate every ratio on the grid and choose the smallest that fits and meets the target."""
    from mucrasp.planning.model_shape import model_shape

    grid = ratio_grid(step, max_ratio)
    dtype = workload.dtype_for(profile)
    shape = model_shape(config, adapter)
    rows = [evaluate(shape, r, workload, profile, dtype) for r in grid]
    plan = Plan(
        model=model_name or adapter.architecture,
        profile=profile.name,
        dtype=dtype,
        workload=workload.model_dump(),
        parameters=shape.total_params(0),
        rows=rows,
        ratio=None,
        message="",
    )
    chosen = next((r for r in rows if r.ok), None)
    if chosen is not None:
        plan.ratio = chosen.ratio
        plan.message = (
            f"no pruning needed: the model fits {profile.name} "
            f"with {chosen.budget_gb - chosen.total_gb:.1f} GB to spare"
            if chosen.ratio == 0
            else f"prune at ratio {chosen.ratio:g} to fit {profile.name}"
        )
        return plan
    last = rows[-1]
    if not last.fits:
        plan.shortfall["memory_gb"] = round(last.total_gb - last.budget_gb, 3)
    if not last.meets:
        plan.shortfall["tokens_per_s"] = round(workload.target_tokens_per_s - last.decode_tokens_per_s, 3)
    short = " and ".join(
        f"{v:.2f} GB of memory" if k == "memory_gb" else f"{v:.1f} tokens/s of throughput"
        for k, v in plan.shortfall.items()
    )
    plan.message = f"nothing up to ratio {grid[-1]:g} works on {profile.name}: short by {short} at ratio {grid[-1]:g}"
    if suggest_profiles:
        plan.fitting_profiles = _fits_somewhere(shape, workload, grid, skip=profile.name)
        plan.message += "; fits: " + (", ".join(plan.fitting_profiles) or "no known profile")
    return plan


def plan_model(
    model: str | Path, profile: str | Path | Profile, workload: Workload, step: float = 0.05, max_ratio: float = 0.5
) -> Plan:
    """Plan for the model folder at `model` (its config only) on a profile given by name, path or object."""
    from mucrasp.model_loading import read_model_config

    config, adapter = read_model_config(model)
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    return plan_for_config(config, adapter, profile, workload, step, max_ratio, model_name=str(model))


def plan_all_profiles(
    model: str | Path, workload: Workload, step: float = 0.05, max_ratio: float = 0.5
) -> list[Plan | MucraspError]:
    """One plan per known profile (or the error that stopped it, e.g. an unsupported dtype)."""
    from mucrasp.model_loading import read_model_config

    config, adapter = read_model_config(model)
    plans: list[Plan | MucraspError] = []
    for name in list_profiles():
        try:
            profile = load_profile(name)
            plans.append(
                plan_for_config(config, adapter, profile, workload, step, max_ratio, str(model), suggest_profiles=False)
            )
        except MucraspError as exc:
            plans.append(exc)
    return plans
