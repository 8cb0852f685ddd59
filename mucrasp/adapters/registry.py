"""Architecture name (as in config.json's `architectures`) -> adapter."""

from __future__ import annotations

from typing import TypeVar

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.errors import MucraspError

_ADAPTERS: dict[str, ArchitectureAdapter] = {}
A = TypeVar("A", bound=type[ArchitectureAdapter])


def register_adapter(cls: A) -> A:
    """Class decorator: make an adapter available under its `architecture` name."""
    if not cls.architecture:
        raise ValueError(f"{cls.__name__} must set `architecture`")
    _ADAPTERS[cls.architecture] = cls()
    return cls


def supported_architectures() -> list[str]:
    return sorted(_ADAPTERS)


# `export vllm` renames per-layer checkpoints (e.g. MucraspQwen2_5_VLForConditionalGeneration) so that
# vLLM picks our plugin; for everything else they are still the stock family.
EXPORTED_ARCHITECTURE_PREFIX = "Mucrasp"


def vllm_per_layer_classes() -> dict[str, str]:
    """Per-layer architecture name (as `export vllm` writes it) -> the lazy "module:Class" serving it."""
    return {a.per_layer_architecture: a.vllm_per_layer_class for a in _ADAPTERS.values() if a.vllm_per_layer_class}


def get_adapter(architecture: str) -> ArchitectureAdapter:
    try:
        return _ADAPTERS[architecture.removeprefix(EXPORTED_ARCHITECTURE_PREFIX)]
    except KeyError:
        raise MucraspError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(supported_architectures())}"
        ) from None


def adapter_for_config(config) -> ArchitectureAdapter:
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise MucraspError("config.json names no architecture; supported: " + ", ".join(supported_architectures()))
    return get_adapter(architectures[0])
