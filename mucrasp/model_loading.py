"""Open a model folder given by the user, with one clear error for each way it can be wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from mucrasp.adapters import adapter_for_config
from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.checkpoint import load_pruned
from mucrasp.errors import MucraspError


@dataclass
class LoadedModel:
    model: PreTrainedModel
    adapter: ArchitectureAdapter
    path: Path
    source_dtype: torch.dtype | None = None  # the checkpoint's own dtype (a pruned copy is saved in it)


def read_model_config(path: str | Path) -> tuple[PretrainedConfig, ArchitectureAdapter]:
    """Validate a model folder and return its config and adapter without loading any weights."""
    path = Path(path)
    if not path.exists():
        raise MucraspError(f"model path {path} does not exist")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise MucraspError(f"{path} is not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise MucraspError(f"cannot read {path / 'config.json'}: {str(exc).splitlines()[0]}") from None
    return config, adapter_for_config(config)


def load_model(
    path: str | Path,
    dtype: torch.dtype | str | None = torch.float32,
    device: torch.device | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load a stock or pruned checkpoint for scoring, pruning or evaluation.

    `dtype` and `device` take torch values or the `--dtype`/`--device` strings ("auto" resolves per
    `mucrasp.devices`); `dtype=None` keeps the stored dtype. `device_map`/`offload_folder` are accelerate's
    (see `load_pruned`); with a `device_map`, `device` is ignored. Scores accumulate in fp64 whatever the dtype.
    """
    from mucrasp.devices import checkpoint_dtype, resolve_for_checkpoint

    path = Path(path)
    _, adapter = read_model_config(path)
    if not any(path.glob("*.safetensors")):
        raise MucraspError(f"{path} holds no safetensors weights")
    source_dtype = checkpoint_dtype(path)
    if isinstance(dtype, str) or isinstance(device, str):
        resolved_device, resolved_dtype = resolve_for_checkpoint(
            path, device if isinstance(device, str) else "auto", dtype if isinstance(dtype, str) else "auto"
        )
        device = resolved_device if isinstance(device, str) or device is None else device
        dtype = resolved_dtype if isinstance(dtype, str) else dtype
    if device_map is not None:
        device = None
    model = load_pruned(path, dtype=dtype, device=device, device_map=device_map, offload_folder=offload_folder)
    return LoadedModel(model=model, adapter=adapter, path=path, source_dtype=source_dtype)
