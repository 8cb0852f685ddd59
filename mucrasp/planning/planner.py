"""Pick a (weight format, pruning ratio) pair that fits a profile's memory and meets the decode target.

Order rule: quantize first, prune only for what is left. Among the pairs that work the planner takes
the smallest ratio, and at that ratio the format of least expected quality cost
(`WeightFormat.quality_rank`: dense, then 8-bit, then 4-bit; equal ranks go to the faster on the
profile's hardware). Quantization to 8 bits is near lossless on the decoder's projections, while
removing channels and heads is what the pruning method's scores have to pay for, so any format the
hardware serves is tried before any further ratio step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mucrasp.errors import MucraspError
from mucrasp.planning.memory_model import estimate_memory
from mucrasp.planning.profiles import Profile, list_profiles, load_profile
from mucrasp.planning.throughput_model import estimate_throughput
from mucrasp.planning.weight_formats import FORMATS, formats_for_runtime, get_format
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
    "a quantized format stores the decoder's projections at its bytes per weight (scales included); "
    "embeddings, output head, norms, vision tower and KV cache stay at the dtype",
    "order: the smallest ratio that works, and at it the format of least expected quality cost",
    "time to first token: one image through the vision tower (every block over all patches) and the prompt's "
    "prefill, at peak FLOPs and at least one read of the weights",
    "GB = 1e9 bytes",
]


@dataclass(frozen=True)
class PlanRow:
    ratio: float
    weights: str  # the weight format: a dense dtype or a quantized format from the catalogue
    weights_gb: float
    kv_gb: float
    activation_gb: float
    reserve_gb: float
    total_gb: float
    budget_gb: float
    decode_tokens_per_s: float
    decode_bound: str
    prefill_tokens_per_s: float
    ttft_s: float
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
    rows: list[PlanRow]  # every (format, ratio) pair, formats in order of quality cost
    ratio: float | None  # the chosen one; None when no pair up to the max ratio works
    message: str
    weights: str | None = None  # the chosen format; None when nothing works
    formats: list[str] = field(default_factory=list)  # the formats weighed, in order of quality cost
    image_tokens: int = 0  # the workload's image, in each prompt and its KV cache
    shortfall: dict[str, float] = field(default_factory=dict)
    fitting_profiles: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=lambda: list(ASSUMPTIONS))

    @property
    def chosen(self) -> PlanRow | None:
        return next((r for r in self.rows if (r.ratio, r.weights) == (self.ratio, self.weights)), None)

    def rows_for(self, weights: str) -> list[PlanRow]:
        return [r for r in self.rows if r.weights == weights]

    @property
    def quantized(self) -> bool:
        return self.weights is not None and get_format(self.weights).quantized

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_grid(step: float, max_ratio: float) -> list[float]:
    if not 0 < step <= 0.9:
        raise MucraspError("planner field 'step': must be in (0, 0.9]")
    if not 0 <= max_ratio <= 0.9:
        raise MucraspError("planner field 'max_ratio': must be in [0, 0.9]")
    return [round(i * step, 6) for i in range(int(max_ratio / step + 1e-9) + 1)]


def candidate_formats(
    profile: Profile, dtype: str, weights: str | None = None, runtime: str | None = None
) -> list[str]:
    """The formats to weigh, in order of quality cost: the dense dtype, then the profile's quantized
    formats that `runtime` serves. `weights` fixes one (it must be the dtype or one the profile lists)."""
    allowed = formats_for_runtime(runtime)
    listed = [dtype] + [f for f in profile.weight_formats if f in allowed]
    if weights is not None:
        get_format(weights)
        if weights not in listed:
            where = f" for {runtime}" if runtime else ""
            raise MucraspError(
                f"weights {weights}: not served by profile {profile.name}{where} "
                f"(it serves: {', '.join(listed)}; dense formats follow --dtype)"
            )
        return [weights]
    # Least quality cost first; at equal cost the faster here; sorted() is stable, so then the profile's order.
    cc = profile.compute_capability
    return sorted(listed, key=lambda name: (FORMATS[name].quality_rank, -FORMATS[name].speedup_on(cc)))


def _dtype(workload: Workload, profile: Profile, weights: str | None) -> str:
    """A dense `weights` (e.g. the ONNX export's fp32) is the dtype; a quantized one keeps the workload's."""
    if weights is None or get_format(weights).quantized:
        return workload.dtype_for(profile)
    return workload.model_copy(update={"dtype": weights}).dtype_for(profile)


def evaluate(
    shape: ModelShape, ratio: float, workload: Workload, profile: Profile, dtype: str, weights: str | None = None
) -> PlanRow:
    memory = estimate_memory(shape, ratio, workload, profile, dtype, weights)
    speed = estimate_throughput(shape, ratio, workload, profile, dtype, weights)
    return PlanRow(
        ratio=ratio,
        weights=weights or dtype,
        weights_gb=memory.weights_bytes / GB,
        kv_gb=memory.kv_bytes / GB,
        activation_gb=memory.activation_bytes / GB,
        reserve_gb=memory.reserve_bytes / GB,
        total_gb=memory.total_bytes / GB,
        budget_gb=profile.budget_bytes / GB,
        decode_tokens_per_s=speed.decode_tokens_per_s,
        decode_bound=speed.decode_bound,
        prefill_tokens_per_s=speed.prefill_tokens_per_s,
        ttft_s=speed.ttft_s,
        fits=memory.total_bytes <= profile.budget_bytes,
        meets=speed.decode_tokens_per_s >= workload.target_tokens_per_s,
    )


def _choose(rows: list[PlanRow]) -> PlanRow | None:
    """The order rule: the smallest ratio that works, then the least quality cost at it (rows come in that order)."""
    working = [r for r in rows if r.ok]
    return min(working, key=lambda r: r.ratio) if working else None  # min keeps the first of equal ratios


def _fits_somewhere(
    shape: ModelShape, workload: Workload, grid: list[float], skip: str, weights: str | None, runtime: str | None
) -> list[str]:
    names = []
    for name in list_profiles():
        if name == skip:
            continue
        try:
            profile = load_profile(name)
            dtype = _dtype(workload, profile, weights)
            formats = candidate_formats(profile, dtype, weights, runtime)
        except MucraspError:  # a broken user profile, or one without the asked-for dtype or format
            continue
        if any(evaluate(shape, r, workload, profile, dtype, f).ok for f in formats for r in grid):
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
    weights: str | None = None,
    runtime: str | None = None,
) -> Plan:
    """Evaluate every (format, ratio) pair and choose by the order rule (see the module docstring).

    weights: fix the format (None: weigh the dtype and every quantized format the profile lists);
    runtime: weigh only the formats that runtime serves (`vllm`, `onnx`; None: all)."""
    from mucrasp.planning.model_shape import model_shape
    from mucrasp.planning.throughput_model import image_tokens

    grid = ratio_grid(step, max_ratio)
    dtype = _dtype(workload, profile, weights)
    formats = candidate_formats(profile, dtype, weights, runtime)
    shape = model_shape(config, adapter)
    image = image_tokens(shape, workload)  # checked once, before any row
    rows = [evaluate(shape, r, workload, profile, dtype, f) for f in formats for r in grid]
    plan = Plan(
        model=model_name or adapter.architecture,
        profile=profile.name,
        dtype=dtype,
        workload=workload.model_dump(),
        parameters=shape.total_params(0),
        rows=rows,
        ratio=None,
        message="",
        formats=formats,
        image_tokens=image,
    )
    chosen = _choose(rows)
    if chosen is not None:
        plan.ratio, plan.weights = chosen.ratio, chosen.weights
        plan.message = _chosen_message(chosen, profile.name, quantized=plan.quantized)
        return plan
    # The shortfall at the most the planner may do: the largest ratio in the smallest format.
    last = min((r for r in rows if r.ratio == grid[-1]), key=lambda r: (r.total_gb, -r.decode_tokens_per_s))
    if not last.fits:
        plan.shortfall["memory_gb"] = round(last.total_gb - last.budget_gb, 3)
    if not last.meets:
        plan.shortfall["tokens_per_s"] = round(workload.target_tokens_per_s - last.decode_tokens_per_s, 3)
    short = " and ".join(
        f"{v:.2f} GB of memory" if k == "memory_gb" else f"{v:.1f} tokens/s of throughput"
        for k, v in plan.shortfall.items()
    )
    plan.message = (
        f"nothing up to ratio {grid[-1]:g} works on {profile.name} ({', '.join(formats)}): "
        f"short by {short} at ratio {grid[-1]:g} in {last.weights}"
    )
    if suggest_profiles:
        plan.fitting_profiles = _fits_somewhere(shape, workload, grid, profile.name, weights, runtime)
        plan.message += "; fits: " + (", ".join(plan.fitting_profiles) or "no known profile")
    return plan


def _chosen_message(row: PlanRow, profile: str, quantized: bool) -> str:
    spare = f"with {row.budget_gb - row.total_gb:.1f} GB to spare"
    if row.ratio == 0:
        if quantized:
            return f"no pruning needed: {row.weights} weights fit {profile} {spare}"
        return f"no pruning needed: the model fits {profile} {spare}"
    if quantized:
        return f"quantize to {row.weights} and prune at ratio {row.ratio:g} to fit {profile}"
    return f"prune at ratio {row.ratio:g} to fit {profile}"


def plan_model(
    model: str | Path,
    profile: str | Path | Profile,
    workload: Workload,
    step: float = 0.05,
    max_ratio: float = 0.5,
    weights: str | None = None,
    runtime: str | None = None,
) -> Plan:
    """Plan for the model folder at `model` (its config only) on a profile given by name, path or object."""
    from mucrasp.model_loading import read_model_config

    config, adapter = read_model_config(model)
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    return plan_for_config(
        config, adapter, profile, workload, step, max_ratio, model_name=str(model), weights=weights, runtime=runtime
    )


def predict_export_memory(model: str | Path, weights: str, workload: Workload, dtype: str = "bf16") -> dict[str, float]:
    """The planner's weight and KV-cache bytes for an export as it lies (its config already pruned, so
    ratio 0), for comparing with what the runtime reports it allocated (issue 19, item 6).

    weights: the export's format (a dense dtype or a quantized format); dtype: what the rest is
    served in (vLLM's --dtype, also its KV cache's). Bytes, not GB: vLLM logs GiB."""
    from mucrasp.model_loading import read_model_config
    from mucrasp.planning.memory_model import estimate_memory, kv_bytes_per_token
    from mucrasp.planning.model_shape import model_shape
    from mucrasp.planning.profiles import DTYPE_BYTES

    if dtype not in DTYPE_BYTES:
        raise MucraspError(f"dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    get_format(weights)
    config, adapter = read_model_config(model)
    shape = model_shape(config, adapter)
    # The profile only sets the reserve, which is not returned: any bundled one does.
    memory = estimate_memory(shape, 0.0, workload, load_profile("a10g"), dtype, weights)
    return {
        "weights_bytes": memory.weights_bytes,
        "text_weights_bytes": memory.text_bytes,
        "vision_weights_bytes": memory.vision_bytes,
        "kv_bytes": memory.kv_bytes,
        "kv_bytes_per_token": kv_bytes_per_token(shape, 0.0, dtype),
    }


def plan_all_profiles(
    model: str | Path,
    workload: Workload,
    step: float = 0.05,
    max_ratio: float = 0.5,
    weights: str | None = None,
    runtime: str | None = None,
) -> list[Plan | MucraspError]:
    """One plan per known profile (or the error that stopped it, e.g. an unsupported dtype)."""
    from mucrasp.model_loading import read_model_config

    config, adapter = read_model_config(model)
    plans: list[Plan | MucraspError] = []
    for name in list_profiles():
        try:
            profile = load_profile(name)
            plans.append(
                plan_for_config(
                    config, adapter, profile, workload, step, max_ratio, str(model), False, weights, runtime
                )
            )
        except MucraspError as exc:
            plans.append(exc)
    return plans
