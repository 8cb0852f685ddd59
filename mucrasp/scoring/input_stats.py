"""Per-channel statistics of the inputs of down_proj and o_proj over calibration tokens.

Wanda-SP needs ‖X_j‖₂ and FLAP needs mean and variance of X_j; both read the same running sums,
collected with forward pre-hooks in one no-grad pass over every token of every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.calibration.batches import CalibrationBatch
from mucrasp.units import UnitScores


@dataclass
class ChannelSums:
    total: torch.Tensor
    squares: torch.Tensor
    count: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        self.total += x.sum(0)
        self.squares += x.pow(2).sum(0)
        self.count += x.shape[0]

    def norm(self) -> torch.Tensor:
        return self.squares.sqrt()

    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    def variance(self) -> torch.Tensor:
        return (self.squares / max(self.count, 1) - self.mean().pow(2)).clamp_min(0)


@dataclass
class InputStatistics:
    down: list[ChannelSums]  # per layer, over MLP channels
    o_proj: list[ChannelSums]  # per layer, over attention output channels (heads × head_dim)


@torch.no_grad()
def collect_input_statistics(
    model: PreTrainedModel, adapter: ArchitectureAdapter, batches: list[CalibrationBatch], progress=None
) -> InputStatistics:
    layers = adapter.decoder_layers(model)
    stats = InputStatistics([], [])
    handles = []
    for layer in layers:
        _, _, down = adapter.mlp_projections(layer)
        *_, o_proj = adapter.attention_projections(layer)
        for linear, bucket in ((down, stats.down), (o_proj, stats.o_proj)):
            sums = ChannelSums(
                torch.zeros(linear.in_features, dtype=torch.float64),
                torch.zeros(linear.in_features, dtype=torch.float64),
            )
            bucket.append(sums)
            handles.append(linear.register_forward_pre_hook(lambda module, args, sums=sums: sums.add(args[0])))
    from mucrasp.scoring.taylor_hooks import input_device

    device = input_device(model, adapter)
    try:
        for index, batch in enumerate(batches):
            model(**{k: v.to(device) for k, v in batch.inputs.items()}, use_cache=False)
            if progress is not None:
                progress("activation statistics", index + 1, len(batches))
    finally:
        for handle in handles:
            handle.remove()
    return stats


def per_group(per_channel: torch.Tensor, channels_per_group: int) -> torch.Tensor:
    return per_channel.reshape(-1, channels_per_group).sum(1)


ColumnScore = Callable[[torch.Tensor, ChannelSums], torch.Tensor]  # (weight, input stats) -> per input column


def output_projection_scores(
    model: PreTrainedModel, adapter: ArchitectureAdapter, stats: InputStatistics, column_score: ColumnScore
) -> UnitScores:
    """Per-unit scores from the input columns of down_proj (MLP channels) and o_proj (summed per GQA group),
    the shape shared by the activation-based baselines (Wanda-SP, FLAP)."""
    channels_per_group = adapter.head_dim(model.config) * adapter.group_size(model.config)
    mlp, attn = [], []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        _, _, down = adapter.mlp_projections(layer)
        *_, o_proj = adapter.attention_projections(layer)
        mlp.append(column_score(down.weight.detach().double(), stats.down[i]).cpu())
        attn.append(per_group(column_score(o_proj.weight.detach().double(), stats.o_proj[i]).cpu(), channels_per_group))
    return UnitScores(mlp, attn)
