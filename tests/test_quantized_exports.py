"""Quantized exports serve: `export onnx --weights int8|int4` on ONNX Runtime and onnxruntime-genai.

The model is the bundled demo VLM (trained, so greedy tokens mean something; a random tiny model's
near-flat logits flip under any weight noise), exported dense. Prompts: demo scenes of the validation
split, with their images. A prompt agrees when its whole greedy continuation equals the fp32 export's.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from mucrasp.calibration.batches import load_processor
from mucrasp.demo.bundled import bundled_demo_model
from mucrasp.demo.dataset import split_seeds
from mucrasp.demo.scenes import make_scene
from mucrasp.devices import cpu_int8_dot_products
from mucrasp.errors import MucraspError
from mucrasp.evaluation.generation import chat_prompt
from mucrasp.export.onnx_export import export_onnx
from mucrasp.export.onnx_runtime import OnnxGenerator

NEW_TOKENS = 48  # the demo's chains of thought are about 50 tokens; most stop before this
PROMPTS = 12
# Shares of the 12 prompts whose greedy continuation equals the fp32 export's, measured when this was
# written: int8 12/12, int4 12/12. The floors leave one prompt of slack each.
AGREEMENT_FLOOR = {"int8": 11 / 12, "int4": 11 / 12}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    dense = root / "dense"
    shutil.copytree(bundled_demo_model(), dense, ignore=shutil.ignore_patterns(".*"))
    (dense / "pruning.json").write_text(json.dumps({"ratio": 0.0, "method": None}))
    folders = {}
    for weights in ("fp32", "int8", "int4"):
        folders[weights] = export_onnx(dense, root / f"onnx-{weights}", weights=weights).out
    return dense, folders


@pytest.fixture(scope="module")
def greedy(exports):
    """Greedy tokens of every export on the fixed prompt set (one generator per export)."""
    dense, folders = exports
    processor = load_processor(dense, vision=True)
    inputs = []
    for seed in split_seeds("validation", PROMPTS):
        scene = make_scene(seed)
        text = chat_prompt(processor, scene.question, has_image=True)
        inputs.append(processor(text=[text], images=[scene.image], return_tensors="np"))
    out = {}
    for weights, folder in folders.items():
        generator = OnnxGenerator(folder)
        out[weights] = [
            generator.generate(
                x["input_ids"][0],
                pixel_values=x["pixel_values"],
                image_grid_thw=x["image_grid_thw"],
                max_new_tokens=NEW_TOKENS,
            ).tokens
            for x in inputs
        ]
    return out


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_greedy_tokens_agree_with_fp32(greedy, weights):
    same = sum(a == b for a, b in zip(greedy[weights], greedy["fp32"]))
    print(f"{weights}: {same} of {PROMPTS} prompts agree with the fp32 export")
    agree = same / PROMPTS
    assert all(len(t) > 5 for t in greedy[weights])  # it generates, not stops at once
    assert agree >= AGREEMENT_FLOOR[weights]


@pytest.mark.parametrize("weights, op, max_ratio", [("int8", "MatMulInteger", 0.35), ("int4", "MatMulNBits", 0.25)])
def test_manifest_records_the_format_and_the_decoder_shrinks(exports, weights, op, max_ratio):
    _, folders = exports
    folder = folders[weights]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights"]["format"] == weights and manifest["dtype"] == "fp32"
    record = manifest["weights"]["quantized_graphs"]["decoder"]
    assert record["weight_type"] == weights and record["quantized_matmuls"] > 0
    graph = onnx.load(str(folder / "decoder.onnx"), load_external_data=False).graph
    assert sum(n.op_type == op for n in graph.node) == record["quantized_matmuls"]
    # the vision graph is not quantized: the same bytes as the fp32 export's

    def size(f, name):
        return sum(p.stat().st_size for p in f.glob(f"{name}.onnx*"))

    assert size(folder, "vision") == size(folders["fp32"], "vision")
    assert size(folder, "decoder") < max_ratio * size(folders["fp32"], "decoder")


def test_bad_weight_formats_are_one_clear_error(exports, tmp_path):
    dense, _ = exports
    with pytest.raises(MucraspError, match=r"is not one of fp32\|fp16\|int8\|int4"):
        export_onnx(dense, tmp_path / "x", weights="int3")
    with pytest.raises(MucraspError, match="quantizes an fp32 graph"):
        export_onnx(dense, tmp_path / "x", weights="int4", dtype="fp16")
    assert not (tmp_path / "x").exists()


def test_int4_export_runs_in_onnxruntime_genai(exports, greedy):
    """The real onnxruntime-genai runtime loads the int4 folder and generates what our loop generates."""
    import onnxruntime_genai as og

    dense, folders = exports
    processor = load_processor(dense, vision=True)
    scene = make_scene(split_seeds("validation", 1)[0])
    x = processor(text=[chat_prompt(processor, scene.question, True)], images=[scene.image], return_tensors="np")
    ids = x["input_ids"].astype(np.int32)
    model = og.Model(str(folders["int4"]))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    tensors = og.NamedTensors()
    tensors["input_ids"] = ids
    tensors["pixel_values"] = x["pixel_values"].astype(np.float32)
    tensors["image_grid_thw"] = x["image_grid_thw"].astype(np.int64)
    image_token = json.loads((folders["int4"] / "manifest.json").read_text())["special_tokens"]["image_token_id"]
    tensors["num_image_tokens"] = np.array([int((ids == image_token).sum())], dtype=np.int64)
    generator.set_inputs(tensors)
    tokens = []
    while not generator.is_done() and len(tokens) < NEW_TOKENS:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    ours = greedy["int4"][0]
    assert len(tokens) > 5
    assert tokens[: len(ours)] == ours[: len(tokens)]


def test_eval_measures_quantized_onnx_exports_against_the_dense_model(exports, tmp_path):
    """`eval` on an export runs it in ONNX Runtime: the fp32 graphs reproduce the dense model, int4 drifts a little."""
    from mucrasp.demo.dataset import write_split
    from mucrasp.evaluation.evaluate import EvalConfig, evaluate

    dense, folders = exports
    data = write_split("validation", tmp_path / "data", n=6)
    reports = {
        weights: evaluate(EvalConfig(pruned=folders[weights], dense=dense, data=data, max_new_tokens=NEW_TOKENS))
        for weights in ("fp32", "int4")
    }
    fp32, int4 = reports["fp32"], reports["int4"]
    print({w: (r["cot_kl"], r["agreement"]) for w, r in reports.items()})
    assert fp32["runtime"] == int4["runtime"] == "onnxruntime"
    assert (fp32["weights"], int4["weights"]) == ("fp32", "int4")
    assert fp32["items"] == int4["items"] == 6 and fp32["cot_tokens"] > 100
    assert fp32["cot_kl"] < 1e-4  # the same function as the dense model, up to float rounding
    assert int4["cot_kl"] > 10 * fp32["cot_kl"]  # 4-bit weights do change the logits
    assert fp32["agreement"] == 1.0 and int4["agreement"] >= 5 / 6


# ---- vLLM: a W8A8 compressed-tensors export served by the real vLLM CPU engine (one engine start) ------
VLLM_PROMPTS = [[1, 5, 9, 33, 2, 7, 300, 41], [1, 400, 3, 77, 81, 9, 9, 12, 13, 14]]
# Largest |prompt log-prob difference| of the W8A8 export on vLLM against the unquantized model on
# transformers (fp32): measured 0.036 with fp32 activations, 0.071 in bf16 (an AMX host, where vLLM's int8
# kernel takes bf16 activations only; tests/export_helpers picks the dtype as the smoke test does).
# W8A8 simulated in torch (per-channel weights, per-token activations) gives 0.036 on this model too.
# On an x86 host without VNNI or AMX (AVX2 only, the CI machine) vLLM's oneDNN int8 GEMM is less exact
# than that simulation: measured 0.176 (AVX2's int8 dot products pass through int16 pairs, which can
# saturate; not isolated further). A broken export (wrong scale, layout, width) is off by nats.
LOGPROB_TOLERANCE = 0.1
LOGPROB_TOLERANCE_AVX2_ONLY = 0.3


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    """A per-layer pruned tiny Qwen2.5-VL (every layer its own MLP width and KV-head count) as W8A8."""
    import export_helpers as h

    from mucrasp.export.vllm_checkpoint import export_vllm

    root = tmp_path_factory.mktemp("w8a8")
    model = h.make_pruned_checkpoint("Qwen2_5_VLForConditionalGeneration", root / "pruned", h.per_layer_plan(seed=2))
    result = export_vllm(root / "pruned", root / "w8a8", weights="w8a8")
    served = h.run_vllm(result.out, VLLM_PROMPTS, [("how many red squares", 0)], max_tokens=8)
    return model, result, served


def test_w8a8_checkpoint_is_compressed_tensors_int8(w8a8):
    import torch
    from safetensors import safe_open

    _, result, _ = w8a8
    config = json.loads((result.out / "config.json").read_text())
    assert config["architectures"] == ["MucraspQwen2_5_VLForConditionalGeneration"]  # per-layer widths kept
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "int-quantized"
    with safe_open(str(result.out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        q = f.get_tensor("model.layers.1.mlp.down_proj.weight")
        scale = f.get_tensor("model.layers.1.mlp.down_proj.weight_scale")
        vision = [n for n in names if "visual" in n and n.endswith(".weight")]
        assert all(f.get_tensor(n).is_floating_point() for n in vision)  # the vision tower is not quantized
    assert q.dtype == torch.int8 and scale.shape == (q.shape[0], 1)
    assert result.quantization["quantized_linears"] == 3 * 7
    assert result.quantization["bytes_after"] < result.quantization["bytes_before"]


def test_w8a8_export_serves_on_vllm_cpu(w8a8):
    import torch

    model, _, served = w8a8
    worst = 0.0
    for prompt, out in zip(VLLM_PROMPTS, served["token_prompts"]):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0].double(), -1)
        expected = [float(logp[i - 1, prompt[i]]) for i in range(1, len(prompt))]
        worst = max(worst, max(abs(a - b) for a, b in zip(expected, out["prompt_logprobs"][1:])))
        assert len(out["token_ids"]) == 8
    print(f"W8A8 on vLLM vs fp32 transformers: worst |prompt log-prob difference| {worst:.4f}")
    assert worst < (LOGPROB_TOLERANCE if cpu_int8_dot_products() else LOGPROB_TOLERANCE_AVX2_ONLY)
    assert len(served["image_prompts"][0]["token_ids"]) == 8  # with an image, through the unquantized tower


# ---- the other vLLM formats: written as compressed-tensors reads them (not served on this CPU) ----------
@pytest.mark.parametrize("weights", ["w8a8", "fp8", "w4a16"])
def test_quantized_tensors_dequantize_to_the_weight(weights):
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from mucrasp.export.vllm_quantize import W4A16_GROUP_SIZE, quantize_tensor

    w = torch.randn(64, 2 * W4A16_GROUP_SIZE, generator=torch.Generator().manual_seed(0))
    out = quantize_tensor("model.layers.0.mlp.down_proj.weight", w, weights)
    scale = out["model.layers.0.mlp.down_proj.weight_scale"]
    if weights == "w4a16":
        q = unpack_from_int32(out["model.layers.0.mlp.down_proj.weight_packed"], 4, torch.Size(w.shape))
        assert out["model.layers.0.mlp.down_proj.weight_shape"].tolist() == list(w.shape)
        back = (q.float().reshape(64, -1, W4A16_GROUP_SIZE) * scale[..., None]).reshape(w.shape)
        step = scale.max()  # one quantization step of the coarsest group
    else:
        q = out["model.layers.0.mlp.down_proj.weight"]
        assert q.dtype == (torch.int8 if weights == "w8a8" else torch.float8_e4m3fn) and scale.shape == (64, 1)
        back = q.float() * scale
        step = scale.max() * (1 if weights == "w8a8" else 32)  # e4m3 keeps 3 mantissa bits: 1/16 relative
    assert (back - w).abs().max() <= step / 2 + 1e-6


def test_vllm_weight_formats_are_checked(tmp_path, capsys):
    from mucrasp.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["export", "vllm", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", "int4"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error:" in err and "is not one of bf16|w8a8|w4a16|fp8" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_refuses_a_vllm_quantized_export_in_one_line(w8a8, tmp_path):
    from mucrasp.evaluation.evaluate import EvalConfig, evaluate

    model, result, _ = w8a8
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": None, "prompt": "hi", "response": "ok"}) + "\n")
    with pytest.raises(MucraspError, match="compressed-tensors checkpoint for vLLM.*export onnx"):
        evaluate(EvalConfig(pruned=result.out, dense=result.out, data=data))
