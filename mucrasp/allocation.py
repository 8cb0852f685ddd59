"""Turn unit values into a keep plan under a parameter budget.

`global` layout: a greedy knapsack over all layers, keeping units in order of value per parameter
until the kept parameters reach (1 - ratio) of the prunable parameters. Widths come out
non-uniform. `uniform` layout: every layer gets the same widths; the (MLP, KV-group) width pair
with the highest total value that fits the budget wins, and each layer keeps its best units.

Before ranking, each unit type's values are rescaled so that its average value per parameter is 1
(`balance_unit_types`). Without it, a score normalised per unit (a GQA group worth about as much as
an MLP channel) makes a group look ~85x cheaper per parameter on the demo model, and the knapsack
strips every layer to its minimum KV groups first: measured on the demo VLM at ratio 0.3, every
gradient method then kept 1 of 2 groups in all 8 layers and lost most of its accuracy.

Alignment is built in rather than rounded afterwards: MLP channels are taken in blocks of `align`
(each layer's channels sorted by value, then chunked) and KV groups in blocks of `tp`, so every
kept count is a multiple of the block and the budget is still met to within one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mucrasp.errors import MucraspError
from mucrasp.params import UnitCosts
from mucrasp.units import ATTN, MLP, UNIT_TYPES, KeepPlan, LayerKeep, UnitScores

LAYOUTS = ("global", "uniform")


@dataclass(frozen=True)
class AllocationConfig:
    ratio: float
    layout: str = "global"
    min_mlp_fraction: float = 0.10  # each layer keeps at least this share of its MLP channels
    min_kv_groups: int = 1  # ... and at least this many GQA groups
    align: int = 8  # kept MLP channel counts are multiples of this
    tp: int = 1  # kept KV-group counts divide by this (tensor-parallel size)
    prune_attention: bool = True  # False keeps every GQA group (e.g. for a stock Qwen-VL config)
    balance_unit_types: bool = True  # see the module docstring; FLAP's z-scores balance themselves

    def validate(self) -> None:
        if not 0.0 <= self.ratio <= 0.9:
            raise MucraspError(f"ratio must be within [0, 0.9], got {self.ratio}")
        if self.layout not in LAYOUTS:
            raise MucraspError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.align < 1 or self.tp < 1 or self.min_kv_groups < 1:
            raise MucraspError("align, tp and min_kv_groups must be at least 1")
        if not 0.0 <= self.min_mlp_fraction <= 1.0:
            raise MucraspError(f"min_mlp_fraction must be within [0, 1], got {self.min_mlp_fraction}")


@dataclass
class _Block:
    layer: int
    unit_type: str
    indices: torch.Tensor
    value: float
    cost: int


def _block_size(unit_type: str, config: AllocationConfig) -> int:
    return config.align if unit_type == MLP else config.tp


def _minimum_units(unit_type: str, available: int, config: AllocationConfig) -> int:
    block = _block_size(unit_type, config)
    if unit_type == ATTN:
        if available % config.tp:
            raise MucraspError(f"a layer has {available} KV groups, which does not divide by --tp {config.tp}")
        if not config.prune_attention:
            return available
        wanted = config.min_kv_groups
    else:
        wanted = math.ceil(config.min_mlp_fraction * available)
    return min(available, math.ceil(wanted / block) * block)


def _layer_blocks(layer: int, unit_type: str, values: torch.Tensor, cost: int, config: AllocationConfig) -> list[_Block]:
    order = torch.argsort(values.double(), descending=True, stable=True)
    size = _block_size(unit_type, config)
    return [
        _Block(layer, unit_type, chunk, float(values[chunk].double().sum()), len(chunk) * cost)
        for chunk in torch.split(order, size)
    ]


def allocate(values: UnitScores, costs: UnitCosts, config: AllocationConfig) -> KeepPlan:
    """Choose which units every layer keeps; see the module docstring for the two layouts."""
    config.validate()
    total = sum(
        len(values.of(t)[i]) * costs.of(t)[i] for t in UNIT_TYPES for i in range(len(values.mlp))
    )
    budget = (1.0 - config.ratio) * total
    if config.balance_unit_types:
        values = balance_unit_types(values, costs)
    if config.layout == "uniform":
        return _allocate_uniform(values, costs, config, budget)
    return _allocate_global(values, costs, config, budget)


def balance_unit_types(values: UnitScores, costs: UnitCosts) -> UnitScores:
    """Rescale each unit type so that the mean of value / cost over its units is 1."""
    scaled = {}
    for t in UNIT_TYPES:
        per_parameter = torch.cat([v.double() / costs.of(t)[i] for i, v in enumerate(values.of(t))])
        mean = float(per_parameter.mean())
        scaled[t] = [v.double() / mean for v in values.of(t)] if mean > 0 else list(values.of(t))
    return UnitScores(scaled[MLP], scaled[ATTN])


def _allocate_global(values: UnitScores, costs: UnitCosts, config: AllocationConfig, budget: float) -> KeepPlan:
    kept: dict[tuple[int, str], list[torch.Tensor]] = {}
    spent = 0
    candidates: list[_Block] = []
    for t in UNIT_TYPES:
        for layer, layer_values in enumerate(values.of(t)):
            blocks = _layer_blocks(layer, t, layer_values, costs.of(t)[layer], config)
            forced = _minimum_units(t, len(layer_values), config) // _block_size(t, config)
            forced = max(forced, 0)
            for block in blocks[:forced]:
                kept.setdefault((layer, t), []).append(block.indices)
                spent += block.cost
            candidates.extend(blocks[forced:])
    if spent > budget:
        raise MucraspError(
            f"ratio {config.ratio} is too high: the per-layer minimum keep alone needs "
            f"{spent / (budget / (1 - config.ratio)):.1%} of the prunable parameters"
        )
    # Value per parameter, best first; ties keep layer order so results are deterministic.
    candidates.sort(key=lambda b: b.value / b.cost, reverse=True)
    for block in candidates:
        if spent + block.cost <= budget:
            kept.setdefault((block.layer, block.unit_type), []).append(block.indices)
            spent += block.cost
    return _plan_from(kept, len(values.mlp))


def _allocate_uniform(values: UnitScores, costs: UnitCosts, config: AllocationConfig, budget: float) -> KeepPlan:
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


def _plan_from(kept: dict[tuple[int, str], list[torch.Tensor]], n_layers: int) -> KeepPlan:
    def gather(layer: int, t: str) -> torch.Tensor:
        chunks = kept.get((layer, t), [])
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)

    return KeepPlan([LayerKeep(gather(i, MLP), gather(i, ATTN)) for i in range(n_layers)])
