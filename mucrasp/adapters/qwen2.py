"""Qwen2 text decoders: Llama layers with q/k/v biases, which the base adapter slices with the rows."""

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class Qwen2Adapter(ArchitectureAdapter):
    architecture = "Qwen2ForCausalLM"
    stock_config_honours_head_dim = False  # vLLM's Qwen2Attention derives head_dim from the head count
