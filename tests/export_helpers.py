"""Helpers for the export tests: a tokenizer and processor for the tiny models, and pruned checkpoints.

The tiny models of `mucrasp.tiny_models` have no tokenizer. vLLM needs one (and, for images, a
processor), so this module builds a word-level tokenizer of the tiny vocabulary (512 ids) with a
Qwen-style chat template, the Qwen-VL special tokens at the ids the tiny configs use, and a Qwen2-VL
image processor sized so that a 56x56 image becomes a 4x4 patch grid (4 image tokens).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import save_pruned
from mucrasp.slicing import slice_model
from mucrasp.tiny_models import (
    IMAGE_TOKEN_ID,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    VOCAB_SIZE,
    build_tiny_model,
)
from mucrasp.units import KeepPlan, LayerKeep

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "the a an is are was of to in on and or not how many what which where why count red blue green square "
    "squares circle image picture there one two three four five six zero step therefore so because answer "
    "think first then next left right top bottom small large color shape user assistant system describe you "
    "see it this that with for"
).split()
IMAGE_SIZE = 56  # pixels: a 4x4 grid of 14-pixel patches, merged 2x2 into 4 image tokens


def build_tokenizer():
    """A PreTrainedTokenizerFast over the tiny vocabulary: specials, some words, then filler words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|endoftext|>": 3, "\n": 4}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    while len(vocab) < IMAGE_TOKEN_ID:
        vocab[f"w{len(vocab)}"] = len(vocab)
    specials = {
        "<|image_pad|>": IMAGE_TOKEN_ID,
        "<|video_pad|>": VIDEO_TOKEN_ID,
        "<|vision_start|>": VISION_START_TOKEN_ID,
        "<|vision_end|>": VISION_END_TOKEN_ID,
    }
    vocab.update(specials)
    assert len(vocab) == VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "\n", *specials],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer_and_processor(model_dir: Path, vision: bool, processor_class: str = "Qwen2_5_VLProcessor") -> None:
    """Write the tokenizer (and for VL models the processor) into an existing model folder."""
    tokenizer = build_tokenizer()
    if not vision:
        tokenizer.save_pretrained(model_dir)
        return
    from transformers import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE * IMAGE_SIZE, "longest_edge": IMAGE_SIZE * IMAGE_SIZE},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    tokenizer.save_pretrained(model_dir)
    image_processor.save_pretrained(model_dir)
    (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    # vLLM reads `processor_config.json`-less folders through AutoProcessor; name the processor class.
    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    config["processor_class"] = processor_class
    (model_dir / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def per_layer_plan(mlp: int = 384, groups: int = 2, n_layers: int = 3, seed: int = 0) -> KeepPlan:
    """Different MLP widths and KV-head counts in every layer."""
    g = torch.Generator().manual_seed(seed)
    widths = [(mlp // 2, groups), (mlp - 64, 1), (mlp // 4, groups)]
    return KeepPlan(
        [
            LayerKeep(
                torch.randperm(mlp, generator=g)[:m].sort().values,
                torch.randperm(groups, generator=g)[:k].sort().values,
            )
            for m, k in widths[:n_layers]
        ]
    )


def uniform_plan(mlp: int = 384, groups: int = 2, n_layers: int = 3, keep_mlp: int = 192, seed: int = 1) -> KeepPlan:
    g = torch.Generator().manual_seed(seed)
    return KeepPlan(
        [
            LayerKeep(torch.randperm(mlp, generator=g)[:keep_mlp].sort().values, torch.arange(groups))
            for _ in range(n_layers)
        ]
    )


def add_output_biases(model, adapter, seed: int = 0) -> None:
    """Give every o_proj and down_proj a bias, as FLAP's bias compensation does."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapter.decoder_layers(model):
        for linear in (adapter.attention_projections(layer)[3], adapter.mlp_projections(layer)[2]):
            linear.bias = torch.nn.Parameter(torch.randn(linear.out_features, generator=g) * 0.1)


def make_pruned_checkpoint(architecture: str, out_dir: Path, plan: KeepPlan, seed: int = 0, output_bias: bool = False):
    """Build a tiny model, slice it with `plan`, save it as a pruned checkpoint with tokenizer/processor.

    Returns the sliced in-memory model (the transformers reference).
    """
    out_dir = Path(out_dir)
    model = build_tiny_model(architecture, seed=seed)
    adapter = get_adapter(architecture)
    before = adapter.layer_widths(model)
    slice_model(model, adapter, plan)
    if output_bias:
        add_output_biases(model, adapter, seed)
    manifest = {
        "format_version": 1,
        "method": "test-random",
        "ratio": 0.3,
        "base_model": f"tiny-{architecture}",
        "architecture": architecture,
        "layout": "uniform" if plan.is_uniform() else "global",
        "widths_before": [{"mlp_channels": m, "kv_groups": g} for m, g in before],
        "widths_after": plan.widths(),
    }
    source = out_dir.parent / f".{out_dir.name}-source"
    source.mkdir(parents=True, exist_ok=True)
    processor_class = architecture.replace("ForConditionalGeneration", "Processor")  # Qwen2_5_VLProcessor, ...
    save_tokenizer_and_processor(source, vision=adapter.is_vision_language, processor_class=processor_class)
    save_pruned(copy.deepcopy(model), out_dir, plan, manifest, source_dir=source)
    return model


# ---- vLLM, run in a child process -------------------------------------------------------------
# Each engine runs in its own `python export_helpers.py vllm ...` process: the test process never
# imports vLLM, engines never share a process, and the engine runs in that process itself
# (VLLM_ENABLE_V1_MULTIPROCESSING=0), which skips starting an engine-core process on 2 cores.


def test_image(seed: int):
    """A deterministic 56x56 RGB image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype("uint8"))


def image_chat(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def run_vllm(
    model_dir: Path,
    token_prompts: list[list[int]],
    image_prompts: list[tuple[str, int]],
    max_tokens: int,
    timeout: int = 600,
) -> dict:
    """Greedy outputs and prompt log-probs from the real vLLM engine, in a child process."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        result = Path(tmp) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "model": str(model_dir),
                    "token_prompts": token_prompts,
                    "image_prompts": image_prompts,
                    "max_tokens": max_tokens,
                    "result": str(result),
                }
            )
        )
        env = {
            **os.environ,
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_LOGGING_LEVEL": "WARNING",
        }
        proc = subprocess.run(
            [sys.executable, __file__, "vllm", str(request)], env=env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"vLLM child failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
        return json.loads(result.read_text())


def _vllm_child(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    config = json.loads((Path(request["model"]) / "config.json").read_text())
    vision = "vision_config" in config
    from mucrasp.serve.backends import vllm_dtype
    from mucrasp.serve.config import SmokeConfig

    llm = LLM(
        request["model"],
        # fp32, as the smoke test picks it on CPU: bf16 for an int8 export on an AMX host (its int8 kernel)
        dtype=vllm_dtype(SmokeConfig(Path(request["model"])), gpu=False),
        enforce_eager=True,
        max_model_len=256,
        seed=0,
        limit_mm_per_prompt={"image": 1} if vision else None,
    )
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], prompt_logprobs=0, ignore_eos=True)

    def pack(output) -> dict:
        logprobs = [None] + [next(iter(d.values())).logprob for d in output.prompt_logprobs[1:]]
        return {
            "prompt_token_ids": list(output.prompt_token_ids),
            "token_ids": list(output.outputs[0].token_ids),
            "prompt_logprobs": logprobs,
        }

    results = {"architecture": config["architectures"][0], "token_prompts": [], "image_prompts": []}
    if request["token_prompts"]:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in request["token_prompts"]], params)
        results["token_prompts"] = [pack(o) for o in outputs]
    for text, seed in request["image_prompts"]:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image_pil", "image_pil": test_image(seed)}, {"type": "text", "text": text}],
            }
        ]
        results["image_prompts"].append(pack(llm.chat(messages, params, use_tqdm=False)[0]))
    Path(request["result"]).write_text(json.dumps(results))


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "vllm":
        _vllm_child(sys.argv[2])
