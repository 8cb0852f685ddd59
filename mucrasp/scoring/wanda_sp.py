"""Wanda-SP: structured Wanda, `s_j = mean_i |W_ij|·‖X_j‖₂` on the inputs of down_proj and o_proj.

Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024.
The structured variant (Wanda-SP) is from An et al., "Fluctuation-based Adaptive Structured
Pruning for Large Language Models" (FLAP), AAAI 2024. ‖X_j‖₂ runs over every token of the
calibration set. A head's score is the sum over its channels, a GQA group's the sum over its
heads. The paper prunes with the same ratio in every layer, hence the uniform default layout.
"""

from __future__ import annotations

from mucrasp.scoring.base import ScoringContext, ScoringMethod, ScoringResult, normalize_per_unit_type
from mucrasp.scoring.calibration_options import baseline_batches
from mucrasp.scoring.input_stats import collect_input_statistics, per_group
from mucrasp.scoring.registry import register_method
from mucrasp.units import UnitScores


@register_method
class WandaSpMethod(ScoringMethod):
    name = "wanda-sp"
    needs_calibration = True
    default_layout = "uniform"
    citation = "Sun et al., Wanda, ICLR 2024; An et al., FLAP (Wanda-SP variant), AAAI 2024"

    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        batches = baseline_batches(self.name, model, adapter, context.calibration)
        stats = collect_input_statistics(model, adapter, batches, context.progress)
        channels_per_group = adapter.head_dim(model.config) * adapter.group_size(model.config)
        mlp, attn = [], []
        for i, layer in enumerate(adapter.decoder_layers(model)):
            _, _, down = adapter.mlp_projections(layer)
            *_, o_proj = adapter.attention_projections(layer)
            mlp.append(down.weight.detach().double().abs().mean(0).cpu() * stats.down[i].norm())
            channel = o_proj.weight.detach().double().abs().mean(0).cpu() * stats.o_proj[i].norm()
            attn.append(per_group(channel, channels_per_group))
        return ScoringResult(normalize_per_unit_type(UnitScores(mlp, attn)), {"samples": len(batches)})
