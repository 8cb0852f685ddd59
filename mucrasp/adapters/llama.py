"""Llama decoders (Llama 3, SmolLM2): the plain case the base adapter already describes."""

import transformers

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class LlamaAdapter(ArchitectureAdapter):
    architecture = "LlamaForCausalLM"
    # Llama 3 ends a turn with <|eot_id|>; SmolLM2 and other ChatML-templated Llamas with <|im_end|>.
    stop_tokens = ("<|eot_id|>", "<|im_end|>")
    vllm_per_layer_class = "mucrasp.export.vllm_models:MucraspLlamaForCausalLM"
    onnx_genai_type = "llama"

    def tiny_config(self, text):
        return transformers.LlamaConfig(architectures=[self.architecture], **text)
