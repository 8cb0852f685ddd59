"""The pruned checkpoint: save/load round trips, stock loading of uniform widths, atomic writes."""

import copy
import json

import pytest
import torch
import transformers
from conftest import ARCHITECTURES
from test_slicing import TEXT_INPUT, random_plan

from mucrasp import load_pruned
from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import LAYER_INTERMEDIATE_SIZES, read_manifest, save_pruned
from mucrasp.slicing import slice_model
from mucrasp.tiny_models import build_tiny_model, tiny_image_inputs
from mucrasp.units import KeepPlan, LayerKeep


def inputs_for(architecture):
    return tiny_image_inputs() if get_adapter(architecture).is_vision_language else TEXT_INPUT


def greedy(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=12, do_sample=False, **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_then_load_pruned_gives_identical_logits_and_generations(architecture, tmp_path):
    model = build_tiny_model(architecture)
    adapter = get_adapter(architecture)
    plan = random_plan(3, 384, 2)
    slice_model(model, adapter, plan)
    save_pruned(model, tmp_path / "pruned", plan, {"method": "test"})
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    text_config = config.get("text_config", config)
    assert text_config[LAYER_INTERMEDIATE_SIZES] == [96, 384, 8]

    reloaded = load_pruned(tmp_path / "pruned")
    inputs = inputs_for(architecture)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    assert torch.equal(greedy(reloaded, inputs), greedy(model, inputs))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_non_uniform_model_generates_with_kv_cache(architecture, tmp_path):
    model = build_tiny_model(architecture)
    slice_model(model, get_adapter(architecture), random_plan(3, 384, 2, seed=3))
    inputs = inputs_for(architecture)
    with_cache = greedy(model, inputs, use_cache=True)
    without_cache = greedy(model, inputs, use_cache=False)
    assert with_cache.shape[1] == inputs["input_ids"].shape[1] + 12
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize(
    "architecture, auto_class, groups",
    [
        ("LlamaForCausalLM", transformers.AutoModelForCausalLM, 1),  # Llama honours head_dim: heads may go
        ("Qwen2ForCausalLM", transformers.AutoModelForCausalLM, 2),
        ("Qwen2_5_VLForConditionalGeneration", transformers.AutoModelForImageTextToText, 2),
    ],
)
def test_uniform_checkpoint_is_stock(architecture, auto_class, groups, tmp_path):
    model = build_tiny_model(architecture)
    plan = KeepPlan([LayerKeep(torch.arange(0, 384, 2), torch.arange(groups)) for _ in range(3)])
    slice_model(model, get_adapter(architecture), plan)
    save_pruned(model, tmp_path / "uniform", plan, {"method": "test"})
    config = json.loads((tmp_path / "uniform" / "config.json").read_text())
    text_config = config.get("text_config", config)
    assert LAYER_INTERMEDIATE_SIZES not in text_config
    assert text_config["intermediate_size"] == 192
    assert text_config["num_key_value_heads"] == groups

    stock = auto_class.from_pretrained(tmp_path / "uniform").eval()
    inputs = inputs_for(architecture)
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=0)


def test_qwen_uniform_with_fewer_heads_is_not_written_as_stock(tmp_path):
    """Qwen derives head_dim from the head count, so a stock config would load the wrong head size."""
    architecture = "Qwen2_5_VLForConditionalGeneration"
    model = build_tiny_model(architecture)
    plan = KeepPlan([LayerKeep(torch.arange(192), torch.arange(1)) for _ in range(3)])
    slice_model(model, get_adapter(architecture), plan)
    save_pruned(model, tmp_path / "p", plan, {"method": "test"})
    text_config = json.loads((tmp_path / "p" / "config.json").read_text())["text_config"]
    assert text_config[LAYER_INTERMEDIATE_SIZES] == [192, 192, 192]
    assert text_config["num_attention_heads"] == 4  # the original, so head_dim stays 32
    reloaded = load_pruned(tmp_path / "p")
    inputs = inputs_for(architecture)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_stock_loading_refuses_a_per_layer_checkpoint(tmp_path):
    model = build_tiny_model("LlamaForCausalLM")
    plan = random_plan(3, 384, 2)
    slice_model(model, get_adapter("LlamaForCausalLM"), plan)
    save_pruned(model, tmp_path / "p", plan, {"method": "test"})
    with pytest.raises(Exception, match="(?i)size|shape"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "p")


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    model = build_tiny_model("Qwen2ForCausalLM")
    plan = random_plan(3, 384, 2)
    slice_model(model, get_adapter("Qwen2ForCausalLM"), plan)
    original = type(model).save_pretrained

    def fail_midway(self, directory, **kwargs):
        original(self, directory, **kwargs)  # the weights are on disk ...
        raise RuntimeError("disk full")  # ... and then the writer dies

    monkeypatch.setattr(type(model), "save_pretrained", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(model, tmp_path / "out", plan, {"method": "test"})
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_tiny_model("LlamaForCausalLM")
    plan = random_plan(3, 384, 2)
    slice_model(model, get_adapter("LlamaForCausalLM"), plan)
    save_pruned(copy.deepcopy(model), tmp_path / "out", plan, {"method": "first"})

    def fail(self, directory, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(type(model), "save_pretrained", fail)
    with pytest.raises(RuntimeError):
        save_pruned(model, tmp_path / "out", plan, {"method": "second"}, overwrite=True)
    assert read_manifest(tmp_path / "out")["method"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_added_output_biases_survive_the_round_trip(tmp_path):
    """FLAP's compensation gives o_proj/down_proj a bias the stock family lacks; it must reload."""
    architecture = "Qwen2_5_VLForConditionalGeneration"
    model = build_tiny_model(architecture)
    adapter = get_adapter(architecture)
    plan = KeepPlan([LayerKeep(torch.arange(192), torch.arange(2)) for _ in range(3)])  # uniform widths
    slice_model(model, adapter, plan)
    for layer in adapter.decoder_layers(model):
        for linear in (adapter.attention_projections(layer)[3], adapter.mlp_projections(layer)[2]):
            linear.bias = torch.nn.Parameter(torch.randn(linear.out_features))
    save_pruned(model, tmp_path / "p", plan, {"method": "flap"})
    text_config = json.loads((tmp_path / "p" / "config.json").read_text())["text_config"]
    assert text_config["output_projection_bias"] is True  # never written as a stock config
    reloaded = load_pruned(tmp_path / "p")
    inputs = inputs_for(architecture)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_an_exported_per_layer_checkpoint_still_loads(tmp_path):
    """`export vllm` renames per-layer architectures (Mucrasp...) for the plugin; loading still works."""
    model = build_tiny_model("LlamaForCausalLM")
    plan = random_plan(3, 384, 2)
    slice_model(model, get_adapter("LlamaForCausalLM"), plan)
    save_pruned(model, tmp_path / "p", plan, {"method": "test"})
    config_path = tmp_path / "p" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["MucraspLlamaForCausalLM"]
    config_path.write_text(json.dumps(config))
    reloaded = load_pruned(tmp_path / "p")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**TEXT_INPUT).logits, model(**TEXT_INPUT).logits, atol=0, rtol=0)
