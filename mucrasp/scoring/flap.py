"""FLAP: fluctuation-based adaptive structured pruning with bias compensation.

An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI 2024.
- Fluctuation of input channel j of down_proj / o_proj: `Var_tokens(X_j)·‖W_{:,j}‖²`; a GQA group
  sums its channels.
- Per-unit-type z-score, then one global threshold: values are `cost·(z − min z + ε)`, so the
  knapsack's value per parameter is the shifted z-score and it keeps the highest z first.
- Bias compensation: the removed channels are replaced by their calibration mean, folded into a
  bias `b += W_{:,pruned}·mean(X_pruned)`. o_proj/down_proj have no bias in these families, so one
  is created. The bias is computed before slicing (it needs the removed columns).

The calibration means are part of the measured components (`per_layer`), so a scores file (and
the deployment chain, which always prunes from its score cache) carries what the compensation needs.
"""

from __future__ import annotations

import torch
from torch import nn

from mucrasp.adapters.base import _complement, _expand
from mucrasp.errors import MucraspError
from mucrasp.params import unit_costs
from mucrasp.scoring.base import ScoreComponents, ScoringContext, ScoringMethod, ScoringResult
from mucrasp.scoring.calibration_options import baseline_batches
from mucrasp.scoring.input_stats import collect_input_statistics, output_projection_scores
from mucrasp.scoring.registry import register_method
from mucrasp.units import UnitScores


def _zscore(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    flat = torch.cat(tensors)
    std = flat.std() if flat.numel() > 1 else flat.new_tensor(1.0)
    std = std if float(std) > 0 else flat.new_tensor(1.0)
    return [(t - flat.mean()) / std for t in tensors]


def _threshold_values(z: list[torch.Tensor], costs: list[int], eps: float = 1e-6) -> list[torch.Tensor]:
    floor = min(float(t.min()) for t in z)
    return [(t - floor + eps) * cost for t, cost in zip(z, costs)]


MEANS = ("down_means", "o_proj_means")  # the calibration means the bias compensation needs


@register_method
class FlapMethod(ScoringMethod):
    name = "flap"
    needs_calibration = True
    citation = "An et al., Fluctuation-based Adaptive Structured Pruning for Large Language Models, AAAI 2024"
    balance_unit_types = False  # its per-type z-scores are already its cross-type normalisation

    def components(self, model, adapter, context: ScoringContext) -> ScoreComponents:
        result = self.score(model, adapter, context)
        return ScoreComponents(
            self.name,
            {"values": result.values},
            details=result.details,
            per_layer={name: result.internals[name] for name in MEANS},
        )

    def fuse(self, components: ScoreComponents, context: ScoringContext) -> ScoringResult:
        internals = {name: components.per_layer[name] for name in MEANS if name in components.per_layer}
        return ScoringResult(components.unit_scores["values"], dict(components.details), internals)

    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        batches = baseline_batches(self.name, model, adapter, context.calibration)
        stats = collect_input_statistics(model, adapter, batches, context.progress)
        # Fluctuation: Var_tokens(X_j) * ||W_{:,j}||^2.
        fluctuation = output_projection_scores(
            model, adapter, stats, lambda weight, sums: sums.variance() * weight.pow(2).sum(0).cpu()
        )
        costs = unit_costs(model, adapter)
        values = UnitScores(
            _threshold_values(_zscore(fluctuation.mlp), costs.mlp_channel),
            _threshold_values(_zscore(fluctuation.attn), costs.attn_group),
        )
        internals = {"down_means": [s.mean() for s in stats.down], "o_proj_means": [s.mean() for s in stats.o_proj]}
        return ScoringResult(values, {"samples": len(batches), "bias_compensation": True}, internals)

    def before_slicing(self, model, adapter, plan, result: ScoringResult) -> None:
        if "down_means" not in result.internals:
            raise MucraspError(
                "FLAP's bias compensation needs the calibration means, which this scores file lacks; "
                "score it again with this version, or prune with --calib"
            )
        head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)
        biases = []
        for i, (layer, keep) in enumerate(zip(adapter.decoder_layers(model), plan.layers)):
            _, _, down = adapter.mlp_projections(layer)
            *_, o_proj = adapter.attention_projections(layer)
            mlp_drop = _complement(keep.mlp_channels, down.in_features)
            n_groups = o_proj.in_features // (head_dim * group)
            o_drop = _expand(_expand(_complement(keep.attn_groups, n_groups), group), head_dim)
            biases.append(
                (
                    _compensation(down, mlp_drop, result.internals["down_means"][i]),
                    _compensation(o_proj, o_drop, result.internals["o_proj_means"][i]),
                )
            )
        result.internals["compensation"] = biases

    def after_slicing(self, model, adapter, plan, result: ScoringResult) -> None:
        for layer, (down_bias, o_bias) in zip(adapter.decoder_layers(model), result.internals.pop("compensation")):
            _, _, down = adapter.mlp_projections(layer)
            *_, o_proj = adapter.attention_projections(layer)
            _add_bias(down, down_bias)
            _add_bias(o_proj, o_bias)


def _compensation(linear: nn.Linear, dropped: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    weight = linear.weight.detach()
    return weight[:, dropped.to(weight.device)].double() @ means[dropped].to(weight.device)


def _add_bias(linear: nn.Linear, extra: torch.Tensor) -> None:
    extra = extra.to(dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        if linear.bias is None:
            linear.bias = nn.Parameter(extra.clone())
        else:
            linear.bias.add_(extra)
