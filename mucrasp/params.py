"""Parameter counts, and the costs that define the pruning ratio.

The ratio is the fraction of the decoder's prunable parameters (attention + MLP projections) that
is removed. `prunable` is the sum of unit costs, so the ratio the knapsack targets and the ratio
reported are the same number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter


@dataclass(frozen=True)
class UnitCosts:
    """Parameters one unit carries, per decoder layer."""

    mlp_channel: list[int]
    attn_group: list[int]

    def of(self, unit_type: str) -> list[int]:
        return self.mlp_channel if unit_type == "mlp" else self.attn_group


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    decoder: int  # the language model's decoder layers (attention, MLP, norms)
    prunable: int  # attention + MLP projections: the base of the pruning ratio

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def unit_costs(model: PreTrainedModel, adapter: ArchitectureAdapter) -> UnitCosts:
    layers = adapter.decoder_layers(model)
    return UnitCosts(
        mlp_channel=[adapter.mlp_channel_cost(layer) for layer in layers],
        attn_group=[adapter.attn_group_cost(layer, model.config) for layer in layers],
    )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(model: PreTrainedModel, adapter: ArchitectureAdapter) -> ParameterCounts:
    costs = unit_costs(model, adapter)
    widths = adapter.layer_widths(model)
    prunable = sum(
        mlp * c_mlp + groups * c_attn
        for (mlp, groups), c_mlp, c_attn in zip(widths, costs.mlp_channel, costs.attn_group)
    )
    return ParameterCounts(
        total=_numel(model),
        decoder=sum(_numel(layer) for layer in adapter.decoder_layers(model)),
        prunable=prunable,
    )
