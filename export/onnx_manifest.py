"""`manifest.json` of an ONNX export: each graph's inputs and outputs, the KV layout per layer, the ids.

Everything `onnx_runtime.OnnxGenerator` (or another runtime) needs to drive the graphs without the
Hugging Face config: per-layer KV-head counts differ in a pruned model, so the cache shapes are
listed layer by layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_ONNX_TYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def _value_info(value) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
    return {
        "name": value.name,
        "dtype": _ONNX_TYPES.get(tensor.elem_type, str(tensor.elem_type)).lower(),
        "shape": shape,
    }


def describe_graph(path: Path) -> dict[str, Any]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        "file": path.name,
        "inputs": [_value_info(v) for v in graph.input],
        "outputs": [_value_info(v) for v in graph.output],
    }


def _special_ids(model, folder: Path | None) -> dict[str, Any]:
    config, generation = model.config, getattr(model, "generation_config", None)
    ids: dict[str, Any] = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(generation, name, None) if generation is not None else None
        if value is None:
            value = getattr(config, name, None)
            if value is None and hasattr(config, "get_text_config"):
                value = getattr(config.get_text_config(), name, None)
        ids[name] = value
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if getattr(config, name, None) is not None:
            ids[name] = getattr(config, name)
    return ids


def build_manifest(
    folder: Path,
    graphs: dict[str, str],
    model,
    adapter,
    decoder_info: dict,
    dtype: str,
    opset: int,
    pruning: dict,
    source: Path,
) -> dict[str, Any]:
    text = adapter.text_config(model.config)
    vision = adapter.is_vision_language
    head_dim = decoder_info["head_dim"]
    layers = []
    for i, (mlp, kv) in enumerate(decoder_info["layers"]):
        layers.append(
            {
                "layer": i,
                "num_key_value_heads": kv,
                "head_dim": head_dim,
                "intermediate_size": mlp,
                "past_key": f"past_key_values.{i}.key",
                "past_value": f"past_key_values.{i}.value",
                "present_key": f"present.{i}.key",
                "present_value": f"present.{i}.value",
            }
        )
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "architecture": adapter.architecture,
        "source": str(Path(source).resolve()),
        "method": pruning.get("method"),
        "ratio": pruning.get("ratio"),
        "dtype": dtype,
        "opset": opset,
        "graphs": {name: describe_graph(folder / file) for name, file in graphs.items()},
        "decoder": {
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
            "num_hidden_layers": len(layers),
            "group_size": adapter.group_size(model.config),
            "position_ids": "mrope_3d" if vision else "1d",
            # a decoder call takes up to this many new tokens, on a past of up to this many
            "max_sequence": decoder_info["max_sequence"],
            # visual feature levels added after the first decoder layers (input `deepstack_embeds`)
            "deepstack_levels": adapter.deepstack_levels(model.config) if vision else 0,
            "kv_layout": "[batch, num_key_value_heads, sequence, head_dim]",
            "layers": layers,
        },
        "special_tokens": _special_ids(model, folder),
    }
    if vision:
        vc = model.config.vision_config
        rope = getattr(text, "rope_parameters", None) or {}
        manifest["vision"] = {
            "patch_size": vc.patch_size,
            "temporal_patch_size": vc.temporal_patch_size,
            "spatial_merge_size": vc.spatial_merge_size,
            "mrope_section": rope.get("mrope_section"),
            "encoder_exported": "vision" in graphs,
            # the vision graph takes one image of this patch grid (pixels: grid * patch_size per side);
            # None: it takes image_grid_thw as an input, and any image size
            "grid_thw": decoder_info.get("vision_grid_thw"),
            "dynamic_image_size": "vision" in graphs and decoder_info.get("vision_grid_thw") is None,
        }
    return manifest


def read_onnx_manifest(folder: str | Path) -> dict[str, Any]:
    from mucrasp.errors import MucraspError

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise MucraspError(f"{folder} is not an ONNX export (no {MANIFEST_NAME})")
    return json.loads(path.read_text())
