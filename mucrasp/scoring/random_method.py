"""Random: seeded uniform values, the floor every method must beat.

The standard sanity baseline of the pruning literature (e.g. Blalock et al., "What is the State of
Neural Network Pruning?", MLSys 2020). Values are scaled by unit cost so that the knapsack's value
per parameter is uniform noise across unit types too.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict

from mucrasp.params import unit_costs
from mucrasp.scoring.base import ScoringContext, ScoringMethod, ScoringResult
from mucrasp.scoring.options import method_config
from mucrasp.scoring.registry import register_method
from mucrasp.units import UnitScores
from mucrasp.validation import JobConfig


class RandomConfig(JobConfig):
    model_config = ConfigDict(frozen=True)

    seed: int = 0


@register_method
class RandomMethod(ScoringMethod):
    name = "random"
    citation = "Blalock et al., What is the State of Neural Network Pruning?, MLSys 2020"
    config_class = RandomConfig

    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        config = method_config(RandomConfig, context.options, self.name)
        generator = torch.Generator().manual_seed(config.seed)
        costs = unit_costs(model, adapter)
        widths = adapter.layer_widths(model)
        mlp = [
            torch.rand(m, generator=generator, dtype=torch.float64) * costs.mlp_channel[i]
            for i, (m, _) in enumerate(widths)
        ]
        attn = [
            torch.rand(g, generator=generator, dtype=torch.float64) * costs.attn_group[i]
            for i, (_, g) in enumerate(widths)
        ]
        return ScoringResult(UnitScores(mlp, attn), {"seed": config.seed})
