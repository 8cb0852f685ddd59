"""Physical slicing is exact: the sliced model computes what the masked original computes."""

import copy

import pytest
import torch
from conftest import ARCHITECTURES, VL_ARCHITECTURES

from mucrasp.adapters import get_adapter, supported_architectures
from mucrasp.slicing import mask_model, slice_model
from mucrasp.tiny_models import build_tiny_model, tiny_image_inputs
from mucrasp.units import KeepPlan, LayerKeep

TEXT_INPUT = {"input_ids": torch.tensor([[1, 5, 9, 33, 2, 7, 300, 41]])}


def random_plan(n_layers: int, mlp: int, groups: int, seed: int = 0) -> KeepPlan:
    """A deliberately non-uniform plan: each layer keeps a different random subset."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(n_layers):
        n_mlp = [mlp // 4, mlp, 8][i % 3]
        n_groups = [1, groups, 1][i % 3]
        layers.append(
            LayerKeep(torch.randperm(mlp, generator=g)[:n_mlp], torch.randperm(groups, generator=g)[:n_groups])
        )
    return KeepPlan(layers)


def test_registry_lists_every_required_family():
    assert set(ARCHITECTURES) <= set(supported_architectures())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sliced_equals_masked_text(architecture):
    model = build_tiny_model(architecture)
    adapter = get_adapter(architecture)
    plan = random_plan(3, 384, 2)
    masked = mask_model(copy.deepcopy(model), adapter, plan)
    sliced = slice_model(copy.deepcopy(model), adapter, plan)
    with torch.no_grad():
        reference, dense, actual = masked(**TEXT_INPUT).logits, model(**TEXT_INPUT).logits, sliced(**TEXT_INPUT).logits
    torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)
    assert (dense - reference).abs().max() > 1e-3, "the plan must actually change the model"


@pytest.mark.parametrize("architecture", VL_ARCHITECTURES)
def test_sliced_equals_masked_with_image(architecture):
    model = build_tiny_model(architecture)
    adapter = get_adapter(architecture)
    plan = random_plan(3, 384, 2, seed=1)
    inputs = tiny_image_inputs()
    masked = mask_model(copy.deepcopy(model), adapter, plan)
    sliced = slice_model(copy.deepcopy(model), adapter, plan)
    with torch.no_grad():
        reference, actual = masked(**inputs).logits, sliced(**inputs).logits
    torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sliced_shapes_are_the_kept_shapes(architecture):
    model = build_tiny_model(architecture)
    adapter = get_adapter(architecture)
    plan = random_plan(3, 384, 2)
    slice_model(model, adapter, plan)
    head_dim = adapter.head_dim(model.config)
    for layer, keep in zip(adapter.decoder_layers(model), plan.layers):
        gate, up, down = adapter.mlp_projections(layer)
        q, k, v, o = adapter.attention_projections(layer)
        assert gate.weight.shape[0] == up.weight.shape[0] == down.weight.shape[1] == len(keep.mlp_channels)
        assert k.weight.shape[0] == v.weight.shape[0] == len(keep.attn_groups) * head_dim
        assert q.weight.shape[0] == o.weight.shape[1] == len(keep.attn_groups) * 2 * head_dim
        if adapter.qkv_bias(model.config):
            assert q.bias.shape[0] == q.weight.shape[0] and k.bias.shape[0] == k.weight.shape[0]
    assert adapter.layer_widths(model) == [(w["mlp_channels"], w["kv_groups"]) for w in plan.widths()]


@pytest.mark.parametrize("architecture", VL_ARCHITECTURES)
def test_vision_tower_is_untouched(architecture):
    model = build_tiny_model(architecture)
    adapter = get_adapter(architecture)
    before = {k: v.clone() for k, v in adapter.vision_tower(model).state_dict().items()}
    slice_model(model, adapter, random_plan(3, 384, 2))
    after = adapter.vision_tower(model).state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
