"""`genai_config.json` (and the tokenizer / processor files) that make an `export onnx` folder an
onnxruntime-genai model: `og.Model(folder)` loads it and generates.

The layout is onnxruntime-genai's own (see its `test/models/qwen2-5-vl/genai_config.json`):
- text families: `model.decoder` only (input_ids, attention_mask, position_ids, past/present KV);
- Qwen-VL families: `model.vision` (pixel_values as flattened patches + image_grid_thw ->
  image_features), `model.embedding` (input_ids + image_features -> inputs_embeds) and
  `model.decoder` (inputs_embeds, 3D M-RoPE position ids, which onnxruntime-genai computes itself).

Per-layer KV-head counts are not in the config: onnxruntime-genai (>= 0.15) reads each layer's from
the concrete shapes of the decoder's `past_key_values.%d.key` inputs; `num_key_value_heads` and
`head_size` here are only its defaults. Which `model.type` a family runs as, or whether it runs at
all, comes from the adapter (`onnx_genai_type`).

The tokenizer files go into `tokenizer/` (`model.tokenizer_dir`), so that the export's top level
still has no tokenizer and tools that look for one there fall back to the source checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

GENAI_CONFIG_NAME = "genai_config.json"
GENAI_PROCESSOR_NAME = "processor_config.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _session() -> dict[str, Any]:
    return {"log_id": "onnxruntime-genai", "provider_options": []}


def _stop_ids(manifest: dict, source: Path, adapter) -> list[int]:
    """eos of the generation config plus the family's turn-end tokens the tokenizer knows."""
    ids = _ids(manifest["special_tokens"].get("eos_token_id"))
    try:
        from transformers import AutoTokenizer

        ids += adapter.stop_token_ids(AutoTokenizer.from_pretrained(source))
    except Exception:  # no (loadable) tokenizer in the checkpoint: the config's eos alone
        pass
    return sorted(set(ids))


def image_processor_settings(source: Path) -> dict[str, Any]:
    """The checkpoint's Qwen2-VL image processor settings: transformers 5 keeps them inside
    processor_config.json, older folders in preprocessor_config.json."""
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = source / name
        if path.is_file():
            raw = json.loads(path.read_text())
            raw = raw.get(key) or {} if key else raw
            if raw:
                return raw
    return {}


def processor_config(source: Path, vision: dict) -> dict[str, Any]:
    """onnxruntime-genai's image processor (`qwen2_5_image_processor`) with the checkpoint's settings."""
    hf = image_processor_settings(source)
    size = hf.get("size") or {}
    min_pixels = size.get("shortest_edge") or hf.get("min_pixels") or 56 * 56
    max_pixels = size.get("longest_edge") or hf.get("max_pixels") or 28 * 28 * 1280
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    mean = hf.get("image_mean") or [0.48145466, 0.4578275, 0.40821073]
    std = hf.get("image_std") or [0.26862954, 0.26130258, 0.27577711]

    def op(name, kind, **attrs):
        return {"operation": {"name": name, "type": kind, **({"attrs": attrs} if attrs else {})}}

    return {
        "processor": {
            "name": "qwen2_5_image_processor",
            "transforms": [
                op("decode_image", "DecodeImage", color_space="RGB"),
                op("convert_to_rgb", "ConvertRGB"),
                op(
                    "resize",
                    "Resize",
                    width=540,
                    height=360,
                    smart_resize=1,
                    min_pixels=int(min_pixels),
                    max_pixels=int(max_pixels),
                    patch_size=patch,
                    merge_size=merge,
                ),
                op("rescale", "Rescale", rescale_factor=hf.get("rescale_factor", 1 / 255)),
                op("normalize", "Normalize", mean=mean, std=std, qwen2_5_vl=1),
                op(
                    "patch_image",
                    "PatchImage",
                    patch_size=patch,
                    temporal_patch_size=vision["temporal_patch_size"],
                    merge_size=merge,
                ),
            ],
        }
    }


def build_genai_config(manifest: dict, model, adapter, stop_ids: list[int]) -> dict[str, Any]:
    text = adapter.text_config(model.config)
    decoder = manifest["decoder"]
    graphs = manifest["graphs"]
    special = manifest["special_tokens"]
    layers = decoder["layers"]
    vision = "vision" in manifest
    pad = special.get("pad_token_id")
    # never a token a prompt holds: onnxruntime-genai masks pad tokens out of the attention
    pad = int(pad) if pad is not None else -1
    inputs = {
        ("inputs_embeds" if vision else "input_ids"): "inputs_embeds" if vision else "input_ids",
        "attention_mask": "attention_mask",
        "position_ids": "position_ids",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    config: dict[str, Any] = {
        "type": adapter.onnx_genai_type,
        "bos_token_id": special.get("bos_token_id") if special.get("bos_token_id") is not None else -1,
        "eos_token_id": stop_ids,
        "pad_token_id": pad,
        "context_length": decoder["max_sequence"],
        "vocab_size": decoder["vocab_size"],
        "tokenizer_dir": TOKENIZER_DIR,
        "decoder": {
            "filename": graphs["decoder"]["file"],
            "session_options": _session(),
            "head_size": layers[0]["head_dim"],
            "hidden_size": decoder["hidden_size"],
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": len(layers),
            # a default only: each layer's count is the concrete shape of its past key input
            "num_key_value_heads": layers[0]["num_key_value_heads"],
            "inputs": inputs,
            "outputs": {
                "logits": "logits",
                "present_key_names": "present.%d.key",
                "present_value_names": "present.%d.value",
            },
        },
    }
    if vision:
        v = manifest["vision"]
        for name in ("image_token_id", "video_token_id", "vision_start_token_id"):
            config[name] = special[name]
        config["embedding"] = {
            "filename": graphs["embedding"]["file"],
            "session_options": _session(),
            "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
            "outputs": {"inputs_embeds": "inputs_embeds"},
        }
        config["vision"] = {
            "filename": graphs["vision"]["file"],
            "session_options": _session(),
            "config_filename": GENAI_PROCESSOR_NAME,
            "spatial_merge_size": v["spatial_merge_size"],
            "patch_size": v["patch_size"],
            "tokens_per_second": getattr(model.config.vision_config, "tokens_per_second", 2.0),
            "inputs": {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"},
            "outputs": {"image_features": "image_features"},
        }
        window = getattr(model.config.vision_config, "window_size", None)
        if window:
            config["vision"]["window_size"] = window
    search = {
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
        "max_length": decoder["max_sequence"],
        "min_length": 0,
        # the decoder concatenates past and new keys itself (no preallocated shared buffer)
        "past_present_share_buffer": False,
        "top_k": 1,
        "top_p": 1.0,
        "temperature": 1.0,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "diversity_penalty": 0.0,
        "early_stopping": True,
    }
    return {"model": config, "search": search}


def genai_unsupported(manifest: dict, adapter) -> str | None:
    """Why onnxruntime-genai cannot run this export, or None when it can."""
    if manifest["decoder"].get("deepstack_levels"):
        return "onnxruntime-genai feeds the decoder no deepstack features (input deepstack_embeds)"
    if adapter.onnx_genai_type is None:
        return f"onnxruntime-genai has no model type that runs {adapter.architecture} exports"
    if "vision" in manifest and "vision" not in manifest["graphs"]:
        return "the export has no vision graph"
    return None


def write_genai_files(folder: Path, source: Path, manifest: dict, model, adapter) -> str | None:
    """Write genai_config.json, tokenizer/ and (VL) processor_config.json into `folder`.

    Returns None when written, else the reason onnxruntime-genai cannot run this export (nothing written).
    """
    reason = genai_unsupported(manifest, adapter)
    if reason:
        return reason
    config = build_genai_config(manifest, model, adapter, _stop_ids(manifest, source, adapter))
    (folder / GENAI_CONFIG_NAME).write_text(json.dumps(config, indent=2))
    tokenizer = folder / TOKENIZER_DIR
    tokenizer.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, tokenizer / name)
    if "vision" in manifest:
        processor = processor_config(source, manifest["vision"])
        (folder / GENAI_PROCESSOR_NAME).write_text(json.dumps(processor, indent=2))
    return None
