"""Magnitude: a unit's importance is the L2 norm of all the weights it owns.

The classic data-free baseline for structured pruning (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017), applied here to MLP channels and GQA groups.
"""

from __future__ import annotations

import torch

from mucrasp.scoring.base import ScoringContext, ScoringMethod, ScoringResult, normalize_per_unit_type
from mucrasp.scoring.registry import register_method
from mucrasp.units import UnitScores


def _group_sum(per_row: torch.Tensor, rows_per_unit: int) -> torch.Tensor:
    return per_row.reshape(-1, rows_per_unit).sum(dim=1)


@register_method
class MagnitudeMethod(ScoringMethod):
    name = "magnitude"
    citation = "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"

    @torch.no_grad()
    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)
        layers = adapter.decoder_layers(model)
        mlp, attn = [], []
        for i, layer in enumerate(layers):
            gate, up, down = adapter.mlp_projections(layer)
            squares = (
                gate.weight.double().pow(2).sum(1)
                + up.weight.double().pow(2).sum(1)
                + down.weight.double().pow(2).sum(0)
            )
            mlp.append(squares.sqrt())

            q_proj, k_proj, v_proj, o_proj = adapter.attention_projections(layer)
            q_rows = q_proj.weight.double().pow(2).sum(1) + o_proj.weight.double().pow(2).sum(0)
            kv_rows = k_proj.weight.double().pow(2).sum(1) + v_proj.weight.double().pow(2).sum(1)
            attn.append((_group_sum(q_rows, group * head_dim) + _group_sum(kv_rows, head_dim)).sqrt())
            context.progress("magnitude scores", i + 1, len(layers))
        return ScoringResult(normalize_per_unit_type(UnitScores(mlp, attn)))
