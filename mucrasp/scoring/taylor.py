"""Taylor: first-order attribution |w_uᵀ∇ℓ| of each unit on the plain LM loss.

Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019. The loss is the
mean cross-entropy over all response tokens (the prompt is context, as in MuCRASP), with no pivot
weighting: this is MuCRASP's A_global alone, normalised per unit type.
"""

from __future__ import annotations

from mucrasp.scoring.base import ScoringContext, ScoringMethod, ScoringResult, normalize_per_unit_type
from mucrasp.scoring.calibration_options import CalibratedBaselineConfig, baseline_batches
from mucrasp.scoring.options import method_config
from mucrasp.scoring.registry import register_method
from mucrasp.scoring.taylor_hooks import taylor_scores


@register_method
class TaylorMethod(ScoringMethod):
    name = "taylor"
    needs_calibration = True
    citation = "Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019"
    config_class = CalibratedBaselineConfig
    elementwise = False

    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        config = method_config(CalibratedBaselineConfig, context.options, self.name)
        batches = baseline_batches(self.name, model, adapter, context.calibration)
        scores, memory = taylor_scores(
            model,
            adapter,
            batches,
            {"loss": lambda b: b.response_mask},
            elementwise=self.elementwise,
            checkpointing=config.gradient_checkpointing,
            progress=context.progress,
        )
        return ScoringResult(normalize_per_unit_type(scores["loss"]), {"memory": memory, "samples": len(batches)})
