"""Qwen2 text decoders: Llama layers with q/k/v biases, which the base adapter slices with the rows."""

import transformers

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class Qwen2Adapter(ArchitectureAdapter):
    architecture = "Qwen2ForCausalLM"
    stock_config_honours_head_dim = False  # vLLM's Qwen2Attention derives head_dim from the head count
    stop_tokens = ("<|im_end|>",)
    vllm_per_layer_class = "mucrasp.export.vllm_models:MucraspQwen2ForCausalLM"
    onnx_genai_type = "qwen2"

    def qkv_bias(self, config):
        return True  # Qwen2 always carries q/k/v biases and has no flag for it

    def tiny_config(self, text):
        return transformers.Qwen2Config(architectures=[self.architecture], **text)
