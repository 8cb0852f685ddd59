"""One-shot reconstruction: refit each layer's o_proj and down_proj so the pruned layer's output matches the dense one.

After units are removed, every decoder layer is sliced and then refitted in order, layer by layer
(the sequential scheme of SparseGPT and SlimGPT): layer i is fitted on the hidden states that the
already pruned and refitted layers 0..i-1 produce, and its target is the dense model's own output
for layer i on the dense hidden states. So a refit also absorbs the drift the earlier layers left in
the residual stream, not only the layer's own loss.

For a pre-norm residual layer `h_mid = h_in + o_proj(a)`, `h_out = h_mid + down_proj(m)`:
- o_proj is fitted on the pruned attention output `a_p` to `h_mid_dense − h_in_pruned`;
- then, with the new o_proj in place, down_proj on the pruned MLP input `m_p` to `h_out_dense − h_mid_pruned`.
Each fit is ridge least squares with an intercept (a bias, unregularised): `(XᵀX + λI) W = XᵀY + λW₀`, with
`λ = ridge · mean(diag XᵀX)` so one `ridge` suits every layer's scale, and W₀ the prior the ridge shrinks
toward (`shrink_toward`): zero (plain ridge), or the sliced weights themselves, so a large ridge leaves
the one-shot pruned layer and a small one the least-squares fit. XᵀX and XᵀY are accumulated per sample
where the activations are (fp64 on the CPU, fp32 on an accelerator: `accumulation_dtype`) and solved in
fp64, so memory is one (in+1)² matrix per projection, never the activations of all tokens;
the hidden states of both streams (dense and pruned) are kept for the calibration tokens, one layer at
a time. The intercept generalises FLAP's bias compensation (a bias equal to the removed columns times
their mean input): with it the fit can only do at least as well on the calibration tokens.

Calibration cost: one pass of the dense layers plus four passes of each pruned layer (fit o_proj, fit
down_proj, advance), all on layer inputs captured once at the first decoder layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import ConfigDict, Field

from mucrasp.validation import JobConfig

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

    from mucrasp.adapters.base import ArchitectureAdapter
    from mucrasp.calibration.batches import CalibrationBatch
    from mucrasp.units import KeepPlan

Progress = Callable[[str, int, int], None]


class ReconstructionSettings(JobConfig):
    """The knobs of `--reconstruct`, each default defined here once."""

    model_config = ConfigDict(frozen=True)

    # λ = ridge · mean(diag XᵀX). Both chosen on SmolLM2's validation traces at 0.3
    # (bench/results/quality-smollm-ridge-validation.md): toward the sliced weights, ridge 0.1, CoT KL 0.163;
    # the earlier default (toward zero, 0.01) 0.240.
    ridge: float = Field(0.1, ge=0.0)
    bias: bool = True  # fit an intercept (a bias on o_proj/down_proj), generalising FLAP's compensation
    # What the ridge shrinks toward: "zero", or "pruned" (the sliced weights the refit starts from).
    shrink_toward: Literal["zero", "pruned"] = "pruned"


class _StopForward(Exception):
    """Raised by the capture hook once the first decoder layer's inputs are recorded."""


def capture_layer_inputs(model: PreTrainedModel, adapter: ArchitectureAdapter, batches: list[CalibrationBatch]):
    """Per sample: the hidden states entering decoder layer 0 and the keyword arguments it is called with
    (masks, rotary embeddings: whatever the family passes), captured by stopping the forward there."""
    import torch

    first = adapter.decoder_layers(model)[0]
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    device = next(model.parameters()).device
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(**{k: v.to(device) for k, v in batch.inputs.items()}, use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """fp64 on the CPU; fp32 on an accelerator, where the activations already are. At 7B a down_proj refit
    accumulates a 13k × 13k XᵀX over every calibration token, about 3·10¹⁴ flops per model: on the host
    in fp64 that is the longest step of a GPU run, and consumer GPUs (A10G, L4) run fp64 at 1/32–1/64 of
    fp32. fp32 sums suffice there because the solve is damped (ridge · mean diag); it runs in fp64."""
    import torch

    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


class _NormalEquations:
    """XᵀX and XᵀY for `y ≈ W x + b`, accumulated token batch by token batch where the activations are,
    in `accumulation_dtype` (the device is that of the first batch)."""

    def __init__(self, in_features: int, out_features: int, intercept: bool):
        self.width = in_features + int(intercept)
        self.out_features = out_features
        self.intercept = intercept
        self.xtx = self.xty = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        import torch

        if self.xtx is None:
            dtype = accumulation_dtype(x.device)
            self.xtx = torch.zeros(self.width, self.width, dtype=dtype, device=x.device)
            self.xty = torch.zeros(self.width, self.out_features, dtype=dtype, device=x.device)
        x = x.detach().reshape(-1, x.shape[-1]).to(self.xtx.dtype)
        y = y.detach().reshape(-1, y.shape[-1]).to(self.xtx.dtype)
        if self.intercept:
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        self.xtx += x.T @ x
        self.xty += x.T @ y

    def solve(self, ridge: float, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ridge solution, in fp64 on the accumulation's device; `prior` (out × in, or None for zero) is
        the weight the ridge shrinks toward."""
        import torch

        from mucrasp.errors import MucraspError

        if self.xtx is None:
            raise MucraspError("reconstruction saw no calibration tokens")
        xtx, xty = self.xtx.double(), self.xty.double()
        n = self.width - int(self.intercept)
        diagonal = torch.diagonal(xtx)[:n]
        damping = torch.zeros(self.width, dtype=torch.float64, device=xtx.device)
        # Relative to the mean input energy, so one value fits every layer; a floor keeps a dead channel solvable.
        damping[:n] = ridge * float(diagonal.mean()) + 1e-12 * float(diagonal.max().clamp_min(1.0))
        rhs = xty
        if prior is not None:
            rhs = rhs.clone()
            rhs[:n] += damping[:n, None] * prior.detach().to(device=xtx.device, dtype=torch.float64).T
        solution = torch.linalg.solve(xtx + torch.diag(damping), rhs)
        weight = solution[:n].T.contiguous()
        return weight, (solution[n] if self.intercept else None)


def _assign(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    import torch
    from torch import nn

    with torch.no_grad():
        linear.weight.copy_(weight.to(dtype=linear.weight.dtype, device=linear.weight.device))
        if bias is not None:
            bias = bias.to(dtype=linear.weight.dtype, device=linear.weight.device)
            if linear.bias is None:
                linear.bias = nn.Parameter(bias.clone())
            else:
                linear.bias.copy_(bias)


def _fit(
    layer: nn.Module,
    linear: nn.Linear,
    stream: list[tuple[torch.Tensor, dict[str, Any]]],
    target: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    settings: ReconstructionSettings,
) -> None:
    """Run the (sliced) layer over the pruned stream, fit `linear` on its inputs to `target(sample, x, y)`,
    where y is the projection's current output."""
    import torch

    equations = _NormalEquations(linear.in_features, linear.out_features, settings.bias or linear.bias is not None)

    def hook(module, args, output):
        equations.add(args[0], target(current[0], args[0], output))

    current = [0]
    handle = linear.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for index, (hidden, kwargs) in enumerate(stream):
                current[0] = index
                run_layer(layer, hidden, kwargs)
    finally:
        handle.remove()
    prior = linear.weight if settings.shrink_toward == "pruned" else None
    _assign(linear, *equations.solve(settings.ridge, prior))


def _capture_output(layer: nn.Module, linear: nn.Linear, stream) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The layer's outputs and `linear`'s outputs over the stream."""
    import torch

    projected: list[torch.Tensor] = []
    handle = linear.register_forward_hook(lambda module, args, output: projected.append(output.detach()))
    try:
        with torch.no_grad():
            outputs = [run_layer(layer, hidden, kwargs).detach() for hidden, kwargs in stream]
    finally:
        handle.remove()
    return outputs, projected


def slice_and_reconstruct(
    model: PreTrainedModel,
    adapter: ArchitectureAdapter,
    plan: KeepPlan,
    batches: list[CalibrationBatch],
    settings: ReconstructionSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Slice every decoder layer to `plan` in place and refit its o_proj and down_proj (module docstring).

    Returns a summary for pruning.json: the settings and the relative output error of each layer before
    and after its refit, on the calibration tokens.
    """
    import torch

    from mucrasp.errors import MucraspError
    from mucrasp.slicing import _check

    settings = settings or ReconstructionSettings()
    if not batches:
        raise MucraspError("--reconstruct needs calibration data (--calib FILE)")
    _check(model, adapter, plan)
    layers = adapter.decoder_layers(model)
    dense = capture_layer_inputs(model, adapter, batches)
    pruned = [(hidden.clone(), kwargs) for hidden, kwargs in dense]
    errors = []
    for i, (layer, keep) in enumerate(zip(layers, plan.layers)):
        *_, o_proj = adapter.attention_projections(layer)
        dense_out, dense_o = _capture_output(layer, o_proj, dense)
        dense_mid = [h + o for (h, _), o in zip(dense, dense_o)]
        adapter.slice_layer(layer, model.config, keep.mlp_channels, keep.attn_groups)
        before = _relative_error(layer, pruned, dense_out)
        *_, o_proj = adapter.attention_projections(layer)
        _fit(layer, o_proj, pruned, lambda s, x, y: dense_mid[s] - pruned[s][0], settings)
        # h_mid of the pruned stream with the refitted o_proj, for the down_proj target.
        _, pruned_o = _capture_output(layer, o_proj, pruned)
        pruned_mid = [h + o for (h, _), o in zip(pruned, pruned_o)]
        _, _, down = adapter.mlp_projections(layer)
        _fit(layer, down, pruned, lambda s, x, y: dense_out[s] - pruned_mid[s], settings)
        after = _relative_error(layer, pruned, dense_out)
        errors.append({"layer": i, "before": round(before, 6), "after": round(after, 6)})
        with torch.no_grad():
            pruned = [(run_layer(layer, hidden, kwargs).detach(), kwargs) for hidden, kwargs in pruned]
        dense = [(out, kwargs) for out, (_, kwargs) in zip(dense_out, dense)]
        if progress is not None:
            progress("reconstruction", i + 1, len(layers))
    return {
        "ridge": settings.ridge,
        "bias": settings.bias,
        "shrink_toward": settings.shrink_toward,
        "samples": len(batches),
        "layer_output_error": errors,
    }


def _relative_error(layer: nn.Module, stream, targets: list[torch.Tensor]) -> float:
    """‖layer(pruned stream) − dense output‖ / ‖dense output‖ over all calibration tokens."""
    import torch

    num = den = 0.0
    with torch.no_grad():
        for (hidden, kwargs), target in zip(stream, targets):
            out = run_layer(layer, hidden, kwargs)
            num += float((out.double() - target.double()).pow(2).sum())
            den += float(target.double().pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def reconstruct_with_calibration(
    model: PreTrainedModel,
    adapter: ArchitectureAdapter,
    plan: KeepPlan,
    calibration: Any,
    progress: Progress | None = None,
    settings: ReconstructionSettings | None = None,
) -> dict[str, Any]:
    """`slice_and_reconstruct` on calibration records (a CalibrationSource) or ready-made batches."""
    from mucrasp.calibration.batches import resolve_batches
    from mucrasp.calibration.pivots import PivotConfig

    batches = resolve_batches(
        calibration, model.config, PivotConfig(), bool(adapter.is_vision_language), "--reconstruct"
    )
    return slice_and_reconstruct(model, adapter, plan, batches, settings, progress)
