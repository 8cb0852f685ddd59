"""Architecture adapters. A new family is one module here plus one line in the import list below."""

# Importing a family module registers it: one line per family.
import mucrasp.adapters.llama  # noqa: F401
import mucrasp.adapters.qwen2  # noqa: F401
import mucrasp.adapters.qwen2_5_vl  # noqa: F401
import mucrasp.adapters.qwen2_vl  # noqa: F401
import mucrasp.adapters.qwen3  # noqa: F401
import mucrasp.adapters.qwen3_vl  # noqa: F401
from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import (
    adapter_for_config,
    get_adapter,
    register_adapter,
    supported_architectures,
    vllm_per_layer_classes,
)

__all__ = [
    "ArchitectureAdapter",
    "adapter_for_config",
    "get_adapter",
    "register_adapter",
    "supported_architectures",
    "vllm_per_layer_classes",
]
