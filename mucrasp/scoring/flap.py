"""FLAP: fluctuation-based adaptive structured pruning with bias compensation.

An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI 2024.
Follows the reference `lib/prune.py` (`prune_flap`, metric WIFV, structure AL-AM):
- fluctuation of input channel j of down_proj / o_proj: `Var_tokens(X_j)·‖W_{:,j}‖²`; the attention
  metric is squared (`W_metric = metrics[...] ** 2` for o_proj);
- standardised per layer and per module (`standarlization`, axis 1): each layer's MLP channels and
  each layer's o_proj channels get their own z-scores (torch.std, unbiased, as the reference);
- attention: z-score each channel, then average per head (`reshape(-1, 128).mean`); a GQA group
  averages its heads, i.e. its channels;
- one global threshold over both unit types by parameter count (the reference's `compression_weight`):
  the values are `cost·(z − min z + ε)`, so the knapsack's value per parameter is the shifted z-score
  and it keeps the highest z first until the budget is spent;
- no per-layer floor (`per_layer_floor = False`): a layer keeps only the structural minimum, one
  block of MLP channels and `min_kv_groups` groups (a layer without heads cannot run in stock attention);
- bias compensation: the removed channels are replaced by their calibration mean, folded into a
  bias `b += W_{:,pruned}·mean(X_pruned)`. o_proj/down_proj have no bias in these families, so one
  is created. The bias is computed before slicing (it needs the removed columns).

The calibration means are part of the measured components (`per_layer`), so a scores file (and
the deployment chain, which always prunes from its score cache) carries what the compensation needs.
Where ours differs from the reference: the variance is the plain variance over all calibration tokens
(the reference's running update skips the first sample and weights samples, not tokens); a GQA group,
not a single head, is the attention unit; MLP channels go in blocks of `--align`.
"""

from __future__ import annotations

import torch
from torch import nn

from mucrasp.adapters.base import _complement, _expand
from mucrasp.errors import MucraspError
from mucrasp.params import unit_costs
from mucrasp.scoring.base import ScoreComponents, ScoringContext, ScoringMethod, ScoringResult
from mucrasp.scoring.calibration_options import baseline_batches
from mucrasp.scoring.input_stats import collect_input_statistics
from mucrasp.scoring.registry import register_method
from mucrasp.units import UnitScores


def _standardise(values: torch.Tensor) -> torch.Tensor:
    """The reference's `standarlization` for one layer's channels: (x − mean) / std, unbiased std."""
    std = values.std() if values.numel() > 1 else values.new_tensor(1.0)
    return (values - values.mean()) / (std if float(std) > 0 else values.new_tensor(1.0))


def channel_scores(model, adapter, stats, column_score) -> UnitScores:
    """One value per input channel of down_proj and of o_proj (not yet per group: FLAP averages z-scores)."""
    mlp, attn = [], []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        _, _, down = adapter.mlp_projections(layer)
        *_, o_proj = adapter.attention_projections(layer)
        mlp.append(column_score(down.weight.detach().double(), stats.down[i]).cpu())
        attn.append(column_score(o_proj.weight.detach().double(), stats.o_proj[i]).cpu())
    return UnitScores(mlp, attn)


def flap_unit_metrics(
    mlp_fluctuation: list[torch.Tensor], attn_fluctuation: list[torch.Tensor], channels_per_group: int
) -> UnitScores:
    """Per-layer z-scores of the channel metrics; attention squared first and averaged per GQA group after."""
    mlp = [_standardise(f.double()) for f in mlp_fluctuation]
    attn = [_standardise(f.double().pow(2)).reshape(-1, channels_per_group).mean(1) for f in attn_fluctuation]
    return UnitScores(mlp, attn)


def threshold_values(z: UnitScores, costs, eps: float = 1e-6) -> UnitScores:
    """`cost·(z − min z + ε)`, with one min over both unit types: value per parameter is then z shifted by
    the same amount everywhere, so ranking by it is the reference's single threshold on z."""
    floor = min(float(t.min()) for t in z.mlp + z.attn)
    return UnitScores(
        [(t - floor + eps) * cost for t, cost in zip(z.mlp, costs.mlp_channel)],
        [(t - floor + eps) * cost for t, cost in zip(z.attn, costs.attn_group)],
    )


MEANS = ("down_means", "o_proj_means")  # the calibration means the bias compensation needs


@register_method
class FlapMethod(ScoringMethod):
    name = "flap"
    needs_calibration = True
    citation = "An et al., Fluctuation-based Adaptive Structured Pruning for Large Language Models, AAAI 2024"
    balance_unit_types = False  # its per-layer z-scores are already its cross-type normalisation
    per_layer_floor = False  # the reference has none

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
        # Fluctuation per input channel: Var_tokens(X_j) * ||W_{:,j}||^2 (WIFV).
        fluctuation = channel_scores(
            model, adapter, stats, lambda weight, sums: sums.variance() * weight.pow(2).sum(0).cpu()
        )
        z = flap_unit_metrics(
            fluctuation.mlp, fluctuation.attn, adapter.head_dim(model.config) * adapter.group_size(model.config)
        )
        costs = unit_costs(model, adapter)
        values = threshold_values(z, costs)
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
