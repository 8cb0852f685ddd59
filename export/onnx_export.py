"""`export onnx`: the split ONNX Runtime GenAI uses, exported from the sliced module itself.

Graphs (all opset 18, weights as external data):
- text models: `decoder.onnx`: input_ids, attention_mask, position_ids [B, S], past key/values ->
  logits, present key/values.
- Qwen-VL models:
  - `vision.onnx`: pixel_values [patches, C*T*P*P], image_grid_thw [images, 3] -> image_features;
  - `embedding.onnx`: input_ids, image_features -> inputs_embeds (image tokens replaced in order);
  - `decoder.onnx`: inputs_embeds, attention_mask, 3D M-RoPE position_ids [3, B, S], past ->
    logits, present.

Because the graphs are traced from the loaded (sliced) `nn.Module`, each layer's KV-head count and
MLP width are whatever the weights say; `manifest.json` (see `onnx_manifest`) records them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from mucrasp.atomic_io import atomic_directory, check_output_dir, write_json_atomic
from mucrasp.checkpoint import read_manifest
from mucrasp.errors import MucraspError
from mucrasp.model_loading import load_model

from mucrasp.export.onnx_manifest import MANIFEST_NAME, build_manifest

OPSET = 18
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def kv_names(i: int) -> tuple[str, str, str, str]:
    return (f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")


class DecoderWithPast(nn.Module):
    """The language model plus LM head, with the KV cache as flat tensors in and out."""

    def __init__(self, model, adapter, embeds_input: bool):
        super().__init__()
        self.decoder = adapter.language_model(model)
        self.lm_head = model.lm_head
        self.config = adapter.text_config(model.config)
        self.embeds_input = embeds_input
        self.num_layers = len(adapter.decoder_layers(model))

    def forward(self, inputs, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.config)
        for i, layer in enumerate(cache.layers[: self.num_layers]):
            # The past becomes the layer's cache as it is (no concatenation onto an empty tensor).
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
        kwargs = {"inputs_embeds": inputs} if self.embeds_input else {"input_ids": inputs}
        out = self.decoder(
            attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True, **kwargs
        )
        logits = self.lm_head(out.last_hidden_state)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (logits, *present)


class Embedding(nn.Module):
    """input_ids -> inputs_embeds, with image tokens replaced by the vision encoder's features, in order."""

    def __init__(self, model, adapter, image_token_id: int):
        super().__init__()
        self.embed_tokens = adapter.embed_tokens(model)
        self.image_token_id = image_token_id

    def forward(self, input_ids, image_features):
        embeds = self.embed_tokens(input_ids)
        is_image = (input_ids == self.image_token_id).reshape(-1)
        # index of each image token among the image tokens: row of image_features it takes
        order = torch.cumsum(is_image.to(torch.int64), 0) - 1
        padded = torch.cat([image_features.to(embeds.dtype), torch.zeros_like(embeds[0, :1])], 0)
        rows = torch.where(is_image, order, torch.full_like(order, image_features.shape[0]))
        picked = padded[rows].reshape(embeds.shape)
        return torch.where(is_image.reshape(input_ids.shape)[..., None], picked, embeds)


class VisionEncoder(nn.Module):
    """pixel_values of one image at a fixed patch grid -> its merged image features.

    The grid is a constant of the graph: the Qwen-VL vision towers compute window and rotary indices
    from `image_grid_thw` values in Python, which a trace cannot keep symbolic.
    """

    def __init__(self, model, grid_thw: tuple[int, int, int]):
        super().__init__()
        self.visual = model.model.visual
        self.grid_thw = tuple(int(x) for x in grid_thw)
        # Index tensors the tower would derive from the grid values: computed here, once, with the
        # tower's own helpers, and handed to it as the precomputed kwargs it accepts.
        helpers = sys.modules[type(self.visual).__module__]
        grid = torch.tensor([self.grid_thw], dtype=torch.int64)
        merge = self.visual.spatial_merge_size
        precomputed = {"position_ids": helpers.get_vision_position_ids(grid, merge)}
        precomputed["cu_seqlens"], _ = helpers.get_vision_attention_seqlens(grid, self.visual.config)
        if hasattr(self.visual, "window_size") and hasattr(helpers, "get_vision_window_index"):
            precomputed["window_index"], precomputed["cu_window_seqlens"] = helpers.get_vision_window_index(
                grid, spatial_merge_size=merge, window_size=self.visual.window_size, patch_size=self.visual.patch_size
            )
        self.precomputed = list(precomputed)
        for name, tensor in precomputed.items():
            self.register_buffer(f"pre_{name}", torch.as_tensor(tensor), persistent=False)

    def forward(self, pixel_values):
        grid = torch.tensor([self.grid_thw], dtype=torch.int64)
        kwargs = {name: getattr(self, f"pre_{name}") for name in self.precomputed}
        out = self.visual(pixel_values, grid_thw=grid, **kwargs)
        return out.pooler_output if hasattr(out, "pooler_output") else out


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress and warnings per graph; keep the CLI output to our own lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> None:
    with _quiet():
        # torch.export first, so that a shape the trace cannot keep dynamic fails here, loudly
        program = torch.export.export(module, tuple(args), dynamic_shapes=dynamic_shapes, strict=False)
        onnx_program = torch.onnx.export(
            program, (), dynamo=True, opset_version=OPSET, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes,  # here only to name the dynamic axes (batch, sequence, ...)
            optimize=True, verify=False, external_data=True,
        )
    onnx_program.save(str(path), external_data=True)


def _past_example(widths, head_dim, batch, past_len, dtype):
    past = []
    for _, kv in widths:
        # two distinct tensors: torch.export merges inputs that alias one tensor into one graph input
        past += [torch.zeros(batch, kv, past_len, head_dim, dtype=dtype) for _ in range(2)]
    return past


def export_decoder(model, adapter, path: Path, dtype: torch.dtype) -> dict:
    vision = adapter.is_vision_language
    text = adapter.text_config(model.config)
    head_dim = adapter.head_dim(model.config)
    widths = adapter.layer_widths(model)
    wrapper = DecoderWithPast(model, adapter, embeds_input=vision).eval()
    # batch 2 in the example: an example batch of 1 gets specialised and bakes wrong shapes into the past path
    batch, seq, past_len = 2, 3, 2
    if vision:
        inputs = torch.zeros(batch, seq, text.hidden_size, dtype=dtype)
        position_ids = torch.arange(past_len, past_len + seq).view(1, 1, -1).expand(3, batch, -1).contiguous()
        first = "inputs_embeds"
        pos_shape = {1: "batch", 2: "sequence"}
        inputs_shape = {0: "batch", 1: "sequence"}
    else:
        inputs = torch.ones(batch, seq, dtype=torch.int64)
        position_ids = torch.arange(past_len, past_len + seq).view(1, -1).expand(batch, -1).contiguous()
        first = "input_ids"
        pos_shape = {0: "batch", 1: "sequence"}
        inputs_shape = {0: "batch", 1: "sequence"}
    attention_mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    past = _past_example(widths, head_dim, batch, past_len, dtype)
    names_in, names_out = [first, "attention_mask", "position_ids"], ["logits"]
    for i in range(len(widths)):
        pk, pv, ok, ov = kv_names(i)
        names_in += [pk, pv]
        names_out += [ok, ov]
    seq_dim, past_dim = torch.export.Dim("sequence", max=4096), torch.export.Dim("past_sequence", max=8192)
    batch_dim = torch.export.Dim("batch", max=256)
    total = torch.export.Dim("total_sequence", min=4, max=12288)  # min: a guard of the traced mask code
    dims = {"batch": batch_dim, "sequence": seq_dim}
    dynamic = [
        {k: dims[v] for k, v in inputs_shape.items()},
        {0: batch_dim, 1: total},
        {k: dims[v] for k, v in pos_shape.items()},
        tuple({0: batch_dim, 2: past_dim} for _ in past),  # *past
    ]
    with torch.no_grad():
        _export(wrapper, (inputs, attention_mask, position_ids, *past), path, names_in, names_out, dynamic)
    return {"layers": widths, "head_dim": head_dim}


def export_embedding(model, adapter, path: Path, dtype: torch.dtype) -> None:
    image_token_id = model.config.image_token_id
    hidden = adapter.text_config(model.config).hidden_size
    ids = torch.tensor([[1, image_token_id, image_token_id, 7], [1, 5, image_token_id, image_token_id]])  # batch 2: see decoder
    feats = torch.zeros(4, hidden, dtype=dtype)
    dynamic = [
        {0: torch.export.Dim("batch", max=256), 1: torch.export.Dim("sequence", max=8192)},
        {0: torch.export.Dim("image_tokens", max=65536)},
    ]
    with torch.no_grad():
        _export(Embedding(model, adapter, image_token_id).eval(), (ids, feats), path,
                ["input_ids", "image_features"], ["inputs_embeds"], dynamic)


def export_vision(model, path: Path, dtype: torch.dtype, grid_thw: tuple[int, int, int]) -> None:
    vc = model.config.vision_config
    patch_dim = getattr(vc, "in_channels", 3) * vc.temporal_patch_size * vc.patch_size**2
    t, h, w = grid_thw
    pixels = torch.zeros(t * h * w, patch_dim, dtype=dtype)
    with torch.no_grad():
        _export(VisionEncoder(model, grid_thw).eval(), (pixels,), path, ["pixel_values"], ["image_features"], None)


def vision_grid(config, folder: Path, image_size: int | None) -> tuple[int, int, int]:
    """The patch grid of the one image size the vision graph takes: `image_size` pixels square, or
    the largest square the model's image processor allows, in whole merged patches."""
    vc = config.vision_config
    unit = vc.patch_size * vc.spatial_merge_size
    if image_size is None:
        image_size = 448
        # transformers 5 saves the image processor inside processor_config.json; older folders
        # have preprocessor_config.json.
        for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
            path = folder / name
            if not path.is_file():
                continue
            raw = json.loads(path.read_text())
            raw = raw.get(key) or {} if key else raw
            pixels = (raw.get("size") or {}).get("longest_edge") or raw.get("max_pixels")
            if pixels:
                image_size = int(pixels**0.5)
                break
    side = max(unit, image_size // unit * unit)
    return (1, side // vc.patch_size, side // vc.patch_size)


@dataclass
class OnnxExport:
    out: Path
    graphs: list[str]


def export_onnx(pruned_dir: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False,
                vision_encoder: bool = True, image_size: int | None = None) -> OnnxExport:
    """Export a pruned checkpoint to ONNX graphs plus `manifest.json` in `out` (atomically)."""
    pruned_dir, out = Path(pruned_dir), Path(out)
    if dtype not in DTYPES:
        raise MucraspError(f"unknown dtype {dtype!r}; choose fp32 or fp16")
    pruning = read_manifest(pruned_dir)
    check_output_dir(out, overwrite)
    loaded = load_model(pruned_dir, dtype=DTYPES[dtype])
    model, adapter = loaded.model, loaded.adapter
    model.set_attn_implementation("eager")  # explicit masks: traced SDPA causal shortcuts mis-align with a past
    with atomic_directory(out, overwrite=overwrite) as staging:
        graphs = {}
        info = export_decoder(model, adapter, staging / "decoder.onnx", DTYPES[dtype])
        graphs["decoder"] = "decoder.onnx"
        if adapter.is_vision_language:
            export_embedding(model, adapter, staging / "embedding.onnx", DTYPES[dtype])
            graphs["embedding"] = "embedding.onnx"
            if vision_encoder:
                grid = vision_grid(model.config, pruned_dir, image_size)
                export_vision(model, staging / "vision.onnx", DTYPES[dtype], grid)
                info["vision_grid_thw"] = list(grid)
                graphs["vision"] = "vision.onnx"
        manifest = build_manifest(staging, graphs, model, adapter, info, dtype, OPSET, pruning, pruned_dir)
        write_json_atomic(staging / MANIFEST_NAME, manifest)
    return OnnxExport(out=out, graphs=sorted(graphs))
