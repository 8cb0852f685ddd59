"""First-order Taylor attribution per unit, accumulated in backward hooks.

For a unit u owning weights w_u, removing it changes the loss by about -w_uᵀ∇_{w_u}ℓ. Each
projection weight gets a post-accumulate-grad hook that folds `w ⊙ grad` into one number per unit
and then drops the gradient, so at no point does the run hold a gradient copy of the model: only
the projection being back-propagated through has a `.grad`, and only until its hook returns.
Every other parameter has `requires_grad` switched off for the pass.

The absolute value is taken per sample and per loss (|Σ w g| over the sample's token set): a
per-token absolute value would need one backward pass per token.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.calibration.batches import CalibrationBatch
from mucrasp.units import ATTN, MLP, UnitScores

TokenSelector = Callable[[CalibrationBatch], torch.Tensor]  # bool mask over positions


@dataclass(frozen=True)
class UnitParam:
    """A parameter whose rows (axis 0) or columns (axis 1) belong to units, `span` per unit."""

    param: nn.Parameter
    layer: int
    unit_type: str
    axis: int
    span: int


def unit_params(model: PreTrainedModel, adapter: ArchitectureAdapter) -> list[UnitParam]:
    head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)
    out = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        gate, up, down = adapter.mlp_projections(layer)
        q_proj, k_proj, v_proj, o_proj = adapter.attention_projections(layer)
        spec = [
            (gate, MLP, 0, 1),
            (up, MLP, 0, 1),
            (down, MLP, 1, 1),
            (q_proj, ATTN, 0, group * head_dim),
            (k_proj, ATTN, 0, head_dim),
            (v_proj, ATTN, 0, head_dim),
            (o_proj, ATTN, 1, group * head_dim),
        ]
        for linear, unit_type, axis, span in spec:
            out.append(UnitParam(linear.weight, i, unit_type, axis, span))
            if linear.bias is not None and axis == 0:  # an output bias belongs to the unit owning the row
                out.append(UnitParam(linear.bias, i, unit_type, 0, span))
    return out


def per_unit(values: torch.Tensor, axis: int, span: int) -> torch.Tensor:
    """Sum an elementwise tensor over each unit's rows (axis 0) or columns (axis 1)."""
    if axis == 1:
        values = values.sum(dim=0)
    elif values.dim() == 2:
        values = values.sum(dim=1)
    return values.reshape(-1, span).sum(dim=1)


def _zeros_like_widths(model: PreTrainedModel, adapter: ArchitectureAdapter) -> UnitScores:
    widths = adapter.layer_widths(model)
    return UnitScores(
        [torch.zeros(m, dtype=torch.float64) for m, _ in widths],
        [torch.zeros(g, dtype=torch.float64) for _, g in widths],
    )


class TaylorAccumulator:
    """Per-unit Taylor scores for named token sets; use `with accumulator.attached():`.

    `elementwise=False`: |Σ_u w⊙g| per unit (the unit-level Taylor of MuCRASP and `taylor`).
    `elementwise=True`: Σ_u |w⊙g| (LLM-Pruner's element-wise importance summed over the group).
    """

    def __init__(self, model: PreTrainedModel, adapter: ArchitectureAdapter, elementwise: bool = False):
        self.model, self.adapter, self.elementwise = model, adapter, elementwise
        self.params = unit_params(model, adapter)
        self.totals: dict[str, UnitScores] = {}
        self._pending = _zeros_like_widths(model, adapter)

    def _hook(self, spec: UnitParam) -> Callable[[torch.Tensor], None]:
        def fold(param: torch.Tensor) -> None:
            product = param.detach().double() * param.grad.double()
            if self.elementwise:
                product = product.abs()
            self._pending.of(spec.unit_type)[spec.layer] += per_unit(product, spec.axis, spec.span).cpu()
            param.grad = None  # used; drop it now so no full gradient ever exists

        return fold

    @contextlib.contextmanager
    def attached(self) -> Iterator["TaylorAccumulator"]:
        saved = {name: p.requires_grad for name, p in self.model.named_parameters()}
        handles = []
        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
                p.grad = None
            for spec in self.params:
                spec.param.requires_grad_(True)
                handles.append(spec.param.register_post_accumulate_grad_hook(self._hook(spec)))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for name, p in self.model.named_parameters():
                p.requires_grad_(saved[name])
                p.grad = None

    def backward(self, loss: torch.Tensor, key: str, retain_graph: bool = False) -> None:
        """Back-propagate one loss and add its per-unit attribution to the total under `key`."""
        loss.backward(retain_graph=retain_graph)
        contribution = self._pending if self.elementwise else self._pending.map(torch.abs)
        total = self.totals.get(key)
        self.totals[key] = (
            contribution
            if total is None
            else UnitScores(
                [a + b for a, b in zip(total.mlp, contribution.mlp)],
                [a + b for a, b in zip(total.attn, contribution.attn)],
            )
        )
        self._pending = _zeros_like_widths(self.model, self.adapter)


def response_token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every token given its prefix, aligned to the token's position (position 0: 0)."""
    shifted = torch.nn.functional.cross_entropy(logits[0, :-1].float(), input_ids[0, 1:], reduction="none")
    return torch.cat([shifted.new_zeros(1), shifted])


def peak_memory() -> dict[str, float]:
    """Peak memory so far: the accelerator's allocator when there is one, else the process RSS."""
    report = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        report["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report


@contextlib.contextmanager
def gradient_checkpointing(model: PreTrainedModel, enabled: bool) -> Iterator[None]:
    """Recompute activations in backward; transformers only checkpoints in training mode."""
    if not enabled:
        yield
        return
    was_training = model.training
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()
        model.train(was_training)


def taylor_scores(
    model: PreTrainedModel,
    adapter: ArchitectureAdapter,
    batches: list[CalibrationBatch],
    token_sets: dict[str, TokenSelector],
    elementwise: bool = False,
    checkpointing: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    before_forward: Callable[[CalibrationBatch], None] | None = None,
) -> tuple[dict[str, UnitScores], dict[str, float]]:
    """One forward per sample and one backward per token set; each loss is the mean over its set."""
    accumulator = TaylorAccumulator(model, adapter, elementwise)
    device = next(model.parameters()).device
    with accumulator.attached(), gradient_checkpointing(model, checkpointing):
        for index, batch in enumerate(batches):
            if before_forward is not None:
                before_forward(batch)
            inputs = {k: v.to(device) for k, v in batch.inputs.items()}
            logits = model(**inputs, use_cache=False).logits
            token_losses = response_token_losses(logits, inputs["input_ids"])
            del logits
            losses = []
            for key, select in token_sets.items():
                mask = select(batch).to(device)
                if bool(mask.any()):
                    losses.append((key, token_losses[mask].mean()))
            for n, (key, loss) in enumerate(losses):
                accumulator.backward(loss, key, retain_graph=n + 1 < len(losses))
            if progress is not None:
                progress("gradient pass", index + 1, len(batches))
    zero = _zeros_like_widths(model, adapter)
    return {key: accumulator.totals.get(key, zero) for key in token_sets}, peak_memory()
