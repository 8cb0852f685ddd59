"""How much of each unit's output a reconstruction refit cannot restore: the `refit_discount` of MuCRASP.

`--reconstruct` refits o_proj and down_proj by least squares on the kept inputs plus an intercept
(`mucrasp.reconstruction`). A unit whose input is a linear function of the kept units' inputs (or a
constant, which the intercept absorbs) costs nothing once the layer is refitted, however large its
first-order score. For one unit, the optimal-brain-surgeon identity gives the fraction that no refit
can restore, with A = XᵀX + λI over the projection's inputs (and a constant column):

- an MLP channel j (one column of down_proj): `c_j = 1 / (A_jj · [A⁻¹]_jj)`, which is 1 − R² of
  x_j regressed on every other input; the weight cancels;
- an attention group G (its heads' columns of o_proj, W_G): `c_G = tr(W_G [A⁻¹]_GG⁻¹ W_Gᵀ) / tr(W_G A_GG W_Gᵀ)`,
  the output energy left after the best compensation over the energy before it.

Both lie in (0, 1]. Like OBS they price each unit removed alone; units removed together can take
their shared compensation with them. λ is reconstruction's own ridge (relative to the mean of
diag XᵀX), so the discount prices the refit `--reconstruct` will do.

Cost: one no-grad pass of the dense layers, one layer at a time (one Gram matrix per projection in
memory, never all layers'), and one inverse of each. At 7B a down_proj Gram matrix is 18944² (1.4 GB
in fp32): on a GPU that is seconds per layer; on a CPU the fp64 inverse is the cost, about a minute
per layer on two cores (estimated from n³, not measured).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.calibration.batches import CalibrationBatch
from mucrasp.reconstruction import accumulation_dtype, capture_layer_inputs, run_layer
from mucrasp.units import UnitScores


def channel_fractions(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """c_j for every input channel of a projection, from its Gram matrix with the constant column last."""
    inverse, damped = _damped_inverse(gram, ridge)
    n = gram.shape[0] - 1
    fractions = 1.0 / (torch.diagonal(damped)[:n] * torch.diagonal(inverse)[:n])
    return fractions.clamp(0.0, 1.0)


def group_fractions(gram: torch.Tensor, weight: torch.Tensor, group_width: int, ridge: float) -> torch.Tensor:
    """c_G for consecutive groups of `group_width` input columns of `weight` (out × in)."""
    inverse, damped = _damped_inverse(gram, ridge)
    weight = weight.detach().to(device=gram.device, dtype=torch.float64)
    fractions = []
    for start in range(0, weight.shape[1], group_width):
        cols = slice(start, start + group_width)
        w = weight[:, cols]
        kept_energy = torch.linalg.solve(inverse[cols, cols], w.T)  # [A⁻¹]_GG⁻¹ W_Gᵀ
        after = float((w * kept_energy.T).sum())
        before = float((w @ damped[cols, cols] * w).sum())
        fractions.append(after / before if before > 0 else 1.0)
    return torch.tensor(fractions, dtype=torch.float64).clamp(0.0, 1.0)


def _damped_inverse(gram: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A⁻¹, A) in fp64, A = gram + λ on the channels (not the constant column), λ as reconstruction sets it."""
    damped = gram.double().clone()
    n = damped.shape[0] - 1
    diagonal = torch.diagonal(damped)[:n]
    damping = ridge * float(diagonal.mean()) + 1e-12 * float(diagonal.max().clamp_min(1.0))
    damped[range(n), range(n)] += damping
    damped[n, n] += 1e-12 * max(float(damped[n, n]), 1.0)  # a solvable constant column even with no tokens
    return torch.linalg.inv(damped), damped


@torch.no_grad()
def unrecoverable_fractions(
    model: PreTrainedModel,
    adapter: ArchitectureAdapter,
    batches: list[CalibrationBatch],
    ridge: float,
    progress=None,
) -> UnitScores:
    """c per MLP channel and per attention group of every decoder layer, on the dense model's calibration
    activations (module docstring)."""
    group_width = adapter.head_dim(model.config) * adapter.group_size(model.config)
    stream = capture_layer_inputs(model, adapter, batches)
    layers = adapter.decoder_layers(model)
    mlp, attn = [], []
    for index, layer in enumerate(layers):
        *_, o_proj = adapter.attention_projections(layer)
        _, _, down = adapter.mlp_projections(layer)
        grams: dict[int, torch.Tensor] = {}  # id(projection) → its Gram matrix, this layer only

        def accumulate(module, args, grams=grams):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1).to(accumulation_dtype(x.device))
            grams[id(module)] = grams.get(id(module), 0) + x.T @ x

        handles = [linear.register_forward_pre_hook(accumulate) for linear in (o_proj, down)]
        try:
            stream = [(run_layer(layer, hidden, kwargs).detach(), kwargs) for hidden, kwargs in stream]
        finally:
            for handle in handles:
                handle.remove()
        mlp.append(channel_fractions(grams[id(down)], ridge).cpu())
        attn.append(group_fractions(grams[id(o_proj)], o_proj.weight, group_width, ridge).cpu())
        if progress is not None:
            progress("refit discount", index + 1, len(layers))
    return UnitScores(mlp, attn)
