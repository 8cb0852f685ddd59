"""The prunable units of a decoder and the per-layer keep plan.

Two unit types per decoder layer:
- an MLP channel j: row j of gate_proj and up_proj, column j of down_proj;
- an attention GQA group g: KV head g, the query heads that share it, their o_proj columns and the
  q/k/v bias slices. Whole groups go, so the query/KV ratio and stock attention code survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MLP = "mlp"
ATTN = "attn"
UNIT_TYPES = (MLP, ATTN)


@dataclass
class LayerKeep:
    """Sorted indices of the units one decoder layer keeps."""

    mlp_channels: torch.Tensor
    attn_groups: torch.Tensor

    def __post_init__(self) -> None:
        self.mlp_channels = torch.as_tensor(self.mlp_channels, dtype=torch.long).sort().values
        self.attn_groups = torch.as_tensor(self.attn_groups, dtype=torch.long).sort().values

    def kept(self, unit_type: str) -> torch.Tensor:
        return self.mlp_channels if unit_type == MLP else self.attn_groups


@dataclass
class KeepPlan:
    """What every decoder layer keeps; the input of slicing and the record in pruning.json."""

    layers: list[LayerKeep] = field(default_factory=list)

    def widths(self) -> list[dict[str, int]]:
        return [{"mlp_channels": len(layer.mlp_channels), "kv_groups": len(layer.attn_groups)} for layer in self.layers]

    def is_uniform(self) -> bool:
        return len({(w["mlp_channels"], w["kv_groups"]) for w in self.widths()}) <= 1

    def to_json(self) -> list[dict[str, list[int]]]:
        return [
            {"mlp_channels": layer.mlp_channels.tolist(), "kv_groups": layer.attn_groups.tolist()}
            for layer in self.layers
        ]

    @classmethod
    def from_json(cls, payload: list[dict[str, list[int]]]) -> "KeepPlan":
        return cls([LayerKeep(entry["mlp_channels"], entry["kv_groups"]) for entry in payload])

    @classmethod
    def keep_all(cls, layer_widths: list[tuple[int, int]]) -> "KeepPlan":
        return cls([LayerKeep(torch.arange(mlp), torch.arange(groups)) for mlp, groups in layer_widths])


@dataclass
class UnitScores:
    """One importance value per unit: `mlp[i]` has a value per channel of layer i, `attn[i]` per group."""

    mlp: list[torch.Tensor]
    attn: list[torch.Tensor]

    def of(self, unit_type: str) -> list[torch.Tensor]:
        return self.mlp if unit_type == MLP else self.attn

    def map(self, fn) -> "UnitScores":
        return UnitScores([fn(t) for t in self.mlp], [fn(t) for t in self.attn])
