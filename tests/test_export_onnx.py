"""`export onnx`: ONNX Runtime runs the exported graphs as transformers runs the pruned model.

Per-layer pruned tiny models (different MLP widths and KV-head counts in every layer), fp32:
- logits of the prompt pass within 1e-4 relative L2 of transformers;
- identical greedy tokens over 32 new tokens, through the library's KV-cache generation loop;
- Qwen2.5-VL: with an image (vision encoder -> embedding -> decoder with 3D M-RoPE positions) and
  without one;
- every other registered family: one text prompt (and one image prompt for VL families);
- every family: genai_config.json (onnxruntime-genai) unless that runtime cannot run it (Qwen3-VL).
"""

from __future__ import annotations

import json

import export_helpers as h
import numpy as np
import onnx
import pytest
import torch
from conftest import ARCHITECTURES
from typer.testing import CliRunner

from mucrasp.adapters import get_adapter
from mucrasp.errors import MucraspError
from mucrasp.export.onnx_export import export_onnx
from mucrasp.export.onnx_runtime import OnnxGenerator, mrope_position_ids

NEW_TOKENS = 32
LOGIT_TOLERANCE = 1e-4  # relative L2
TEXT_PROMPTS = [[1, 5, 9, 33, 2, 7, 300, 41], [1, 400, 3, 77, 81, 9, 9, 12, 13, 14], [1, 60, 61, 62, 63]]


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reference(model, inputs: dict) -> tuple[np.ndarray, list[int]]:
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**inputs).logits[0].numpy()
        tokens = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
        )[0, n:].tolist()
    return logits, tokens


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A per-layer Llama with FLAP-style o_proj/down_proj biases, exported through the CLI."""
    from mucrasp.cli import app

    root = tmp_path_factory.mktemp("onnx-llama")
    model = h.make_pruned_checkpoint("LlamaForCausalLM", root / "pruned", h.per_layer_plan(), output_bias=True)
    result = CliRunner().invoke(app, ["export", "onnx", str(root / "pruned"), "--out", str(root / "onnx")])
    assert result.exit_code == 0, result.output
    return model, root / "onnx"


@pytest.fixture(scope="module")
def qwen_vl(tmp_path_factory):
    from transformers import AutoProcessor

    root = tmp_path_factory.mktemp("onnx-qwen25vl")
    model = h.make_pruned_checkpoint("Qwen2_5_VLForConditionalGeneration", root / "pruned", h.per_layer_plan(seed=2))
    export_onnx(root / "pruned", root / "onnx")
    return model, AutoProcessor.from_pretrained(root / "pruned"), root / "onnx"


def test_text_decoder_matches_transformers(llama):
    model, folder = llama
    generator = OnnxGenerator(folder)
    worst = 0.0
    for prompt in TEXT_PROMPTS:
        logits, tokens = reference(model, {"input_ids": torch.tensor([prompt])})
        result = generator.generate(prompt, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        worst = max(worst, relative_l2(result.prompt_logits, logits))
        assert result.tokens == tokens
    print(f"text decoder: worst relative L2 of prompt logits {worst:.2e}")
    assert worst < LOGIT_TOLERANCE


def test_manifest_describes_per_layer_kv_layout(llama):
    model, folder = llama
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["opset"] >= 18 and manifest["dtype"] == "fp32"
    assert manifest["decoder"]["max_sequence"] == model.config.max_position_embeddings
    layers = manifest["decoder"]["layers"]
    widths = [
        (layer.mlp.gate_proj.out_features, layer.self_attn.k_proj.out_features // 32) for layer in model.model.layers
    ]
    assert [(layer["intermediate_size"], layer["num_key_value_heads"]) for layer in layers] == widths
    assert len({layer["num_key_value_heads"] for layer in layers}) > 1  # really per-layer
    decoder = manifest["graphs"]["decoder"]
    names = [i["name"] for i in decoder["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "past_key_values.1.value" in names and "present.2.key" in [o["name"] for o in decoder["outputs"]]
    assert manifest["special_tokens"]["eos_token_id"] == 2
    graph = onnx.load(str(folder / "decoder.onnx"), load_external_data=False)
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 18
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer)


def test_vl_with_an_image_matches_transformers(qwen_vl):
    model, processor, folder = qwen_vl
    generator = OnnxGenerator(folder)
    assert set(generator.sessions) == {"vision", "embedding", "decoder"}
    worst = 0.0
    for text, seed in [("how many red squares", 0), ("describe the image", 1)]:
        chat = processor.tokenizer.apply_chat_template(h.image_chat(text), add_generation_prompt=True, tokenize=False)
        inputs = dict(processor(text=[chat], images=[h.test_image(seed)], return_tensors="pt"))
        logits, tokens = reference(model, inputs)
        result = generator.generate(
            inputs["input_ids"][0].tolist(),
            pixel_values=inputs["pixel_values"].numpy(),
            image_grid_thw=inputs["image_grid_thw"].numpy(),
            max_new_tokens=NEW_TOKENS,
            stop_at_eos=False,
        )
        worst = max(worst, relative_l2(result.prompt_logits, logits))
        assert result.tokens == tokens
    print(f"VL with image: worst relative L2 of prompt logits {worst:.2e}")
    assert worst < LOGIT_TOLERANCE


def test_vl_without_an_image_matches_transformers(qwen_vl):
    model, _, folder = qwen_vl
    generator = OnnxGenerator(folder)
    for prompt in TEXT_PROMPTS[:2]:
        logits, tokens = reference(model, {"input_ids": torch.tensor([prompt])})
        result = generator.generate(prompt, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        assert relative_l2(result.prompt_logits, logits) < LOGIT_TOLERANCE
        assert result.tokens == tokens


def test_mrope_positions_match_transformers(qwen_vl):
    model, processor, _ = qwen_vl
    chat = processor.tokenizer.apply_chat_template(h.image_chat("hi"), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[chat], images=[h.test_image(0)], return_tensors="pt")
    expected, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    ours = mrope_position_ids(
        inputs["input_ids"][0].tolist(), inputs["image_grid_thw"].numpy(), model.config.image_token_id, 2
    )
    np.testing.assert_array_equal(ours, expected[:, 0].numpy())


def test_exporting_a_model_that_is_not_pruned_is_refused(tmp_path):
    from mucrasp.tiny_models import save_tiny_model

    save_tiny_model("Qwen2ForCausalLM", tmp_path / "stock")
    with pytest.raises(MucraspError, match="not a pruned checkpoint"):
        export_onnx(tmp_path / "stock", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_fp16_export_runs_close_to_fp32(llama):
    model, folder = llama
    out = folder.parent / "onnx-fp16"
    export_onnx(folder.parent / "pruned", out, dtype="fp16")
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "fp16"
    prompt = TEXT_PROMPTS[0]
    logits, _ = reference(model, {"input_ids": torch.tensor([prompt])})
    result = OnnxGenerator(out).generate(prompt, max_new_tokens=4, stop_at_eos=False)
    assert relative_l2(result.prompt_logits, logits) < 1e-2  # measured about 1e-3


# ---- every other family: the same parity on one prompt of each kind --------------------------------
OTHER_FAMILIES = [a for a in ARCHITECTURES if a not in ("LlamaForCausalLM", "Qwen2_5_VLForConditionalGeneration")]


@pytest.fixture(scope="module", params=OTHER_FAMILIES)
def family(request, tmp_path_factory):
    from transformers import AutoProcessor

    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    model = h.make_pruned_checkpoint(request.param, root / "pruned", h.per_layer_plan(seed=3), output_bias=True)
    export_onnx(root / "pruned", root / "onnx")
    vision = get_adapter(request.param).is_vision_language
    return model, AutoProcessor.from_pretrained(root / "pruned") if vision else None, root / "onnx"


def test_every_family_matches_transformers(family):
    model, processor, folder = family
    generator = OnnxGenerator(folder)
    cases = [({"input_ids": torch.tensor([TEXT_PROMPTS[0]])}, {})]
    if processor is not None:
        chat = processor.tokenizer.apply_chat_template(
            h.image_chat("how many red squares"), add_generation_prompt=True, tokenize=False
        )
        inputs = dict(processor(text=[chat], images=[h.test_image(0)], return_tensors="pt"))
        cases.append(
            (
                inputs,
                {"pixel_values": inputs["pixel_values"].numpy(), "image_grid_thw": inputs["image_grid_thw"].numpy()},
            )
        )
    for inputs, images in cases:
        logits, tokens = reference(model, inputs)
        result = generator.generate(
            inputs["input_ids"][0].tolist(), max_new_tokens=NEW_TOKENS, stop_at_eos=False, **images
        )
        assert relative_l2(result.prompt_logits, logits) < LOGIT_TOLERANCE
        assert result.tokens == tokens


def test_every_family_says_whether_onnxruntime_genai_runs_it(family):
    """genai_config.json for every family but those whose deepstack features onnxruntime-genai cannot feed."""
    model, _, folder = family
    adapter = get_adapter(model.config.architectures[0])
    deepstack = adapter.is_vision_language and adapter.deepstack_levels(model.config) > 0
    record = json.loads((folder / "manifest.json").read_text())["onnxruntime_genai"]
    assert (folder / "genai_config.json").is_file() == (not deepstack) == (record["config"] is not None)
    if deepstack:
        assert "deepstack" in record["reason"]
    else:
        config = json.loads((folder / "genai_config.json").read_text())["model"]
        assert config["type"] == adapter.onnx_genai_type and config["eos_token_id"] == [2]


def test_a_workload_image_size_becomes_the_nearest_size_the_vision_graph_takes():
    """The chain traces the ONNX vision graph at the workload's --image-size, rounded to whole merged patches
    as the planner counts them; a text model gets none."""
    import json

    from mucrasp.demo.bundled import bundled_demo_model
    from mucrasp.export.onnx_export import nearest_image_size
    from mucrasp.planning.model_shape import model_shape

    demo = bundled_demo_model()
    vision = json.loads((demo / "config.json").read_text())["vision_config"]
    unit = vision["patch_size"] * vision["spatial_merge_size"]
    assert nearest_image_size(demo, 3 * unit) == 3 * unit
    assert nearest_image_size(demo, 3 * unit + 1) == 3 * unit and nearest_image_size(demo, 1) == unit
    assert nearest_image_size(demo, None) is None
    from mucrasp.model_loading import read_model_config

    shape = model_shape(*read_model_config(demo))
    rounded = nearest_image_size(demo, 3 * unit + unit // 2 + 1)
    assert shape.image_patches(rounded) == shape.image_patches(3 * unit + unit // 2 + 1)  # the planner's count
