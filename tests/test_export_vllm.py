"""`export vllm`: the real vLLM engine (CPU build) serves exported checkpoints as transformers runs them.

One engine per case, each started once (about 45 s each on 2 cores) in a child process:
- a per-layer Qwen2.5-VL (MuCRASP architecture, served through this project's vLLM plugin),
- a uniform Qwen2.5-VL (a stock checkpoint: no plugin architecture involved),
- a per-layer Qwen2-VL and a per-layer Llama, both with the o_proj/down_proj biases that FLAP's
  bias compensation adds;
- every other registered family with a vLLM per-layer class, per-layer with those biases.
(The per-layer Qwen2 text model uses the same plugin classes as the Qwen-VL language models; its
export is checked by the CLI test below, not served.)
Each is compared with transformers on the pruned model: greedy tokens on 8 text prompts (token
ids) and, for the VL models, 4 chat prompts with an image; and prompt log-probs, because tiny
random models often repeat one token, which makes greedy agreement weak evidence on its own.
"""

from __future__ import annotations

import json

import export_helpers as h
import pytest
import torch
from conftest import ARCHITECTURES
from typer.testing import CliRunner

from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import LAYER_INTERMEDIATE_SIZES
from mucrasp.errors import MucraspError
from mucrasp.export.vllm_checkpoint import export_vllm

MAX_TOKENS = 12
TOKEN_PROMPTS = [
    [1, 5, 9, 33, 2, 7, 300, 41],
    [1, 100, 200],
    [1, 17, 17, 17, 4, 250],
    [1, 400, 3, 77, 81, 9, 9, 12, 13, 14],
    [1, 42],
    [1, 256, 128, 64, 32, 16, 8],
    [1, 499, 450, 401, 333, 222, 111, 11, 6],
    [1, 60, 61, 62, 63],
]
IMAGE_PROMPTS = [
    ("how many red squares", 0),
    ("describe the image", 1),
    ("what color is the shape", 2),
    ("count the blue circle step by step", 3),
]
LOGPROB_TOLERANCE = 1e-3  # nats; measured about 2e-6 in fp32

# case -> (architecture, plan, architecture the export names, o_proj/down_proj biases as FLAP adds them)
CASES = {
    "qwen25vl-per-layer": (
        "Qwen2_5_VLForConditionalGeneration",
        h.per_layer_plan,
        "MucraspQwen2_5_VLForConditionalGeneration",
        False,
    ),
    "qwen25vl-uniform": (
        "Qwen2_5_VLForConditionalGeneration",
        h.uniform_plan,
        "Qwen2_5_VLForConditionalGeneration",
        False,
    ),
    "qwen2vl-per-layer-bias": (
        "Qwen2VLForConditionalGeneration",
        h.per_layer_plan,
        "MucraspQwen2VLForConditionalGeneration",
        True,
    ),
    "llama-per-layer-bias": ("LlamaForCausalLM", h.per_layer_plan, "MucraspLlamaForCausalLM", True),
}
_SERVED_ELSEWHERE = {"Qwen2ForCausalLM"}  # its per-layer classes are the Qwen-VL language models'
for _arch in ARCHITECTURES:
    _adapter = get_adapter(_arch)
    if _adapter.vllm_per_layer_class and _arch not in _SERVED_ELSEWHERE | {c[0] for c in CASES.values()}:
        CASES[f"{_arch}-per-layer-bias"] = (_arch, h.per_layer_plan, _adapter.per_layer_architecture, True)


@pytest.fixture(scope="module", params=list(CASES))
def served(request, tmp_path_factory):
    """(case, reference model, processor or None, exported folder, vLLM results)."""
    architecture, plan, expected_arch, output_bias = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = h.make_pruned_checkpoint(architecture, root / "pruned", plan(), output_bias=output_bias)
    exported = export_vllm(root / "pruned", root / "served")
    assert exported.architecture == expected_arch
    vision = get_adapter(architecture).is_vision_language
    results = h.run_vllm(exported.out, TOKEN_PROMPTS, IMAGE_PROMPTS if vision else [], MAX_TOKENS)
    processor = None
    if vision:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(exported.out)
    return request.param, model, processor, exported, results


def _reference(model, inputs: dict) -> tuple[list[int], list[float]]:
    ids = inputs["input_ids"]
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, min_new_tokens=MAX_TOKENS
        )
        logprobs = torch.log_softmax(model(**inputs).logits[0].float(), -1)
    prompt = ids[0].tolist()
    return generated[0, len(prompt) :].tolist(), [logprobs[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]


def _compare(model, inputs, result) -> float:
    assert result["prompt_token_ids"] == inputs["input_ids"][0].tolist()
    tokens, logprobs = _reference(model, inputs)
    assert result["token_ids"] == tokens
    return max(abs(a - b) for a, b in zip(result["prompt_logprobs"][1:], logprobs))


def test_exported_config_names_the_right_architecture(served):
    case, _, _, exported, results = served
    config = json.loads((exported.out / "config.json").read_text())
    text = config.get("text_config", config)
    assert results["architecture"] == exported.architecture == config["architectures"][0]
    assert (LAYER_INTERMEDIATE_SIZES in text) == exported.per_layer == ("per-layer" in case)
    card = (exported.out / "README.md").read_text()
    assert "Per-layer widths" in card and "vllm serve" in card
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "pruning.json"):
        assert (exported.out / name).is_file()


def test_vllm_matches_transformers_on_text_prompts(served):
    _, model, _, _, results = served
    worst = 0.0
    for prompt, result in zip(TOKEN_PROMPTS, results["token_prompts"], strict=True):
        worst = max(worst, _compare(model, {"input_ids": torch.tensor([prompt])}, result))
    print(f"max |prompt logprob difference| over {len(TOKEN_PROMPTS)} text prompts: {worst:.2e}")
    assert worst < LOGPROB_TOLERANCE


def test_vllm_matches_transformers_with_an_image(served):
    case, model, processor, _, results = served
    if processor is None:
        pytest.skip(f"{case} is a text model")
    worst = 0.0
    for (text, seed), result in zip(IMAGE_PROMPTS, results["image_prompts"], strict=True):
        chat = processor.tokenizer.apply_chat_template(h.image_chat(text), add_generation_prompt=True, tokenize=False)
        inputs = dict(processor(text=[chat], images=[h.test_image(seed)], return_tensors="pt"))
        worst = max(worst, _compare(model, inputs, result))
    print(f"max |prompt logprob difference| over {len(IMAGE_PROMPTS)} image prompts: {worst:.2e}")
    assert worst < LOGPROB_TOLERANCE


# ---- no engine needed -----------------------------------------------------------------------------
def test_export_refuses_a_folder_that_is_not_a_pruned_checkpoint(tmp_path):
    from mucrasp.tiny_models import save_tiny_model

    save_tiny_model("LlamaForCausalLM", tmp_path / "stock")
    with pytest.raises(MucraspError, match="not a pruned checkpoint"):
        export_vllm(tmp_path / "stock", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_vllm_and_its_error(tmp_path):
    from mucrasp.cli import app

    h.make_pruned_checkpoint("Qwen2ForCausalLM", tmp_path / "pruned", h.per_layer_plan())
    runner = CliRunner()
    result = runner.invoke(app, ["export", "vllm", str(tmp_path / "pruned"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["MucraspQwen2ForCausalLM"]
    again = runner.invoke(app, ["export", "vllm", str(tmp_path / "pruned"), "--out", str(tmp_path / "out")])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_plugin_architectures_come_from_the_adapters_without_importing_vllm():
    import subprocess
    import sys

    code = (
        "import json, sys; from mucrasp.export.vllm_plugin import ARCHITECTURES; "
        "print(json.dumps([ARCHITECTURES, sorted(m for m in sys.modules if m.split('.')[0] == 'vllm')]))"
    )
    mapping, vllm_modules = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert vllm_modules == []  # adapters name their vLLM classes; only vLLM's own processes build them
    served = {
        get_adapter(a).per_layer_architecture: get_adapter(a).vllm_per_layer_class
        for a in ARCHITECTURES
        if get_adapter(a).vllm_per_layer_class
    }
    assert mapping == served
