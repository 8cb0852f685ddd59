"""Apply a keep plan to a model: physically (slice) or as a reference (mask)."""

from __future__ import annotations

from transformers import PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.errors import MucraspError
from mucrasp.units import KeepPlan


def _check(model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan) -> None:
    widths = adapter.layer_widths(model)
    if len(plan.layers) != len(widths):
        raise MucraspError(f"keep plan has {len(plan.layers)} layers, the model has {len(widths)}")
    for i, (keep, (mlp, groups)) in enumerate(zip(plan.layers, widths)):
        if len(keep.mlp_channels) == 0 or len(keep.attn_groups) == 0:
            raise MucraspError(f"keep plan removes every unit of a type in layer {i}; layers are never removed whole")
        if int(keep.mlp_channels.max()) >= mlp or int(keep.attn_groups.max()) >= groups:
            raise MucraspError(f"keep plan for layer {i} names units the layer does not have")


def slice_model(model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan) -> PreTrainedModel:
    """Shrink every decoder layer in place to the kept units; returns the same model."""
    _check(model, adapter, plan)
    for layer, keep in zip(adapter.decoder_layers(model), plan.layers):
        adapter.slice_layer(layer, model.config, keep.mlp_channels, keep.attn_groups)
    return model


def mask_model(model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan) -> PreTrainedModel:
    """Zero the removed units in place (shapes unchanged): what slicing must be equivalent to."""
    _check(model, adapter, plan)
    for layer, keep in zip(adapter.decoder_layers(model), plan.layers):
        adapter.mask_layer(layer, model.config, keep.mlp_channels, keep.attn_groups)
    return model
