"""Qwen3: what sets it apart from the families the parametrised tests already cover."""

import json

import torch
import transformers
from test_slicing import TEXT_INPUT, random_plan

from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import LAYER_INTERMEDIATE_SIZES, save_pruned
from mucrasp.slicing import slice_model
from mucrasp.tiny_models import build_tiny_model, tiny_config
from mucrasp.units import KeepPlan, LayerKeep

ARCH = "Qwen3ForCausalLM"


def test_q_and_k_norms_are_shared_by_heads_and_survive_slicing():
    model = build_tiny_model(ARCH)
    adapter = get_adapter(ARCH)
    before = [
        (layer.self_attn.q_norm.weight.clone(), layer.self_attn.k_norm.weight.clone()) for layer in model.model.layers
    ]
    slice_model(model, adapter, random_plan(3, 384, 2))
    for layer, (q, k) in zip(model.model.layers, before):
        assert layer.self_attn.q_norm.weight.shape == (32,)  # over head_dim, not over heads
        assert torch.equal(layer.self_attn.q_norm.weight, q) and torch.equal(layer.self_attn.k_norm.weight, k)


def test_uniform_checkpoint_with_fewer_heads_is_stock(tmp_path):
    """Qwen3 honours head_dim, so removing a KV group leaves a stock checkpoint (unlike Qwen2)."""
    model = build_tiny_model(ARCH)
    plan = KeepPlan([LayerKeep(torch.arange(0, 384, 2), torch.arange(1)) for _ in range(3)])
    slice_model(model, get_adapter(ARCH), plan)
    save_pruned(model, tmp_path / "uniform", plan, {"method": "test"})
    config = json.loads((tmp_path / "uniform" / "config.json").read_text())
    assert LAYER_INTERMEDIATE_SIZES not in config and config["num_key_value_heads"] == 1 and config["head_dim"] == 32
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "uniform").eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**TEXT_INPUT).logits, model(**TEXT_INPUT).logits, atol=1e-6, rtol=0)


def test_no_qkv_bias_is_planned():
    config = tiny_config(ARCH)
    adapter = get_adapter(ARCH)
    assert not adapter.qkv_bias(config) and adapter.layer_norm_params(config) == 2 * 128 + 2 * 32
