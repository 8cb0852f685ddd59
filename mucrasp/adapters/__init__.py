"""Architecture adapters. A new family is one module here plus one line in the import list below."""

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import adapter_for_config, get_adapter, register_adapter, supported_architectures

# Importing a family module registers it.
from mucrasp.adapters import llama, qwen2, qwen2_vl, qwen2_5_vl  # noqa: E402,F401

__all__ = ["ArchitectureAdapter", "adapter_for_config", "get_adapter", "register_adapter", "supported_architectures"]
