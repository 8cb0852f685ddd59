"""`export onnx`: the split ONNX Runtime GenAI uses, exported from the sliced module itself.

Graphs (all opset `ONNX_OPSET`, weights as external data):
- text models: `decoder.onnx`: input_ids, attention_mask, position_ids [B, S], past key/values ->
  logits, present key/values.
- Qwen-VL models:
  - `vision.onnx`: pixel_values [patches, C*T*P*P] and image_grid_thw [1, 3] of one image, any size
    (families with the adapter's `onnx_vision_forward`), or pixel_values of one image at a fixed
    grid (the others) -> image_features;
  - `embedding.onnx`: input_ids, image_features -> inputs_embeds (image tokens replaced in order);
  - `decoder.onnx`: inputs_embeds, attention_mask, 3D M-RoPE position_ids [3, B, S], past ->
    logits, present.
  Families that add visual features to the first decoder layers' hidden states (Qwen3-VL's
  deepstack; the adapter's `deepstack_levels`) carry them along: vision.onnx also outputs
  deepstack_features [levels, image_tokens, hidden], embedding.onnx scatters them to the image
  tokens' positions as deepstack_embeds [levels, B, S, hidden] (zeros elsewhere), and decoder.onnx
  takes deepstack_embeds after position_ids.

Sequence lengths are bounded by `max_sequence` (default: the model's max_position_embeddings): a
call takes up to that many new tokens on a past of up to that many; manifest.json records it.
Family-specific parts (where the vision tower is, the index tensors it needs, what it outputs,
how deepstack features enter the decoder) come from the adapter.

Because the graphs are traced from the loaded (sliced) `nn.Module`, each layer's KV-head count and
MLP width are whatever the weights say; `manifest.json` (see `onnx_manifest`) records them.
`genai_config.json` (see `genai_config`) makes the folder an onnxruntime-genai model where that runtime
can run the family.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from mucrasp.atomic_io import atomic_directory, check_output_dir, write_json_atomic
from mucrasp.checkpoint import read_manifest
from mucrasp.errors import MucraspError
from mucrasp.export.genai_config import GENAI_CONFIG_NAME, image_processor_settings, write_genai_files
from mucrasp.export.onnx_manifest import MANIFEST_NAME, build_manifest
from mucrasp.export.onnx_quantize import QUANTIZED_WEIGHTS, quantize_graph, resolve_weights
from mucrasp.model_loading import load_model, read_model_config

ONNX_OPSET = 18  # the CLI prints it
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def kv_names(i: int) -> tuple[str, str, str, str]:
    return (f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")


class DecoderWithPast(nn.Module):
    """The language model plus LM head, with the KV cache as flat tensors in and out."""

    def __init__(self, model, adapter, embeds_input: bool):
        super().__init__()
        self.adapter = adapter
        self.decoder = adapter.language_model(model)
        self.lm_head = model.lm_head
        self.config = adapter.text_config(model.config)
        self.embeds_input = embeds_input
        self.num_layers = len(adapter.decoder_layers(model))
        self.deepstack = embeds_input and adapter.deepstack_levels(model.config) > 0

    def forward(self, inputs, attention_mask, position_ids, *past):
        kwargs = {"inputs_embeds": inputs} if self.embeds_input else {"input_ids": inputs}
        if self.deepstack:
            kwargs.update(self.adapter.onnx_deepstack_kwargs(self.decoder, past[0]))
            past = past[1:]
        cache = DynamicCache(config=self.config)
        for i, layer in enumerate(cache.layers[: self.num_layers]):
            # The past becomes the layer's cache as it is (no concatenation onto an empty tensor).
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
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

    def forward(self, input_ids, image_features, *deepstack_features):
        embeds = self.embed_tokens(input_ids)
        is_image = (input_ids == self.image_token_id).reshape(-1)
        # index of each image token among the image tokens: row of image_features it takes
        order = torch.cumsum(is_image.to(torch.int64), 0) - 1
        padded = torch.cat([image_features.to(embeds.dtype), torch.zeros_like(embeds[0, :1])], 0)
        rows = torch.where(is_image, order, torch.full_like(order, image_features.shape[0]))
        picked = padded[rows].reshape(embeds.shape)
        embeds = torch.where(is_image.reshape(input_ids.shape)[..., None], picked, embeds)
        if not deepstack_features:
            return embeds
        # each level's rows at the image tokens' positions, the zero row everywhere else
        levels = deepstack_features[0].to(embeds.dtype)
        levels = torch.cat([levels, torch.zeros_like(levels[:, :1])], 1)
        return embeds, levels[:, rows].reshape(levels.shape[0], *embeds.shape)


class VisionEncoder(nn.Module):
    """pixel_values of one image at a fixed patch grid -> its merged image features (and deepstack levels).

    The grid is a constant of the graph: the Qwen-VL vision towers compute window and rotary indices
    from `image_grid_thw` values in Python, which a trace cannot keep symbolic. The adapter computes
    those index tensors once, with the tower's own helpers; they are handed to the tower as the
    precomputed kwargs it accepts.
    """

    def __init__(self, model, adapter, grid_thw: tuple[int, int, int]):
        super().__init__()
        self.adapter = adapter
        self.visual = adapter.vision_tower(model)
        self.grid_thw = tuple(int(x) for x in grid_thw)
        precomputed = adapter.onnx_vision_inputs(self.visual, torch.tensor([self.grid_thw], dtype=torch.int64))
        self.precomputed = list(precomputed)
        for name, tensor in precomputed.items():
            self.register_buffer(f"pre_{name}", torch.as_tensor(tensor), persistent=False)

    def forward(self, pixel_values):
        grid = torch.tensor([self.grid_thw], dtype=torch.int64)
        kwargs = {name: getattr(self, f"pre_{name}") for name in self.precomputed}
        return tuple(self.adapter.onnx_vision_outputs(self.visual(pixel_values, grid_thw=grid, **kwargs)))


class DynamicVisionEncoder(nn.Module):
    """pixel_values and image_grid_thw of one image, of any size -> its merged image features.

    The adapter's `onnx_vision_forward` computes what the tower derives from the grid values in
    Python (rotary positions, attention windows) with tensor operations on the grid input instead.
    """

    def __init__(self, model, adapter):
        super().__init__()
        self.adapter = adapter
        self.visual = adapter.vision_tower(model)

    def forward(self, pixel_values, image_grid_thw):
        return tuple(self.adapter.onnx_vision_forward(self.visual, pixel_values, image_grid_thw))


def dynamic_image_size(adapter) -> bool:
    return bool(getattr(adapter, "onnx_dynamic_image_size", False))


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
            program,
            (),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,  # here only to name the dynamic axes (batch, sequence, ...)
            optimize=True,
            verify=False,
            external_data=True,
        )
    onnx_program.save(str(path), external_data=True)


def _past_example(widths, head_dim, batch, past_len, dtype):
    past = []
    for _, kv in widths:
        # two distinct tensors: torch.export merges inputs that alias one tensor into one graph input
        past += [torch.zeros(batch, kv, past_len, head_dim, dtype=dtype) for _ in range(2)]
    return past


def export_decoder(model, adapter, path: Path, dtype: torch.dtype, max_sequence: int) -> dict:
    vision = adapter.is_vision_language
    text = adapter.text_config(model.config)
    head_dim = adapter.head_dim(model.config)
    widths = adapter.layer_widths(model)
    wrapper = DecoderWithPast(model, adapter, embeds_input=vision).eval()
    # batch 2 in the example: an example batch of 1 gets specialised and bakes wrong shapes into the past path
    batch, seq, past_len = 2, 3, 2
    seq_dim, past_dim = (
        torch.export.Dim("sequence", max=max_sequence),
        torch.export.Dim("past_sequence", max=max_sequence),
    )
    batch_dim = torch.export.Dim("batch", max=256)
    # min: a guard of the traced mask code; max: a sequence on a past, both at their longest
    total = torch.export.Dim("total_sequence", min=4, max=2 * max_sequence)
    if vision:
        inputs = torch.zeros(batch, seq, text.hidden_size, dtype=dtype)
        position_ids = torch.arange(past_len, past_len + seq).view(1, 1, -1).expand(3, batch, -1).contiguous()
        first, pos_shape = "inputs_embeds", {1: batch_dim, 2: seq_dim}
    else:
        inputs = torch.ones(batch, seq, dtype=torch.int64)
        position_ids = torch.arange(past_len, past_len + seq).view(1, -1).expand(batch, -1).contiguous()
        first, pos_shape = "input_ids", {0: batch_dim, 1: seq_dim}
    attention_mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    args, names_in = [inputs, attention_mask, position_ids], [first, "attention_mask", "position_ids"]
    dynamic = [{0: batch_dim, 1: seq_dim}, {0: batch_dim, 1: total}, pos_shape]
    rest = []  # forward's *past: deepstack_embeds (if any), then the KV cache
    if wrapper.deepstack:
        args.append(torch.zeros(adapter.deepstack_levels(model.config), batch, seq, text.hidden_size, dtype=dtype))
        names_in.append("deepstack_embeds")
        rest.append({1: batch_dim, 2: seq_dim})
    past = _past_example(widths, head_dim, batch, past_len, dtype)
    names_out = ["logits"]
    for i in range(len(widths)):
        pk, pv, ok, ov = kv_names(i)
        names_in += [pk, pv]
        names_out += [ok, ov]
    dynamic.append(tuple(rest + [{0: batch_dim, 2: past_dim} for _ in past]))
    with torch.no_grad():
        _export(wrapper, (*args, *past), path, names_in, names_out, dynamic)
    return {"layers": widths, "head_dim": head_dim}


def export_embedding(model, adapter, path: Path, dtype: torch.dtype, max_sequence: int) -> None:
    image_token_id = model.config.image_token_id
    hidden = adapter.text_config(model.config).hidden_size
    levels = adapter.deepstack_levels(model.config)
    ids = torch.tensor(
        [[1, image_token_id, image_token_id, 7], [1, 5, image_token_id, image_token_id]]
    )  # batch 2: see decoder
    image_tokens = torch.export.Dim("image_tokens", max=max_sequence)
    args = [ids, torch.zeros(4, hidden, dtype=dtype)]
    dynamic = [
        {0: torch.export.Dim("batch", max=256), 1: torch.export.Dim("sequence", max=max_sequence)},
        {0: image_tokens},
    ]
    names_in, names_out = ["input_ids", "image_features"], ["inputs_embeds"]
    if levels:
        args.append(torch.zeros(levels, 4, hidden, dtype=dtype))
        dynamic.append(({1: image_tokens},))  # forward's *deepstack_features
        names_in.append("deepstack_features")
        names_out.append("deepstack_embeds")
    with torch.no_grad():
        _export(Embedding(model, adapter, image_token_id).eval(), args, path, names_in, names_out, dynamic)


def export_vision(model, adapter, path: Path, dtype: torch.dtype, grid_thw: tuple[int, int, int]) -> None:
    vc = model.config.vision_config
    patch_dim = getattr(vc, "in_channels", 3) * vc.temporal_patch_size * vc.patch_size**2
    t, h, w = grid_thw
    names_out = ["image_features"] + (["deepstack_features"] if adapter.deepstack_levels(model.config) else [])
    if dynamic_image_size(adapter):
        # an example grid that is not square and has partial attention windows; the patch count is dynamic
        unit = model.config.vision_config.spatial_merge_size
        grid = torch.tensor([[1, 4 * unit, 3 * unit]], dtype=torch.int64)
        pixels = torch.randn(int(grid.prod()), patch_dim, dtype=dtype)
        # the merger takes groups of unit**2 patches: the patch count is a multiple of it
        dynamic = ({0: unit * unit * torch.export.Dim("image_tokens", min=1, max=1 << 18)}, None)
        module = DynamicVisionEncoder(model, adapter).eval()
        with torch.no_grad():
            _export(module, (pixels, grid), path, ["pixel_values", "image_grid_thw"], names_out, dynamic)
        return
    pixels = torch.zeros(t * h * w, patch_dim, dtype=dtype)
    with torch.no_grad():
        _export(VisionEncoder(model, adapter, grid_thw).eval(), (pixels,), path, ["pixel_values"], names_out, None)


def _image_unit(config) -> int:
    """Side of one merged patch in pixels: images are whole multiples of it."""
    return config.vision_config.patch_size * config.vision_config.spatial_merge_size


def check_image_size(config, image_size: int) -> None:
    unit = _image_unit(config)
    if image_size <= 0 or image_size % unit:
        raise MucraspError(
            f"--image-size must be a positive multiple of {unit} (patch size x merge size), not {image_size}"
        )


def nearest_image_size(model_dir: str | Path, image_size: int | None) -> int | None:
    """A workload's image size as the vision graph can take it: the side the planner counts its tokens at
    (`ModelShape.image_side`, whole merged patches). None for a text model or no size."""
    from mucrasp.model_loading import read_model_config
    from mucrasp.planning.model_shape import model_shape

    config, adapter = read_model_config(model_dir)
    if image_size is None or not adapter.is_vision_language:
        return None
    return model_shape(config, adapter).image_side(image_size)


def vision_grid(config, folder: Path, image_size: int | None) -> tuple[int, int, int]:
    """The patch grid of the one image size the vision graph takes: `image_size` pixels square, or
    the largest square the model's image processor allows, in whole merged patches."""
    vc = config.vision_config
    unit = _image_unit(config)
    if image_size is None:
        settings = image_processor_settings(folder)
        pixels = (settings.get("size") or {}).get("longest_edge") or settings.get("max_pixels")
        image_size = int(pixels**0.5) if pixels else 448
    else:
        check_image_size(config, image_size)
    side = max(unit, image_size // unit * unit)
    return (1, side // vc.patch_size, side // vc.patch_size)


@dataclass
class OnnxExport:
    out: Path
    graphs: list[str]
    weights: str = "fp32"


def export_onnx(
    pruned_dir: str | Path,
    out: str | Path,
    dtype: str = "fp32",
    overwrite: bool = False,
    vision_encoder: bool = True,
    image_size: int | None = None,
    max_sequence: int | None = None,
    weights: str | None = None,
) -> OnnxExport:
    """Export a pruned checkpoint to ONNX graphs plus `manifest.json` in `out` (atomically).

    `max_sequence`: the most new tokens one decoder call takes, and the longest past it takes;
    default the model's `max_position_embeddings`.
    `weights`: fp32 | fp16 (the graphs' dtype) | int8 | int4 (the decoder's weights quantized by ONNX
    Runtime's tools, see `onnx_quantize`); default `dtype`.
    """
    pruned_dir, out = Path(pruned_dir), Path(out)
    if dtype not in DTYPES:
        raise MucraspError(f"unknown dtype {dtype!r}; choose fp32 or fp16")
    weights, dtype = resolve_weights(weights, dtype)
    config, adapter = read_model_config(pruned_dir)
    if image_size is not None and adapter.is_vision_language:
        check_image_size(config, image_size)
    if max_sequence is None:
        max_sequence = int(adapter.text_config(config).max_position_embeddings)
    if max_sequence < 4:
        raise MucraspError(f"max_sequence must be at least 4, not {max_sequence}")
    pruning = read_manifest(pruned_dir)
    check_output_dir(out, overwrite, inputs=(pruned_dir,))
    loaded = load_model(pruned_dir, dtype=DTYPES[dtype])
    model, adapter = loaded.model, loaded.adapter
    model.set_attn_implementation("eager")  # explicit masks: traced SDPA causal shortcuts mis-align with a past
    with atomic_directory(out, overwrite=overwrite) as staging:
        graphs = {}
        info = export_decoder(model, adapter, staging / "decoder.onnx", DTYPES[dtype], max_sequence)
        info["max_sequence"] = max_sequence
        graphs["decoder"] = "decoder.onnx"
        quantization = None
        if weights in QUANTIZED_WEIGHTS:
            quantization = {"decoder": quantize_graph(staging / "decoder.onnx", weights)}
        if adapter.is_vision_language:
            export_embedding(model, adapter, staging / "embedding.onnx", DTYPES[dtype], max_sequence)
            graphs["embedding"] = "embedding.onnx"
            if vision_encoder:
                grid = vision_grid(model.config, pruned_dir, image_size)
                export_vision(model, adapter, staging / "vision.onnx", DTYPES[dtype], grid)
                # None: the vision graph takes image_grid_thw and any image size
                info["vision_grid_thw"] = None if dynamic_image_size(adapter) else list(grid)
                graphs["vision"] = "vision.onnx"
        manifest = build_manifest(staging, graphs, model, adapter, info, dtype, ONNX_OPSET, pruning, pruned_dir)
        # the weight format of each graph: quantized ones name their quantizer, the rest are `dtype`
        manifest["weights"] = {"format": weights, "quantized_graphs": quantization or {}}
        unsupported = write_genai_files(staging, pruned_dir, manifest, model, adapter)
        manifest["onnxruntime_genai"] = (
            {"config": GENAI_CONFIG_NAME} if unsupported is None else {"config": None, "reason": unsupported}
        )
        write_json_atomic(staging / MANIFEST_NAME, manifest)
    return OnnxExport(out=out, graphs=sorted(graphs), weights=weights)
