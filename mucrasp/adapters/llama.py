"""Llama decoders (Llama 3, SmolLM2): the plain case the base adapter already describes."""

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class LlamaAdapter(ArchitectureAdapter):
    architecture = "LlamaForCausalLM"
