"""Turn unit values into a keep plan under a parameter budget.

`global` layout: a greedy knapsack over all layers, keeping units in order of value per parameter
until the kept parameters reach (1 - ratio) of the prunable parameters. Widths come out
non-uniform. `uniform` layout: every layer gets the same widths; the (MLP, KV-group) width pair
with the highest total value that fits the budget wins, and each layer keeps its best units.
`ratio-per-layer` layout: the reference recipe of Wanda-SP and LLM-Pruner: one ratio r for every
unit type in every pruned layer (a layer keeps floor((1 − r)·n) MLP channels and n − floor(r·n) KV
groups, its best by value), with r the smallest ratio whose kept parameters fit the budget.
`ratio-per-layer-skip-ends` does the same but keeps the first and last layers whole, in the
proportion of LLM-Pruner's `block_*_layer_start/end` (4 and 30 of LLaMA's 32 layers: the first
round(n·4/32) and the last round(n·2/32) layers of an n-layer model), so the layers in between
take a higher ratio for the same budget.
`global-bounded` layout: the global knapsack, with every layer's pruned share of its prunable
parameters held within `layer_deviation` of the ratio, [S − λ, S + λ] (the bound of OWL's
non-uniform layer sparsity, Yin et al. 2023). λ = 0 gives every layer the ratio (with the knapsack
still choosing between MLP channels and KV groups inside it); a large λ is the plain global layout.

Before ranking, each unit type's values are rescaled so that its average value per parameter is 1
(`balance_unit_types`). Without it, a score normalised per unit (a GQA group worth about as much as
an MLP channel) makes a group look ~85x cheaper per parameter on the demo model, and the knapsack
strips every layer to its minimum KV groups first: measured on the demo VLM at ratio 0.3, every
gradient method then kept 1 of 2 groups in all 8 layers and lost most of its accuracy.

Alignment is built in rather than rounded afterwards: MLP channels are taken in blocks of `align`
(each layer's channels sorted by value, then chunked) and KV groups in blocks of `tp`, so every
kept count is a multiple of the block and the budget is still met to within one block. `align`
must be a power of two (1, 2, 4, 8, 16, ...): GEMM kernels tile and vectorise in powers of two, so
a width that is a multiple of a power of two keeps the pruned matmuls on their fast paths, and any
other value (e.g. 7) only makes widths awkward without aligning anything.

The settings are pydantic models (see `mucrasp.validation`): `AllocationSettings` holds the knobs
the user sets, each default defined here once; the CLI reads its defaults from these fields.
This module imports torch only inside the functions that need it, so the CLI can read the
defaults cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Callable, Literal

from pydantic import ConfigDict, Field, field_validator

from mucrasp.errors import MucraspError
from mucrasp.validation import JobConfig

if TYPE_CHECKING:
    import torch

    from mucrasp.params import UnitCosts
    from mucrasp.units import KeepPlan, UnitScores

LAYOUTS = ("global", "global-bounded", "uniform", "ratio-per-layer", "ratio-per-layer-skip-ends")
Layout = Literal["global", "global-bounded", "uniform", "ratio-per-layer", "ratio-per-layer-skip-ends"]
#: LLM-Pruner's hf_prune.py defaults for LLaMA's 32 layers: prune layers 4..29, keep the first 4 and last 2.
_SKIP_FIRST, _SKIP_LAST, _REFERENCE_LAYERS = 4, 2, 32
#: The pruning ratio, checked here only: every config that takes one uses this type.
Ratio = Annotated[
    float, Field(ge=0.0, le=0.9, description="fraction of the decoder's attention+MLP parameters removed")
]


class AllocationSettings(JobConfig):
    """What every prune takes besides the ratio and the layout (PruneConfig inherits these)."""

    model_config = ConfigDict(frozen=True)

    min_mlp_fraction: float = Field(0.10, ge=0.0, le=1.0)  # each layer keeps at least this share of its MLP channels
    min_kv_groups: int = Field(1, ge=1)  # ... and at least this many GQA groups (checked against the model)
    align: int = Field(8, ge=1)  # kept MLP channel counts are multiples of this power of two
    tp: int = Field(1, ge=1)  # kept KV-group counts divide by this (tensor-parallel size)
    # global-bounded layout only: each layer prunes between ratio − this and ratio + this of its parameters
    # (MuCRASP's default layout; 0.2 chosen on validation splits, see MucraspMethod.default_layout).
    layer_deviation: float = Field(0.2, ge=0.0, le=1.0)

    @field_validator("align")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (1, 2, 4, 8, 16, ...), got {value}")
        return value


class AllocationConfig(AllocationSettings):
    ratio: Ratio
    layout: Layout = "global"
    prune_attention: bool = True  # False keeps every GQA group (e.g. for a stock Qwen-VL config)
    balance_unit_types: bool = True  # see the module docstring; FLAP's z-scores balance themselves
    # False: only the structural minimum (one block of MLP channels, min_kv_groups), as FLAP's reference has no floor.
    per_layer_floor: bool = True


@dataclass
class _Block:
    layer: int
    unit_type: str
    indices: torch.Tensor
    value: float
    cost: int


def _block_size(unit_type: str, config: AllocationConfig) -> int:
    from mucrasp.units import MLP

    return config.align if unit_type == MLP else config.tp


def _minimum_units(unit_type: str, available: int, config: AllocationConfig) -> int:
    from mucrasp.units import ATTN

    block = _block_size(unit_type, config)
    if unit_type == ATTN:
        if available % config.tp:
            raise MucraspError(f"tp: a layer has {available} KV groups, which does not divide by --tp {config.tp}")
        if not config.prune_attention:
            return available
        if config.min_kv_groups > available:
            raise MucraspError(
                f"min_kv_groups: {config.min_kv_groups} is more than the {available} KV groups "
                "a layer of this model has"
            )
        wanted = config.min_kv_groups
    else:
        wanted = math.ceil(config.min_mlp_fraction * available) if config.per_layer_floor else 1
    return min(available, math.ceil(wanted / block) * block)


def _layer_blocks(
    layer: int, unit_type: str, values: torch.Tensor, cost: int, config: AllocationConfig
) -> list[_Block]:
    import torch

    order = torch.argsort(values.double(), descending=True, stable=True)
    size = _block_size(unit_type, config)
    return [
        _Block(layer, unit_type, chunk, float(values[chunk].double().sum()), len(chunk) * cost)
        for chunk in torch.split(order, size)
    ]


def allocate(values: UnitScores, costs: UnitCosts, config: AllocationConfig) -> KeepPlan:
    """Choose which units every layer keeps; see the module docstring for the two layouts."""
    from mucrasp.units import UNIT_TYPES

    total = sum(len(values.of(t)[i]) * costs.of(t)[i] for t in UNIT_TYPES for i in range(len(values.mlp)))
    budget = (1.0 - config.ratio) * total
    if config.balance_unit_types:
        values = balance_unit_types(values, costs)
    if config.layout == "uniform":
        return _allocate_uniform(values, costs, config, budget)
    if config.layout.startswith("ratio-per-layer"):
        return _allocate_ratio_per_layer(values, costs, config, budget)
    return _allocate_global(values, costs, config, budget, bounded=config.layout == "global-bounded")


def balance_unit_types(values: UnitScores, costs: UnitCosts) -> UnitScores:
    """Rescale each unit type so that the mean of value / cost over its units is 1."""
    import torch

    from mucrasp.units import ATTN, MLP, UNIT_TYPES, UnitScores

    scaled = {}
    for t in UNIT_TYPES:
        per_parameter = torch.cat([v.double() / costs.of(t)[i] for i, v in enumerate(values.of(t))])
        mean = float(per_parameter.mean())
        scaled[t] = [v.double() / mean for v in values.of(t)] if mean > 0 else list(values.of(t))
    return UnitScores(scaled[MLP], scaled[ATTN])


def _allocate_global(
    values: UnitScores, costs: UnitCosts, config: AllocationConfig, budget: float, bounded: bool = False
) -> KeepPlan:
    from mucrasp.units import UNIT_TYPES

    n_layers = len(values.mlp)
    kept: dict[tuple[int, str], list[torch.Tensor]] = {}
    layer_kept = [0] * n_layers
    candidates: list[_Block] = []

    def keep(block: _Block) -> None:
        kept.setdefault((block.layer, block.unit_type), []).append(block.indices)
        layer_kept[block.layer] += block.cost

    for t in UNIT_TYPES:
        for layer, layer_values in enumerate(values.of(t)):
            blocks = _layer_blocks(layer, t, layer_values, costs.of(t)[layer], config)
            forced = _minimum_units(t, len(layer_values), config) // _block_size(t, config)
            for block in blocks[:forced]:
                keep(block)
            candidates.extend(blocks[forced:])
    # Value per parameter, best first; ties keep layer order so results are deterministic.
    candidates.sort(key=lambda b: b.value / b.cost, reverse=True)
    ceiling = [math.inf] * n_layers
    if bounded:
        candidates, ceiling = _layer_bounds(candidates, config, keep, layer_kept)
    spent = sum(layer_kept)
    if spent > budget:
        raise MucraspError(
            f"ratio {config.ratio} is too high: the per-layer minimum keep alone needs "
            f"{spent / (budget / (1 - config.ratio)):.1%} of the prunable parameters"
        )
    for block in candidates:
        if spent + block.cost <= budget and layer_kept[block.layer] + block.cost <= ceiling[block.layer]:
            keep(block)
            spent += block.cost
    return _plan_from(kept, n_layers)


def _layer_bounds(
    candidates: list[_Block], config: AllocationConfig, keep: Callable[[_Block], None], layer_kept: list[int]
) -> tuple[list[_Block], list[float]]:
    """Hold each layer's kept parameters within (1 − ratio ± layer_deviation) of its own.

    The floor is met by keeping the layer's best remaining blocks (`candidates` is sorted best first)
    without overshooting it, so the floors together stay inside the budget; the ceiling is returned
    for the knapsack to respect. Returns the blocks still open and each layer's ceiling."""
    totals = list(layer_kept)
    for block in candidates:
        totals[block.layer] += block.cost
    floor = [(1.0 - config.ratio - config.layer_deviation) * total for total in totals]
    ceiling = [(1.0 - config.ratio + config.layer_deviation) * total for total in totals]
    still_open = []
    for block in candidates:
        if layer_kept[block.layer] + block.cost <= floor[block.layer]:
            keep(block)
        else:
            still_open.append(block)
    return still_open, ceiling


def _allocate_uniform(values: UnitScores, costs: UnitCosts, config: AllocationConfig, budget: float) -> KeepPlan:
    import torch

    from mucrasp.units import ATTN, MLP, KeepPlan, LayerKeep

    n_layers = len(values.mlp)
    sizes = {(len(values.mlp[i]), len(values.attn[i])) for i in range(n_layers)}
    if len(sizes) != 1:
        raise MucraspError("uniform layout needs a model whose layers all have the same widths")
    n_mlp, n_groups = sizes.pop()
    sorted_mlp = [v.double().sort(descending=True).values.cumsum(0) for v in values.mlp]
    sorted_attn = [v.double().sort(descending=True).values.cumsum(0) for v in values.attn]
    mlp_cost, attn_cost = sum(costs.mlp_channel), sum(costs.attn_group)
    min_mlp = _minimum_units(MLP, n_mlp, config)
    best: tuple[float, int, int] | None = None
    for groups in range(_minimum_units(ATTN, n_groups, config), n_groups + 1, config.tp):
        room = budget - groups * attn_cost
        channels = min(n_mlp, int(room // mlp_cost) // config.align * config.align) if room > 0 else 0
        if channels < min_mlp or channels <= 0:
            continue
        value = sum(float(s[channels - 1]) for s in sorted_mlp) + sum(float(s[groups - 1]) for s in sorted_attn)
        if best is None or value > best[0]:
            best = (value, channels, groups)
    if best is None:
        raise MucraspError(f"ratio {config.ratio} is too high for a uniform layout with the per-layer minimum keep")
    _, channels, groups = best
    return KeepPlan(
        [
            LayerKeep(
                torch.argsort(values.mlp[i].double(), descending=True, stable=True)[:channels],
                torch.argsort(values.attn[i].double(), descending=True, stable=True)[:groups],
            )
            for i in range(n_layers)
        ]
    )


def pruned_layer_range(n_layers: int, skip_ends: bool) -> range:
    """The layers a ratio-per-layer layout prunes: all, or LLM-Pruner's middle ones scaled to n_layers."""
    if not skip_ends:
        return range(n_layers)
    first = round(n_layers * _SKIP_FIRST / _REFERENCE_LAYERS)
    last = round(n_layers * _SKIP_LAST / _REFERENCE_LAYERS)
    return range(first, max(first, n_layers - last))


def _kept_at(ratio: float, available: int, unit_type: str, config: AllocationConfig) -> int:
    """Units one layer keeps at `ratio`, rounded as the reference pruners do, then to the block size."""
    from mucrasp.units import ATTN

    minimum = _minimum_units(unit_type, available, config)
    if unit_type == ATTN:
        kept = available - math.floor(ratio * available + 1e-9)
    else:
        kept = math.floor((1.0 - ratio) * available + 1e-9)
    block = _block_size(unit_type, config)
    return min(available, max(minimum, kept // block * block))


def _allocate_ratio_per_layer(
    values: UnitScores, costs: UnitCosts, config: AllocationConfig, budget: float
) -> KeepPlan:
    import torch

    from mucrasp.units import ATTN, MLP, UNIT_TYPES, KeepPlan, LayerKeep

    n_layers = len(values.mlp)
    pruned = pruned_layer_range(n_layers, config.layout.endswith("skip-ends"))

    def counts(ratio: float) -> list[dict[str, int]]:
        return [
            {t: _kept_at(ratio if i in pruned else 0.0, len(values.of(t)[i]), t, config) for t in UNIT_TYPES}
            for i in range(n_layers)
        ]

    def cost(ratio: float) -> float:
        return sum(c[t] * costs.of(t)[i] for i, c in enumerate(counts(ratio)) for t in UNIT_TYPES)

    if cost(1.0) > budget:
        raise MucraspError(
            f"ratio {config.ratio} is too high for layout {config.layout}: the pruned layers at their minimum "
            f"keep {cost(1.0) / (budget / (1 - config.ratio)):.1%} of the prunable parameters"
        )
    # The kept counts are step functions of the ratio: try every step (and just past it), take the smallest fit.
    steps = {0.0, 1.0}
    for i in pruned:
        for t in UNIT_TYPES:
            n = len(values.of(t)[i])
            steps.update(k / n for k in range(n + 1))
    candidates = sorted({min(1.0, r + d) for r in steps for d in (0.0, 1e-12)})
    low, high = 0, len(candidates) - 1  # cost(candidates[high]) <= budget; cost only falls as the ratio grows
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if cost(candidates[middle]) <= budget else (middle + 1, high)
    chosen = candidates[high]
    layers = []
    for i, c in enumerate(counts(chosen)):
        best = {t: torch.argsort(values.of(t)[i].double(), descending=True, stable=True)[: c[t]] for t in UNIT_TYPES}
        layers.append(LayerKeep(best[MLP], best[ATTN]))
    return KeepPlan(layers)


def _plan_from(kept: dict[tuple[int, str], list[torch.Tensor]], n_layers: int) -> KeepPlan:
    import torch

    from mucrasp.units import ATTN, MLP, KeepPlan, LayerKeep

    def gather(layer: int, t: str) -> torch.Tensor:
        chunks = kept.get((layer, t), [])
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)

    return KeepPlan([LayerKeep(gather(i, MLP), gather(i, ATTN)) for i in range(n_layers)])
