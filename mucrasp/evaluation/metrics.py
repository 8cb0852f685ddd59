"""Teacher-forced divergence of a pruned model from its dense original, on the dense model's CoT.

For every response token t of a dense trace, the dense and the pruned model each predict t from the
same prefix. Reported: mean KL(dense || pruned) over all response tokens and over the tokens in
pivot windows, the perplexity of the dense trace under the pruned model, and how often the pruned
model's top token is the dense model's (the per-step chance that greedy decoding stays on the dense
path; a trace is reproduced only if every step does, so answer agreement falls off as its power).
Against the dense model's top token rather than the trace's: a decoded trace re-encodes to slightly
different tokens, which would count against identical models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mucrasp.calibration.batches import CalibrationBatch


@dataclass
class DivergenceTotals:
    kl_sum: float = 0.0
    tokens: int = 0
    pivot_kl_sum: float = 0.0
    pivot_tokens: int = 0
    nll_sum: float = 0.0
    top1_matches: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {
            "cot_kl": self.kl_sum / max(self.tokens, 1),
            "pivot_kl": self.pivot_kl_sum / max(self.pivot_tokens, 1),
            "perplexity": math.exp(self.nll_sum / max(self.tokens, 1)),
            "next_token_match": self.top1_matches / max(self.tokens, 1),
            "cot_tokens": self.tokens,
            "pivot_tokens": self.pivot_tokens,
        }


@dataclass
class TokenDivergence:
    """Per response token of one batch: KL(dense || pruned), the pruned model's NLL and whether its top
    token is the dense model's, the token, pivot or not."""

    kl: torch.Tensor
    pruned_nll: torch.Tensor
    pruned_top1_matches: torch.Tensor
    token_ids: torch.Tensor
    in_pivot: torch.Tensor


@torch.no_grad()
def token_divergence(dense, pruned, batch: CalibrationBatch) -> TokenDivergence:
    # Position t-1 predicts token t, so shift the masks left by one against the logits.
    targets = batch.response_mask[1:]
    inputs = {name: value.to(dense.device) for name, value in batch.inputs.items()}
    dense_logp = F.log_softmax(dense(**inputs).logits[0, :-1].double().cpu(), dim=-1)[targets]
    pruned_logp = F.log_softmax(pruned(**inputs).logits[0, :-1].double().cpu(), dim=-1)[targets]
    token_ids = batch.input_ids[0, 1:][targets]
    return TokenDivergence(
        kl=(dense_logp.exp() * (dense_logp - pruned_logp)).sum(-1),
        pruned_nll=-pruned_logp.gather(1, token_ids[:, None])[:, 0],
        pruned_top1_matches=pruned_logp.argmax(-1) == dense_logp.argmax(-1),
        token_ids=token_ids,
        in_pivot=batch.pivot_mask[1:][targets],
    )


def accumulate_divergence(dense, pruned, batch: CalibrationBatch, totals: DivergenceTotals) -> None:
    divergence = token_divergence(dense, pruned, batch)
    totals.kl_sum += float(divergence.kl.sum())
    totals.tokens += len(divergence.kl)
    totals.pivot_kl_sum += float(divergence.kl[divergence.in_pivot].sum())
    totals.pivot_tokens += int(divergence.in_pivot.sum())
    totals.nll_sum += float(divergence.pruned_nll.sum())
    totals.top1_matches += int(divergence.pruned_top1_matches.sum())
