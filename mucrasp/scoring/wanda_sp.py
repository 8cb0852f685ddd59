"""Wanda-SP: structured Wanda, `s_j = mean_i |W_ij|·‖X_j‖₂` on the inputs of down_proj and o_proj.

Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024.
The structured variant (Wanda-SP) is from An et al., "Fluctuation-based Adaptive Structured
Pruning for Large Language Models" (FLAP), AAAI 2024; its reference is `prune_wanda_sp` in FLAP's
`lib/prune.py`. ‖X_j‖₂ runs over every token of the calibration set. A head's score is the sum over
its channels, a GQA group's the sum over its heads. The reference prunes the same ratio of heads and of
MLP channels in every layer: the `ratio-per-layer` layout (mucrasp.allocation), with the ratio solved
so the parameter budget matches the other methods'.
Where ours differs from the reference: the reference prunes layer by layer and measures each layer's
inputs on the already pruned earlier layers; here the statistics come from one pass of the dense model
(score once, prune many), and `--reconstruct` is the way to make the pruned layers' inputs count.
"""

from __future__ import annotations

from mucrasp.scoring.base import ScoringContext, ScoringMethod, ScoringResult, normalize_per_unit_type
from mucrasp.scoring.calibration_options import baseline_batches
from mucrasp.scoring.input_stats import collect_input_statistics, output_projection_scores
from mucrasp.scoring.registry import register_method


@register_method
class WandaSpMethod(ScoringMethod):
    name = "wanda-sp"
    needs_calibration = True
    default_layout = "ratio-per-layer"
    citation = "Sun et al., Wanda, ICLR 2024; An et al., FLAP (Wanda-SP variant), AAAI 2024"

    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        batches = baseline_batches(self.name, model, adapter, context.calibration)
        stats = collect_input_statistics(model, adapter, batches, context.progress)
        # s_j = mean_i |W_ij| * ||X_j||_2.
        scores = output_projection_scores(
            model, adapter, stats, lambda weight, sums: weight.abs().mean(0).cpu() * sums.norm()
        )
        return ScoringResult(normalize_per_unit_type(scores), {"samples": len(batches)})
