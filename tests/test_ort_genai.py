"""`export onnx` folders run in onnxruntime-genai (the real runtime, `og.Model(folder)`).

Per-layer pruned tiny models (every layer its own MLP width and KV-head count), fp32, greedy:
- text families: the tokens onnxruntime-genai generates equal transformers' greedy tokens;
- Qwen2.5-VL: the same with an image, at two image sizes (one vision graph: it takes
  image_grid_thw, so any size works), and without an image.
onnxruntime-genai computes the 3D M-RoPE positions and sizes each layer's KV cache from the
decoder's past inputs; the tests feed it token ids, pixel values and the grid (the tiny test
tokenizer is word-level, which onnxruntime-genai's tokenizer does not read).
"""

from __future__ import annotations

import json

import export_helpers as h
import numpy as np
import onnxruntime_genai as og
import pytest
import torch

from mucrasp.export.onnx_export import export_onnx
from mucrasp.export.onnx_runtime import OnnxGenerator

NEW_TOKENS = 12
EOS = [2]  # <|im_end|> of the tiny tokenizer: both runtimes stop there
PROMPTS = [[1, 5, 9, 33, 2, 7, 300, 41], [1, 60, 61, 62, 63]]
IMAGE_SIZES = [(56, 56), (112, 84)]  # (width, height): patch grids 4x4 and 6x8, two different windowings


def reference(model, inputs: dict) -> list[int]:
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=EOS)
    return out[0, n:].tolist()


def genai_generate(model, inputs: dict) -> list[int]:
    ids = inputs["input_ids"].numpy().astype(np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    if "pixel_values" in inputs:
        tensors = og.NamedTensors()
        tensors["input_ids"] = ids
        tensors["pixel_values"] = inputs["pixel_values"].numpy().astype(np.float32)
        tensors["image_grid_thw"] = inputs["image_grid_thw"].numpy().astype(np.int64)
        tensors["num_image_tokens"] = np.array([int((ids == h.IMAGE_TOKEN_ID).sum())], dtype=np.int64)
        generator.set_inputs(tensors)
    else:
        generator.append_tokens(ids)
    tokens: list[int] = []
    while not generator.is_done() and len(tokens) < NEW_TOKENS:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


# Two text families keep the file inside CI's time (Qwen2's decoder differs from Llama's only by q/k/v
# biases); every family's decoder is compared with transformers on ONNX Runtime in test_export_onnx.py.
@pytest.fixture(scope="module", params=["LlamaForCausalLM", "Qwen3ForCausalLM"])
def text_export(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"genai-{request.param}")
    model = h.make_pruned_checkpoint(request.param, root / "pruned", h.per_layer_plan(seed=4), output_bias=True)
    export_onnx(root / "pruned", root / "onnx")
    return model, root / "onnx"


@pytest.fixture(scope="module")
def vl_export(tmp_path_factory):
    from transformers import AutoProcessor, Qwen2VLImageProcessorPil

    root = tmp_path_factory.mktemp("genai-qwen25vl")
    model = h.make_pruned_checkpoint("Qwen2_5_VLForConditionalGeneration", root / "pruned", h.per_layer_plan(seed=5))
    export_onnx(root / "pruned", root / "onnx")
    processor = AutoProcessor.from_pretrained(root / "pruned")
    # keep each test image at its own size (the saved processor resizes everything to 56x56)
    processor.image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 28 * 28, "longest_edge": 224 * 224}, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return model, processor, root / "onnx"


def test_text_families_generate_greedily_like_transformers(text_export):
    model, folder = text_export
    config = json.loads((folder / "genai_config.json").read_text())
    layers = json.loads((folder / "manifest.json").read_text())["decoder"]["layers"]
    assert len({layer["num_key_value_heads"] for layer in layers}) > 1  # per-layer KV heads, from the graph
    assert config["model"]["decoder"]["num_hidden_layers"] == len(layers)
    genai = og.Model(str(folder))
    for prompt in PROMPTS:
        inputs = {"input_ids": torch.tensor([prompt])}
        expected = reference(model, inputs)
        assert len(expected) > 1
        assert genai_generate(genai, inputs) == expected


def _image_inputs(processor, size, seed):
    image = h.test_image(seed).resize(size)
    chat = processor.tokenizer.apply_chat_template(
        h.image_chat("how many red squares"), add_generation_prompt=True, tokenize=False
    )
    return dict(processor(text=[chat], images=[image], return_tensors="pt"))


def test_vl_with_images_of_two_sizes_generates_like_transformers(vl_export):
    model, processor, folder = vl_export
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["vision"]["dynamic_image_size"] and manifest["vision"]["grid_thw"] is None
    genai = og.Model(str(folder))
    assert genai.type == "qwen2_5_vl"
    grids = set()
    for seed, size in enumerate(IMAGE_SIZES):
        inputs = _image_inputs(processor, size, seed)
        grids.add(tuple(inputs["image_grid_thw"][0].tolist()))
        expected = reference(model, inputs)
        assert genai_generate(genai, inputs) == expected, size
    assert grids == {(1, 4, 4), (1, 6, 8)}


def test_vl_without_an_image_generates_like_transformers(vl_export):
    model, _, folder = vl_export
    genai = og.Model(str(folder))
    inputs = {"input_ids": torch.tensor([PROMPTS[0]])}
    assert genai_generate(genai, inputs) == reference(model, inputs)


def test_the_project_loop_takes_any_image_size_too(vl_export):
    model, processor, folder = vl_export
    generator = OnnxGenerator(folder)
    inputs = _image_inputs(processor, IMAGE_SIZES[1], 3)
    result = generator.generate(
        inputs["input_ids"][0].tolist(),
        pixel_values=inputs["pixel_values"].numpy(),
        image_grid_thw=inputs["image_grid_thw"].numpy(),
        max_new_tokens=NEW_TOKENS,
        eos_token_id=EOS,
    )
    assert result.tokens == reference(model, inputs)


def test_genai_files_are_written_beside_the_graphs(vl_export):
    _, _, folder = vl_export
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    assert config["vision"]["inputs"] == {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"}
    assert config["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert (folder / config["tokenizer_dir"] / "tokenizer.json").is_file()
    processor = json.loads((folder / config["vision"]["config_filename"]).read_text())["processor"]
    assert processor["name"] == "qwen2_5_image_processor"
    # the export's top level has no tokenizer: tools looking there fall back to the source checkpoint
    assert not (folder / "tokenizer.json").exists() and not (folder / "config.json").exists()


def test_genai_image_processor_reads_the_exported_processor_config(vl_export, tmp_path):
    """onnxruntime-genai's own processor (og.Images -> pixel patches and grid) with the exported settings
    gives what the checkpoint's transformers processor gives. Its tokenizer reads byte-level BPE, not the
    tiny word-level test tokenizer, so this copy of the export borrows the bundled demo VLM's."""
    import shutil

    from transformers import AutoProcessor

    from mucrasp.demo.bundled import bundled_demo_model

    _, _, folder = vl_export
    run = tmp_path / "export"
    shutil.copytree(folder, run)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(bundled_demo_model() / name, run / "tokenizer" / name)
    image = h.test_image(7)  # 56x56: the size the tiny processor resizes to, so neither resizes
    image.save(tmp_path / "image.png")
    processor = og.Model(str(run)).create_multimodal_processor()
    images = og.Images.open(str(tmp_path / "image.png"))
    out = processor("<|vision_start|><|image_pad|><|vision_end|>how many", images=images)
    hf = AutoProcessor.from_pretrained(folder.parent / "pruned").image_processor
    reference = hf(images=[image], return_tensors="np")
    np.testing.assert_array_equal(out["image_grid_thw"].as_numpy(), reference["image_grid_thw"])
    np.testing.assert_allclose(out["pixel_values"].as_numpy(), reference["pixel_values"], atol=1e-5)
    assert out["num_image_tokens"].as_numpy().tolist() == [4]
