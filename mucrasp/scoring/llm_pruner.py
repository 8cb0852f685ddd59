"""LLM-Pruner: element-wise first-order Taylor importance |w ⊙ ∇ℓ|, summed over the coupled group.

Ma, Fang & Wang, "LLM-Pruner: On the Structural Pruning of Large Language Models", NeurIPS 2023.
The coupled group of an MLP channel is its gate/up rows and down column; of a GQA group, its
q/k/v rows (and biases) and o_proj columns. The first-order "element1" variant, aggregated by sum,
with the absolute value per element and per sample; no recovery LoRA (the comparison is one-shot).
"""

from __future__ import annotations

from mucrasp.scoring.registry import register_method
from mucrasp.scoring.taylor import TaylorMethod


@register_method
class LlmPrunerMethod(TaylorMethod):
    name = "llm-pruner"
    citation = "Ma, Fang & Wang, LLM-Pruner: On the Structural Pruning of Large Language Models, NeurIPS 2023"
    elementwise = True
