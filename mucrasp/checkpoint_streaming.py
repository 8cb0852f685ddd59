"""Write a pruned checkpoint shard by shard, without ever loading the model.

`prune --scores FILE` needs no weights to decide what to keep: the scores and the shapes (a model on
the meta device) are enough. The weights are then copied from each source shard to an output shard of
the same name, each decoder projection sliced to the kept units on the way. Tensors are read with plain
reads and written behind a header computed from the output shapes, so the process holds one tensor and
its sliced copy at a time (the embedding matrix is the largest), whatever the size of the model or its
shards. The result is the same checkpoint as `save_pruned` of the model sliced in memory
(tests/test_streaming_prune.py), in the source's dtype unless one is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import GenerationConfig, PreTrainedModel

from mucrasp.adapters.base import ArchitectureAdapter, _expand
from mucrasp.atomic_io import atomic_directory, write_json_atomic
from mucrasp.checkpoint import (
    MANIFEST_NAME,
    _carry_source_files,
    file_keys,
    per_layer_widths,
    read_safetensors_header,
    record_dtype,
    record_widths,
    weight_files,
)
from mucrasp.errors import MucraspError
from mucrasp.export.hf_remote_code import write_remote_code
from mucrasp.units import KeepPlan

INDEX_NAME = "model.safetensors.index.json"
_TORCH_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


def _copy_shard(source: Path, target: Path, transform: Callable[[str, torch.Tensor], torch.Tensor]) -> int:
    """Copy a safetensors file tensor by tensor through `transform`; returns the bytes of tensor data written.

    Plain reads (not a memory map, whose pages would count against the process for the whole shard) and a
    header written first from the transformed shapes: the process holds one tensor and its copy at a time.
    """
    read_safetensors_header(source)  # checked against the file's length first: one clear error if it is bad
    with source.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        start = 8 + length

        def load(key: str) -> torch.Tensor:
            entry = header[key]
            begin, end = entry["data_offsets"]
            handle.seek(start + begin)
            buffer = bytearray(end - begin)
            handle.readinto(buffer)
            if not buffer:
                return torch.empty(entry["shape"], dtype=_TORCH_DTYPES[entry["dtype"]])
            return torch.frombuffer(buffer, dtype=_TORCH_DTYPES[entry["dtype"]]).reshape(entry["shape"])

        keys = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        # The output header needs every output shape before any data: slice meta copies to learn them.
        out_header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key in keys:
            entry = header[key]
            meta = transform(key, torch.empty(entry["shape"], dtype=_TORCH_DTYPES[entry["dtype"]], device="meta"))
            size = meta.numel() * meta.element_size()
            out_header[key] = {
                "dtype": _SAFETENSORS_NAMES[meta.dtype],
                "shape": list(meta.shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(out_header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
        with target.open("wb") as out:
            out.write(len(encoded).to_bytes(8, "little"))
            out.write(encoded)
            for key in keys:
                tensor = transform(key, load(key))
                if tensor.numel():
                    out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
                del tensor
    return offset


def _slicing_rules(model: PreTrainedModel, adapter: ArchitectureAdapter) -> dict[str, tuple[int, str, int, int]]:
    """Module key -> (layer, unit type, axis, span) for every tensor whose rows or columns belong to units."""
    from mucrasp.scoring.taylor_hooks import unit_params

    names = {id(p): name for name, p in model.named_parameters()}
    return {
        names[id(spec.param)]: (spec.layer, spec.unit_type, spec.axis, spec.span)
        for spec in unit_params(model, adapter)
    }


def save_pruned_streaming(
    model: PreTrainedModel,
    adapter: ArchitectureAdapter,
    source_dir: str | Path,
    out_dir: str | Path,
    plan: KeepPlan,
    manifest: dict[str, Any],
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write the checkpoint of `source_dir` pruned by `plan` to `out_dir`, atomically, one shard at a time.

    `model` is the source's model on the meta device (`checkpoint.empty_model`), already sliced by `plan`
    (its config gets the widths); the tensors come from the source files. `dtype` None keeps theirs.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    rules = _slicing_rules(model, adapter)
    by_file_key = {file_key: key for key, file_key in file_keys(model).items()}
    record_widths(model, adapter, plan)
    shards = weight_files(source_dir)
    with atomic_directory(out_dir, overwrite=overwrite, inputs=(source_dir,)) as staging:
        carried = _carry_source_files(source_dir, staging)
        weight_map, total = {}, 0
        for number, shard in enumerate(shards):
            if progress is not None:
                progress("writing shards", number, len(shards))

            def sliced(key: str, tensor: torch.Tensor) -> torch.Tensor:
                rule = rules.get(by_file_key.get(key, key))
                if rule is not None:
                    layer, unit_type, axis, span = rule
                    kept = _expand(plan.layers[layer].kept(unit_type), span)
                    tensor = tensor.index_select(axis if tensor.dim() == 2 else 0, kept)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                return tensor.contiguous()

            total += _copy_shard(shard, staging / shard.name, sliced)
            weight_map.update(dict.fromkeys(read_safetensors_header(shard), shard.name))
        module_keys = file_keys(model)
        missing = sorted(module_keys[key] for key in rules if module_keys[key] not in weight_map)
        if missing:  # the projections the plan slices must all have been there
            raise MucraspError(f"{source_dir}: the weights lack {missing[0]}")
        if len(shards) > 1 or (source_dir / INDEX_NAME).is_file():
            write_json_atomic(staging / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
        record_dtype(model.config, dtype or _stored_dtype(shards[0]))
        model.config.save_pretrained(staging)
        if (source_dir / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(source_dir).save_pretrained(staging)
        per_layer = per_layer_widths(model.config, adapter) is not None
        write_remote_code(staging, adapter.hf_remote_code_names(model) if per_layer else None)
        write_json_atomic(staging / MANIFEST_NAME, {**manifest, "carried_files": carried})
        if progress is not None:
            progress("writing shards", len(shards), len(shards))
    return out_dir


def _stored_dtype(shard: Path) -> torch.dtype:
    from mucrasp.devices import checkpoint_dtype

    return checkpoint_dtype(shard.parent) or torch.float32
