"""Per-layer modality statistics and MuCRASP's protection factor.

From the output hidden states h of decoder layer L, over all calibration tokens:
- `CMDS(L) = ‖E[h_vis] − E[h_txt]‖₂ / (E‖h_all‖₂ + ε)`: how far apart the layer keeps image and
  text tokens. Text-only data has no visual positions, so CMDS is 0 for every layer and the β
  term drops out of the protection (documented behaviour, not an error).
- `Sens(L) = sqrt(E‖h_L‖²)`.
- `P(L) = 1 + α·norm(Sens) + β·norm(CMDS) + Ω(L)`, norm = min-max over layers (0 when all layers
  are equal). Ω is our choice of the paper's structural prior, which is not specified:
  `omega_early·(1 − L/(n−1))` for both unit types plus `omega_attention` for attention groups.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.calibration.batches import CalibrationBatch
from mucrasp.units import ATTN, MLP


class ModalityStatistics:
    """Running sums over tokens, one set per decoder layer; fed by forward hooks."""

    def __init__(self, n_layers: int, hidden_size: int):
        zeros = lambda: torch.zeros(n_layers, hidden_size, dtype=torch.float64)  # noqa: E731
        self.sum_visual, self.sum_text = zeros(), zeros()
        self.n_visual = torch.zeros(n_layers, dtype=torch.float64)
        self.n_text = torch.zeros(n_layers, dtype=torch.float64)
        self.sum_norm = torch.zeros(n_layers, dtype=torch.float64)
        self.sum_sq_norm = torch.zeros(n_layers, dtype=torch.float64)
        self.n_all = torch.zeros(n_layers, dtype=torch.float64)
        self._visual: torch.Tensor | None = None
        self._text: torch.Tensor | None = None
        self._seen: set[int] = set()

    def start_sample(self, batch: CalibrationBatch) -> None:
        self._visual, self._text = batch.visual_mask, batch.text_mask
        self._seen: set[int] = set()

    def add(self, layer: int, hidden: torch.Tensor) -> None:
        # Gradient checkpointing re-runs each layer's forward during backward; count it once.
        if layer in self._seen:
            return
        self._seen.add(layer)
        h = hidden.detach()[0].double().cpu()  # [seq, hidden]
        visual, text = self._visual, self._text
        self.sum_visual[layer] += h[visual].sum(0)
        self.sum_text[layer] += h[text].sum(0)
        self.n_visual[layer] += int(visual.sum())
        self.n_text[layer] += int(text.sum())
        norms = h.norm(dim=-1)
        self.sum_norm[layer] += norms.sum()
        self.sum_sq_norm[layer] += norms.pow(2).sum()
        self.n_all[layer] += h.shape[0]

    def cmds(self, eps: float = 1e-8) -> torch.Tensor:
        have_both = (self.n_visual > 0) & (self.n_text > 0)
        mean_visual = self.sum_visual / self.n_visual.clamp_min(1)[:, None]
        mean_text = self.sum_text / self.n_text.clamp_min(1)[:, None]
        mean_norm = self.sum_norm / self.n_all.clamp_min(1)
        value = (mean_visual - mean_text).norm(dim=-1) / (mean_norm + eps)
        return torch.where(have_both, value, torch.zeros_like(value))

    def sens(self) -> torch.Tensor:
        return (self.sum_sq_norm / self.n_all.clamp_min(1)).sqrt()


@contextlib.contextmanager
def record_hidden_states(
    model: PreTrainedModel, adapter: ArchitectureAdapter, stats: ModalityStatistics
) -> Iterator[None]:
    def hook(layer_index: int):
        def on_output(module, args, output):
            stats.add(layer_index, output[0] if isinstance(output, tuple) else output)

        return on_output

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(adapter.decoder_layers(model))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def minmax(values: torch.Tensor) -> torch.Tensor:
    spread = values.max() - values.min()
    if float(spread) <= 0:
        return torch.zeros_like(values)
    return (values - values.min()) / spread


@dataclass(frozen=True)
class ProtectionConfig:
    # No defaults here: MucraspConfig holds them, in one place.
    alpha: float  # weight of Sens
    beta: float  # weight of CMDS
    omega_early: float  # extra retention of the first layer, falling linearly to 0 at the last
    omega_attention: float  # extra retention of attention groups


def protection(sens: torch.Tensor, cmds: torch.Tensor, config: ProtectionConfig) -> dict[str, torch.Tensor]:
    """P(L) per unit type: {"mlp": [n_layers], "attn": [n_layers]}."""
    n = len(sens)
    depth = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    base = 1.0 + config.alpha * minmax(sens.double()) + config.beta * minmax(cmds.double())
    early = config.omega_early * (1.0 - depth)
    return {MLP: base + early, ATTN: base + early + config.omega_attention}
