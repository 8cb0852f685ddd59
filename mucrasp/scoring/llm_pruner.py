"""LLM-Pruner: element-wise first-order Taylor importance |w ⊙ ∇ℓ|, summed over the coupled group.

Ma, Fang & Wang, "LLM-Pruner: On the Structural Pruning of Large Language Models", NeurIPS 2023.
Follows the reference `hf_prune.py` (`--block_wise --pruner_type taylor --taylor param_first`,
`grouping_strategy sum`):
- the coupled group of an MLP channel is its gate/up rows and down column; of a GQA group, its q/k/v
  rows (and biases) and o_proj columns; a unit's importance is Σ over the group of |w ⊙ g| (`param_first`);
- g is one gradient of the mean loss over every calibration token together (`gradient = "batch"`, the
  reference's single `loss.backward()` on its example batch), so the absolute value is taken after the
  samples' gradients are summed; `gradient = "per_sample"` sums per-sample |w ⊙ g_s| instead (our
  earlier variant, kept for comparison);
- the reference allocation (`default_layout = "ratio-per-layer-skip-ends"`): one ratio in every pruned
  layer, the first and last layers kept whole (`block_*_layer_start/end` 4 and 30 of 32, scaled to
  the model's depth; see mucrasp.allocation). `--layout global` gives our global knapsack instead.
Where ours differs from the reference: the loss counts response tokens only (the reference uses plain
LM loss on all tokens of bookcorpus text); KV heads go by GQA group; the ratio is solved so the
parameter budget matches the other methods'; no recovery LoRA here (the comparison is one-shot).
"""

from __future__ import annotations

from typing import Literal

import torch

from mucrasp.scoring.base import ScoringContext, ScoringResult, normalize_per_unit_type
from mucrasp.scoring.calibration_options import CalibratedBaselineConfig, baseline_batches
from mucrasp.scoring.options import method_config
from mucrasp.scoring.registry import register_method
from mucrasp.scoring.taylor import TaylorMethod
from mucrasp.scoring.taylor_hooks import (
    _zeros_like_widths,
    gradient_checkpointing,
    input_device,
    peak_memory,
    per_unit,
    response_token_losses,
    taylor_scores,
    unit_params,
)


class LlmPrunerConfig(CalibratedBaselineConfig):
    gradient: Literal["batch", "per_sample"] = "batch"  # batch: the reference's one gradient over all tokens


def batch_gradient_importance(model, adapter, batches, checkpointing: bool = False, progress=None):
    """Σ_group |w ⊙ ∇ℓ| with ℓ the mean response-token loss over all samples at once (gradients accumulate
    sample by sample, so memory is one sample's activations plus one gradient of the projections)."""
    specs = unit_params(model, adapter)
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    device = input_device(model, adapter)
    total_tokens = sum(int(b.response_mask.sum()) for b in batches)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for spec in specs:
            spec.param.requires_grad_(True)
        with gradient_checkpointing(model, checkpointing):
            for index, batch in enumerate(batches):
                inputs = {k: v.to(device) for k, v in batch.inputs.items()}
                losses = response_token_losses(model(**inputs, use_cache=False).logits, inputs["input_ids"])
                mask = batch.response_mask.to(losses.device)
                if bool(mask.any()):
                    (losses[mask].sum() / max(total_tokens, 1)).backward()
                if progress is not None:
                    progress("gradient pass", index + 1, len(batches))
        scores = _zeros_like_widths(model, adapter)
        for spec in specs:
            if spec.param.grad is not None:
                product = (spec.param.detach().double() * spec.param.grad.double()).abs()
                scores.of(spec.unit_type)[spec.layer] += per_unit(product, spec.axis, spec.span).cpu()
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
            p.grad = None
    return scores


@register_method
class LlmPrunerMethod(TaylorMethod):
    name = "llm-pruner"
    citation = "Ma, Fang & Wang, LLM-Pruner: On the Structural Pruning of Large Language Models, NeurIPS 2023"
    elementwise = True
    default_layout = "ratio-per-layer-skip-ends"
    config_class = LlmPrunerConfig

    def score(self, model, adapter, context: ScoringContext) -> ScoringResult:
        config = method_config(LlmPrunerConfig, context.options, self.name)
        batches = baseline_batches(self.name, model, adapter, context.calibration)
        if config.gradient == "per_sample":
            by_set, memory = taylor_scores(
                model,
                adapter,
                batches,
                {"loss": lambda b: b.response_mask},
                elementwise=True,
                checkpointing=config.gradient_checkpointing,
                progress=context.progress,
            )
            scores = by_set["loss"]
        else:
            with torch.enable_grad():
                scores = batch_gradient_importance(
                    model, adapter, batches, config.gradient_checkpointing, context.progress
                )
            memory = peak_memory()
        details = {"memory": memory, "samples": len(batches), "gradient": config.gradient}
        return ScoringResult(normalize_per_unit_type(scores), details)
