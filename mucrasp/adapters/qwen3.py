"""Qwen3 text decoders: Llama-like layers without q/k/v biases, plus q_norm/k_norm.

q_norm and k_norm are RMSNorms over head_dim whose weights every head shares, so removing whole
GQA groups leaves them as they are; they are per-layer parameters no unit owns. Qwen3's attention
honours `head_dim` (in transformers and vLLM), so uniform checkpoints with fewer heads stay stock.
"""

import transformers

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter

_VLLM_CLASS = "MucraspQwen3ForCausalLM"


@register_adapter
class Qwen3Adapter(ArchitectureAdapter):
    architecture = "Qwen3ForCausalLM"
    stop_tokens = ("<|im_end|>",)
    vllm_per_layer_class = f"{__name__}:{_VLLM_CLASS}"
    onnx_genai_type = "qwen3"

    def layer_norm_params(self, config):
        return super().layer_norm_params(config) + 2 * self.head_dim(config)  # + q_norm, k_norm

    def tiny_config(self, text):
        return transformers.Qwen3Config(architectures=[self.architecture], **text)


def __getattr__(name: str):
    """The vLLM class, built on first access: vLLM imports it by name inside its own processes only."""
    if name != _VLLM_CLASS:
        raise AttributeError(name)
    from vllm.model_executor.models import qwen3

    from mucrasp.export.vllm_models import per_layer_decoder_layer, swapped

    class MucraspQwen3Model(qwen3.Qwen3Model):
        decoder_layer_type = per_layer_decoder_layer(qwen3.Qwen3DecoderLayer)

    class MucraspQwen3ForCausalLM(qwen3.Qwen3ForCausalLM):
        def __init__(self, *, vllm_config, prefix: str = ""):
            with swapped(qwen3, "Qwen3Model", MucraspQwen3Model):
                super().__init__(vllm_config=vllm_config, prefix=prefix)

    MucraspQwen3ForCausalLM.__qualname__ = name
    globals()[name] = MucraspQwen3ForCausalLM
    return MucraspQwen3ForCausalLM
