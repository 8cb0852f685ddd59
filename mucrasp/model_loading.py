"""Open a model folder given by the user, with one clear error for each way it can be wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a stock or pruned checkpoint for pruning or evaluation (fp32 by default: scores need it)."""
    path = Path(path)
    _, adapter = read_model_config(path)
    if not any(path.glob("*.safetensors")):
        raise MucraspError(f"{path} holds no safetensors weights")
    model = load_pruned(path, dtype=dtype)
    return LoadedModel(model=model, adapter=adapter, path=path)
