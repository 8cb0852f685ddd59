"""The pruned checkpoint: a Hugging Face folder plus the per-layer widths and `pruning.json`.

Layout written by `save_pruned`:
- `config.json`: the original config with the decoder widths recorded. When every layer has the
  same widths (and stock code can express them) it is a plain stock config. Otherwise the text
  config carries `layer_intermediate_sizes` and `layer_num_key_value_heads`, one entry per decoder
  layer, and `head_dim`; the global sizes stay the original ones, so stock code refuses the
  weights loudly (shape mismatch) instead of loading them wrong. A model whose o_proj/down_proj
  gained a bias (FLAP's bias compensation) is never stock: `output_projection_bias` says so.
- `model.safetensors` (sharded above the size limit), `generation_config.json`;
- the tokenizer, processor and chat-template files of the source model, copied over;
- `pruning.json`: the manifest (method, ratio, kept units per layer, parameter counts);
- per-layer only: `modeling_mucrasp.py` and config.json's `auto_map`, with which the transformers Auto
  classes load it (`trust_remote_code=True`) without mucrasp (see mucrasp/export/hf_remote_code.py).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.core_model_loading import revert_weight_conversion

from mucrasp.adapters import adapter_for_config
from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.atomic_io import atomic_directory, write_json_atomic
from mucrasp.errors import MucraspError
from mucrasp.export.hf_remote_code import write_remote_code
from mucrasp.units import KeepPlan

MANIFEST_NAME = "pruning.json"
LAYER_INTERMEDIATE_SIZES = "layer_intermediate_sizes"
LAYER_NUM_KV_HEADS = "layer_num_key_value_heads"
# Set when o_proj/down_proj carry a bias the stock family lacks (FLAP's bias compensation adds one).
OUTPUT_PROJECTION_BIAS = "output_projection_bias"
# Files save_pretrained writes itself, or that describe the source weights rather than the pruned ones.
_NOT_CARRIED = {"config.json", "generation_config.json", MANIFEST_NAME, "README.md"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx", ".index.json")


def per_layer_widths(config: PretrainedConfig, adapter: ArchitectureAdapter) -> tuple[list[int], list[int]] | None:
    """The recorded per-layer (MLP channels, KV heads), or None for a stock (uniform) config."""
    text = adapter.text_config(config)
    mlp = getattr(text, LAYER_INTERMEDIATE_SIZES, None)
    kv = getattr(text, LAYER_NUM_KV_HEADS, None)
    if mlp is None and kv is None:
        return None
    if mlp is None or kv is None or len(mlp) != len(kv) or len(mlp) != text.num_hidden_layers:
        raise MucraspError(
            f"config has inconsistent per-layer widths ({LAYER_INTERMEDIATE_SIZES}, {LAYER_NUM_KV_HEADS})"
        )
    return list(mlp), list(kv)


def _has_added_output_bias(model: PreTrainedModel, adapter: ArchitectureAdapter) -> bool:
    text = adapter.text_config(model.config)
    stock_has_it = bool(getattr(text, "attention_bias", False) and getattr(text, "mlp_bias", False))
    return not stock_has_it and any(
        adapter.attention_projections(layer)[3].bias is not None or adapter.mlp_projections(layer)[2].bias is not None
        for layer in adapter.decoder_layers(model)
    )


def record_widths(model: PreTrainedModel, adapter: ArchitectureAdapter, plan: KeepPlan) -> None:
    """Write the plan's widths into the model's config (see the module docstring for the two forms)."""
    config = model.config
    text = adapter.text_config(config)
    head_dim, group = adapter.head_dim(config), adapter.group_size(config)
    widths = plan.widths()
    mlp = [w["mlp_channels"] for w in widths]
    kv = [w["kv_groups"] for w in widths]
    heads_removed = any(k != text.num_key_value_heads for k in kv)
    output_bias = _has_added_output_bias(model, adapter)
    stock = plan.is_uniform() and not output_bias and (not heads_removed or adapter.stock_config_honours_head_dim)
    for name in (LAYER_INTERMEDIATE_SIZES, LAYER_NUM_KV_HEADS, OUTPUT_PROJECTION_BIAS):
        if hasattr(text, name):
            delattr(text, name)
    if stock:
        text.intermediate_size = mlp[0]
        text.num_key_value_heads = kv[0]
        text.num_attention_heads = kv[0] * group
        if heads_removed:
            text.head_dim = head_dim
    else:
        text.head_dim = head_dim
        setattr(text, LAYER_INTERMEDIATE_SIZES, mlp)
        setattr(text, LAYER_NUM_KV_HEADS, kv)
        if output_bias:
            setattr(text, OUTPUT_PROJECTION_BIAS, True)


def _carry_source_files(source_dir: Path | None, staging: Path) -> list[str]:
    if source_dir is None:
        return []
    carried = []
    for item in sorted(Path(source_dir).iterdir()):
        if not item.is_file() or item.name in _NOT_CARRIED or item.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(item, staging / item.name)
        carried.append(item.name)
    return carried


def save_pruned(
    model: PreTrainedModel,
    out_dir: str | Path,
    plan: KeepPlan,
    manifest: dict[str, Any],
    source_dir: str | Path | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a sliced model as a checkpoint, atomically: `out_dir` appears complete or not at all.

    `dtype`: the dtype to write (the model is converted in place, one tensor at a time); None: as it is.
    A sharded source gives a copy sharded at the source's shard size.
    """
    adapter = adapter_for_config(model.config)
    out_dir = Path(out_dir)
    record_widths(model, adapter, plan)
    if dtype is not None and next(model.parameters()).dtype != dtype:
        model.to(dtype)
    # transformers (5.19) stamps only the top-level config; a sub-config would keep the dtype it was loaded in
    record_dtype(model.config, next(model.parameters()).dtype)
    shard_size = source_shard_size(source_dir)
    # The source must survive: refuse an output that is, holds, or lies inside it (`--out SRC --overwrite`).
    with atomic_directory(out_dir, overwrite=overwrite, inputs=(source_dir,)) as staging:
        carried = _carry_source_files(Path(source_dir) if source_dir else None, staging)
        model.save_pretrained(staging, **({"max_shard_size": shard_size} if shard_size else {}))
        # per-layer: the module and `auto_map` the Auto classes load it with (trust_remote_code=True), no mucrasp
        per_layer = per_layer_widths(model.config, adapter) is not None
        write_remote_code(staging, adapter.hf_remote_code_names(model) if per_layer else None)
        write_json_atomic(staging / MANIFEST_NAME, {**manifest, "carried_files": carried})
    return out_dir


def record_dtype(config: Any, dtype: torch.dtype) -> None:
    """Record the dtype the weights are written in on the config and on each sub-config (text, vision)."""
    for part in [config] + [getattr(config, name, None) for name in getattr(config, "sub_configs", {})]:
        if part is not None:
            part.dtype = dtype


def read_json_file(path: Path) -> Any:
    """A JSON file the user gave us, or one MucraspError naming it (unreadable, not UTF-8, not JSON)."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise MucraspError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
    except UnicodeDecodeError as exc:
        raise MucraspError(f"{path} is not valid JSON (not UTF-8 text at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MucraspError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        raise MucraspError(f"{path} is not a pruned checkpoint (no {MANIFEST_NAME})")
    data = read_json_file(manifest)
    if not isinstance(data, dict):
        raise MucraspError(f"{manifest} is not a pruning manifest (a JSON object)")
    return data


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = read_json_file(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise MucraspError(f"{index} has no weight_map")
        shards = [path / shard for shard in sorted(set(weight_map.values()))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise MucraspError(f"{path}: weight shard {missing[0]} listed in {index.name} is missing")
        return shards
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise MucraspError(f"{path} holds no safetensors weights")


# ---- checking weights without loading them: the safetensors header and the config's widths ---------------
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
_MAX_HEADER = 100 * 2**20
_DECODER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight$")


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (dtype, shape) of one safetensors file, checked against the file's length; no data is read."""
    path = Path(path)

    def bad(why: str) -> MucraspError:
        return MucraspError(f"{path} is not a valid safetensors file ({why})")

    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise bad("truncated: no header")
            length = int.from_bytes(head, "little")
            if length > size - 8 or length > _MAX_HEADER:
                raise bad(f"truncated or garbage: header of {length} bytes in a file of {size}")
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as exc:
        raise MucraspError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("unreadable header") from None
    if not isinstance(header, dict):
        raise bad("unreadable header")
    tensors, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
            expected = _DTYPE_BYTES[dtype] * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            raise bad(f"bad header entry for {name}") from None
        if stop - begin != expected or begin < 0:
            raise bad(f"{name}: {stop - begin} bytes for a {dtype} tensor of shape {shape}")
        tensors[name] = (dtype, shape)
        end = max(end, stop)
    if 8 + length + end != size:
        raise bad(
            f"truncated: the header needs {8 + length + end} bytes, the file has {size}"
            if 8 + length + end > size
            else f"{size - 8 - length - end} bytes after the last tensor"
        )
    return tensors


def _expected_shapes(config: PretrainedConfig, adapter: ArchitectureAdapter) -> dict[tuple[int, str], tuple[int, int]]:
    """(layer, projection) -> weight shape the config asks for, for the decoder's attention and MLP projections."""
    text = adapter.text_config(config)
    widths = per_layer_widths(config, adapter)
    n = text.num_hidden_layers
    mlp, kv = widths if widths else ([text.intermediate_size] * n, [text.num_key_value_heads] * n)
    hidden, head_dim, group = text.hidden_size, adapter.head_dim(config), adapter.group_size(config)
    shapes = {}
    for i, (m, k) in enumerate(zip(mlp, kv)):
        q = k * group * head_dim
        shapes.update(
            {
                (i, "self_attn.q_proj"): (q, hidden),
                (i, "self_attn.k_proj"): (k * head_dim, hidden),
                (i, "self_attn.v_proj"): (k * head_dim, hidden),
                (i, "self_attn.o_proj"): (hidden, q),
                (i, "mlp.gate_proj"): (m, hidden),
                (i, "mlp.up_proj"): (m, hidden),
                (i, "mlp.down_proj"): (hidden, m),
            }
        )
    return shapes


def verify_weights(path: str | Path) -> None:
    """Check a checkpoint's weights before using them, cheaply: every shard present, every safetensors
    header sound and matching its file's length, and each decoder projection shaped as the config's
    (per-layer) widths say. Raises one MucraspError naming the file; reads no tensor data."""
    path = Path(path)
    from mucrasp.model_loading import read_model_config

    config, adapter = read_model_config(path)
    found: dict[tuple[int, str], tuple[Path, str, list[int]]] = {}
    for shard in weight_files(path):
        for name, (_, shape) in read_safetensors_header(shard).items():
            match = _DECODER_KEY.search(name)
            if match and "visual" not in name and "vision" not in name:
                found[(int(match[1]), match[2])] = (shard, name, shape)
    if not found:
        return  # a naming we do not know: leave the shapes to the loader
    for key, shape in _expected_shapes(config, adapter).items():
        if key not in found:
            raise MucraspError(f"{path}: the weights lack layer {key[0]}'s {key[1]}")
        shard, name, actual = found[key]
        if tuple(actual) != shape:
            raise MucraspError(f"{shard}: {name} has shape {list(actual)}, but config.json says {list(shape)}")


def load_pruned(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> PreTrainedModel:
    """Load a checkpoint written by `save_pruned`, rebuilding per-layer shapes where it has them.

    A stock (uniform) checkpoint goes through the model class's own `from_pretrained`. A per-layer
    one is built with empty weights at the original widths, each layer is resized to its recorded
    widths, and the saved tensors are assigned in, converted to `dtype` one tensor at a time (so a
    bf16 checkpoint loaded in fp32 never holds both copies whole). `dtype` None keeps the stored dtype.
    `device` puts the whole model there; `device_map` (accelerate's: "auto", "balanced", or a dict of
    module -> device, "cpu" or "disk") spreads it, with `offload_folder` for the "disk" part.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise MucraspError(f"{path} is not a model directory (no config.json)")
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        verify_weights(path)  # one line naming the file, instead of a loader traceback
    try:
        return _load_pruned(path, dtype, device, device_map, offload_folder)
    except (SafetensorError, OSError, ValueError) as exc:  # what the checks above cannot see (a corrupt tensor)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MucraspError(f"cannot load the model in {path}: {reason}") from None


def _empty_model(config: PretrainedConfig, adapter: ArchitectureAdapter, widths) -> PreTrainedModel:
    """The model of `config` on the meta device (no memory), its layers at the recorded per-layer widths."""
    with init_empty_weights():
        model = adapter.model_class()(config)
    if widths is None:
        return model
    output_bias = getattr(adapter.text_config(config), OUTPUT_PROJECTION_BIAS, False)
    for layer, mlp, kv in zip(adapter.decoder_layers(model), *widths):
        adapter.slice_layer(layer, config, torch.arange(mlp), torch.arange(kv))
        if output_bias:
            for linear in (adapter.attention_projections(layer)[3], adapter.mlp_projections(layer)[2]):
                if linear.bias is None:
                    linear.bias = torch.nn.Parameter(torch.empty(linear.out_features, device="meta"))
    return model


def empty_model(path: str | Path) -> PreTrainedModel:
    """The checkpoint's model with every tensor on the meta device: its shapes and names, no weights."""
    config = AutoConfig.from_pretrained(path)
    adapter = adapter_for_config(config)
    return _empty_model(config, adapter, per_layer_widths(config, adapter))


def file_keys(model: PreTrainedModel) -> dict[str, str]:
    """Module key -> the key `save_pretrained` writes it under (Qwen-VL renames some; see _load_pruned)."""
    return {
        key: next(iter(revert_weight_conversion(model, {key: tensor}))) for key, tensor in model.state_dict().items()
    }


def source_shard_size(source_dir: str | Path | None) -> int | None:
    """The largest weight shard of a sharded source in bytes (None when it is one file or unknown): a pruned
    copy written with it as `max_shard_size` is sharded like its source."""
    if source_dir is None or not (Path(source_dir) / "model.safetensors.index.json").is_file():
        return None
    return max(shard.stat().st_size for shard in weight_files(Path(source_dir)))


def _load_pruned(
    path: Path,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    device_map: str | dict[str, Any] | None,
    offload_folder: str | Path | None,
) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(path)
    adapter = adapter_for_config(config)
    widths = per_layer_widths(config, adapter)
    device = torch.device(device) if device is not None else None
    if widths is None:
        if device_map is None and device is not None and device.type != "cpu":
            device_map = {"": device}  # straight onto the accelerator, no CPU copy on the way
        model = adapter.model_class().from_pretrained(
            path, dtype=dtype or "auto", device_map=device_map, offload_folder=offload_folder
        )
        return model.eval()

    model = _empty_model(config, adapter, widths)
    saved = {}
    load_device = str(device) if device is not None and device_map is None else "cpu"
    for shard in weight_files(path):
        for key, tensor in load_file(shard, device=load_device).items():
            saved[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    # save_pretrained writes some families under legacy key names (Qwen-VL: `model.layers.*` for
    # `model.language_model.layers.*`); ask transformers how it renamed each key when saving.
    file_key_to_module_key = {file_key: key for key, file_key in file_keys(model).items()}
    state = {file_key_to_module_key.get(key, key): tensor for key, tensor in saved.items()}
    unexpected = sorted(set(state) - set(file_key_to_module_key.values()))
    if unexpected:
        raise MucraspError(f"{path}: weights with no place in the model, e.g. {unexpected[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise MucraspError(f"{path}: checkpoint lacks weights, e.g. {missing[:3]}")
    if dtype is not None:
        model.to(dtype)  # what the weights did not carry (buffers, tied copies); the tensors are converted
    if device_map is not None:
        # A per-layer model has no from_pretrained of its own: load, then let accelerate place (or offload) it.
        from accelerate import dispatch_model, infer_auto_device_map

        if isinstance(device_map, str):
            device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
        model = dispatch_model(model, device_map=device_map, offload_dir=offload_folder)
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()
