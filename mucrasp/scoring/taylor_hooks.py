"""First-order Taylor attribution per unit, from activations and their gradients.

For a unit u owning weights w_u, removing it changes the loss by about -w_uᵀ∇_{w_u}ℓ. For a linear
y = x Wᵀ + b that sum needs no weight gradient at all:
- a unit owning output rows j (gate/up/q/k/v): Σ_j (W_j·∇W_j + b_j ∇b_j) = Σ_t Σ_j y_tj ∂ℓ/∂y_tj;
- a unit owning input columns i (down/o_proj): Σ_i W_:i·∇W_:i = Σ_t Σ_i x_ti ∂ℓ/∂x_ti.
So `UnitTaylor` hooks each projection's output (or input) tensor and folds `y ⊙ ∂ℓ/∂y` (or `x ⊙ ∂ℓ/∂x`)
into fp64 per-unit sums as the backward pass goes by. No parameter needs `requires_grad` (only the
input embeddings' output does), so backward computes no weight gradient: no gradient buffer of any
size exists, the backward does about half the work of a training step, and weights that accelerate
keeps off the device (CPU or disk offload, `device_map`) are never touched by the hooks.

The element-wise form (Σ_u |w⊙g|, LLM-Pruner) does need each weight's gradient: `TaylorAccumulator`
keeps the post-accumulate-grad hooks, which fold `w ⊙ grad` per unit and drop the gradient at once.

The absolute value is taken per sample and per loss (|Σ w g| over the sample's token set): a
per-token absolute value would need one backward pass per token. A batch of samples would sum the
gradients of different samples before the absolute value, which changes the score's definition, so
MuCRASP and taylor run one sample per forward (see README, "Real-size models").
"""

from __future__ import annotations

import contextlib
import resource
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.calibration.batches import CalibrationBatch
from mucrasp.units import ATTN, MLP, UnitScores


class ScoringWarning(UserWarning):
    """Something the user should know about a scoring run (printed as one `warning:` line by the CLI)."""


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


class UnitTaylor:
    """Per-unit |Σ_u w⊙∇w| for named token sets from activation hooks (see the module docstring); the same
    interface as `TaylorAccumulator` (`with attached():`, `backward(loss, key)`, `totals`)."""

    elementwise = False

    def __init__(self, model: PreTrainedModel, adapter: ArchitectureAdapter):
        self.model, self.adapter = model, adapter
        self.totals: dict[str, UnitScores] = {}
        self._pending = _zeros_like_widths(model, adapter)

    def _fold(self, unit_type: str, layer: int, span: int, value: torch.Tensor, grad: torch.Tensor) -> None:
        # fp64 sum over tokens of value ⊙ grad, one number per row/column, then per unit
        per_channel = (value.double() * grad.double()).reshape(-1, value.shape[-1]).sum(0)
        self._pending.of(unit_type)[layer] += per_channel.reshape(-1, span).sum(1).cpu()

    def _on_output(self, unit_type: str, layer: int, span: int):
        def hook(module, args, output):
            if output.requires_grad:
                kept = output.detach()
                output.register_hook(lambda grad: self._fold(unit_type, layer, span, kept, grad))

        return hook

    def _on_input(self, unit_type: str, layer: int, span: int):
        # The inputs of down_proj and o_proj feed nothing else, so their gradient is this projection's.
        def hook(module, args):
            x = args[0]
            if x.requires_grad:
                kept = x.detach()
                x.register_hook(lambda grad: self._fold(unit_type, layer, span, kept, grad))

        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator["UnitTaylor"]:
        model, adapter = self.model, self.adapter
        saved = {name: p.requires_grad for name, p in model.named_parameters()}
        head_dim, group = adapter.head_dim(model.config), adapter.group_size(model.config)
        handles = []
        try:
            for p in model.parameters():
                p.requires_grad_(False)
                p.grad = None
            # The graph starts at the input embeddings' output: everything after it gets activation gradients.
            handles.append(
                adapter.embed_tokens(model).register_forward_hook(lambda module, args, output: output.requires_grad_())
            )
            for i, layer in enumerate(adapter.decoder_layers(model)):
                gate, up, down = adapter.mlp_projections(layer)
                q_proj, k_proj, v_proj, o_proj = adapter.attention_projections(layer)
                for linear, unit_type, span in (
                    (gate, MLP, 1),
                    (up, MLP, 1),
                    (q_proj, ATTN, group * head_dim),
                    (k_proj, ATTN, head_dim),
                    (v_proj, ATTN, head_dim),
                ):
                    handles.append(linear.register_forward_hook(self._on_output(unit_type, i, span)))
                for linear, unit_type, span in ((down, MLP, 1), (o_proj, ATTN, group * head_dim)):
                    handles.append(linear.register_forward_pre_hook(self._on_input(unit_type, i, span)))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for name, p in model.named_parameters():
                p.requires_grad_(saved[name])
                p.grad = None

    backward = TaylorAccumulator.backward


def input_device(model: PreTrainedModel, adapter: ArchitectureAdapter) -> torch.device:
    """Where a model's inputs go: the input embeddings' device (CPU when accelerate keeps them off-device)."""
    weight = adapter.embed_tokens(model).weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


# ---- the memory model for the gradient pass ---------------------------------------------------------------
# Activations autograd keeps per token and decoder layer, in elements of the run dtype: the residual stream,
# the norms' outputs, q/k/v/o and the attention output (≈ 8 hidden widths), and gate, up, act and their product
# (4 MLP widths); logits in fp32 and their log-softmax (3 vocab widths) once.
_HIDDEN_WIDTHS_PER_LAYER = 8
_MLP_WIDTHS_PER_LAYER = 4
_VOCAB_WIDTHS_FP32 = 3
#: What the process needs besides weights and activations (interpreter, torch, tokenizer, hooks' fp64 sums).
RUNTIME_ALLOWANCE_BYTES = 2 * 2**30


def activation_bytes(model: PreTrainedModel, adapter: ArchitectureAdapter, tokens: int) -> int:
    """Estimated bytes autograd keeps for one sample of `tokens` tokens in a full (uncheckpointed) pass."""
    text = adapter.text_config(model.config)
    element = next(model.parameters()).element_size()
    mlp = max(m for m, _ in adapter.layer_widths(model))
    per_layer = tokens * (_HIDDEN_WIDTHS_PER_LAYER * text.hidden_size + _MLP_WIDTHS_PER_LAYER * mlp) * element
    return per_layer * len(adapter.decoder_layers(model)) + tokens * text.vocab_size * 4 * _VOCAB_WIDTHS_FP32


def weight_bytes(model: PreTrainedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")


def checkpointing_needed(
    model: PreTrainedModel, adapter: ArchitectureAdapter, tokens: int, available_bytes: int | None
) -> tuple[bool, str]:
    """Whether the gradient pass needs gradient checkpointing to fit, and why (a line for the log)."""
    need = activation_bytes(model, adapter, tokens)
    if available_bytes is None:
        return False, "free memory unknown: gradient checkpointing off"
    if need + RUNTIME_ALLOWANCE_BYTES <= available_bytes:
        return False, f"activations {need / 2**30:.2f} GiB fit in {available_bytes / 2**30:.1f} GiB free"
    return True, (
        f"gradient checkpointing on: the longest sample ({tokens} tokens) needs about {need / 2**30:.1f} GiB "
        f"of activations, {available_bytes / 2**30:.1f} GiB is free besides the weights"
    )


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
    checkpointing: bool | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    before_forward: Callable[[CalibrationBatch], None] | None = None,
) -> tuple[dict[str, UnitScores], dict[str, float]]:
    """One forward per sample and one backward per token set; each loss is the mean over its set.

    `checkpointing`: True forces gradient checkpointing, False/None lets the memory model decide (it is
    turned on only when the longest sample's activations would not fit beside the weights; the returned
    report says which and why).
    """
    from mucrasp.devices import available_memory_bytes

    accumulator = TaylorAccumulator(model, adapter, True) if elementwise else UnitTaylor(model, adapter)
    device = input_device(model, adapter)
    longest = max((int(b.inputs["input_ids"].shape[-1]) for b in batches), default=0)
    if checkpointing:
        use_checkpointing, why = True, "gradient checkpointing on: asked for"
    else:
        use_checkpointing, why = checkpointing_needed(model, adapter, longest, available_memory_bytes(device))
    if use_checkpointing:
        warnings.warn(why, ScoringWarning, stacklevel=2)
    started = time.perf_counter()
    with accumulator.attached(), gradient_checkpointing(model, use_checkpointing):
        for index, batch in enumerate(batches):
            if before_forward is not None:
                before_forward(batch)
            inputs = {k: v.to(device) for k, v in batch.inputs.items()}
            logits = model(**inputs, use_cache=False).logits
            token_losses = response_token_losses(logits, inputs["input_ids"])
            del logits
            losses = []
            for key, select in token_sets.items():
                mask = select(batch).to(token_losses.device)
                if bool(mask.any()):
                    losses.append((key, token_losses[mask].mean()))
            for n, (key, loss) in enumerate(losses):
                accumulator.backward(loss, key, retain_graph=n + 1 < len(losses))
            if progress is not None:
                progress("gradient pass", index + 1, len(batches))
    seconds = time.perf_counter() - started
    zero = _zeros_like_widths(model, adapter)
    report = peak_memory() | {
        "gradient_checkpointing": use_checkpointing,
        "checkpointing_reason": why,
        "run_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds_per_sample": round(seconds / max(len(batches), 1), 3),
    }
    return {key: accumulator.totals.get(key, zero) for key in token_sets}, report
