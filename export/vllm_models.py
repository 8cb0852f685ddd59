"""vLLM models for MuCRASP checkpoints with per-layer widths, built from vLLM's own classes.

This module holds the shared machinery (per-layer layer configs, output biases, swapping the
class a vLLM model builds) and the classes of the first four families. A newer family builds its
class from these pieces in its own adapter module, on first access through a module
`__getattr__` (so that importing the adapter never imports vLLM); its adapter's
`vllm_per_layer_class` names it.

Stock vLLM sizes every decoder layer from one global `intermediate_size` and head count. A
per-layer checkpoint records `layer_intermediate_sizes` and `layer_num_key_value_heads` (and
`head_dim`) in its text config. These subclasses override only what sizes a layer:

- `MucraspLlamaDecoderLayer`: vLLM's `LlamaDecoderLayer`, built from a shallow copy of the text
  config holding this layer's widths. A Qwen2 decoder layer is a Llama layer with q/k/v biases and
  no o_proj bias (and, unlike vLLM's `Qwen2Attention`, Llama's attention honours `head_dim`).
- `MucraspLlamaForCausalLM` / `MucraspQwen2ForCausalLM`: vLLM's `LlamaForCausalLM` with that layer.
- The Qwen-VL classes: vLLM's own VL models, whose language model is built as the per-layer
  `MucraspQwen2ForCausalLM` instead of `Qwen2ForCausalLM`. Weights load through the parents'
  `load_weights`.

Registered lazily by `mucrasp.export.vllm_plugin` from the adapters' `vllm_per_layer_class`; import
this module only inside vLLM.
"""

from __future__ import annotations

import contextlib
import copy

from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models import qwen2_5_vl, qwen2_vl
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.utils import extract_layer_index
from vllm.multimodal import MULTIMODAL_REGISTRY

LAYER_INTERMEDIATE_SIZES = "layer_intermediate_sizes"  # as in mucrasp.checkpoint (not imported: keep this light)
LAYER_NUM_KV_HEADS = "layer_num_key_value_heads"
OUTPUT_PROJECTION_BIAS = "output_projection_bias"  # o_proj/down_proj biases added by FLAP's compensation


def layer_config(text_config, index: int, qkv_bias: bool | None):
    """A shallow copy of `text_config` that sizes decoder layer `index` as the checkpoint records it."""
    config = copy.copy(text_config)
    group = text_config.num_attention_heads // text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    kv_heads = getattr(text_config, LAYER_NUM_KV_HEADS, None)
    mlp = getattr(text_config, LAYER_INTERMEDIATE_SIZES, None)
    if kv_heads is not None:
        config.num_key_value_heads = kv_heads[index]
        config.num_attention_heads = kv_heads[index] * group
    if mlp is not None:
        config.intermediate_size = mlp[index]
    config.head_dim = head_dim
    # LlamaDecoderLayer gives o_proj a bias when `attention_bias` is set, and q/k/v one when `qkv_bias` is.
    stock_bias = bool(getattr(text_config, "attention_bias", False))
    config.qkv_bias = stock_bias if qkv_bias is None else qkv_bias
    config.attention_bias = (stock_bias and qkv_bias is None) or bool(
        getattr(text_config, OUTPUT_PROJECTION_BIAS, False)
    )
    return config


def add_output_biases(layer, config, quant_config, prefix: str) -> None:
    """Rebuild o_proj / down_proj with a bias where FLAP's compensation added one the stock layer lacks."""
    if not getattr(config, OUTPUT_PROJECTION_BIAS, False):
        return
    for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
        old = getattr(parent, name)
        if old.bias is None:
            setattr(
                parent,
                name,
                RowParallelLinear(
                    input_size=old.input_size,
                    output_size=old.output_size,
                    bias=True,
                    quant_config=quant_config,
                    prefix=f"{prefix}.{'self_attn' if parent is layer.self_attn else 'mlp'}.{name}",
                ),
            )


def per_layer_decoder_layer(layer_type):
    """A subclass of a vLLM decoder layer that takes `config=` and reads its q/k/v bias from
    `attention_bias` (Qwen3 style, o_proj never biased), sized from this layer's recorded widths."""

    class PerLayer(layer_type):
        def __init__(self, *, config, prefix: str = "", quant_config=None, **kwargs):
            config = layer_config(config, extract_layer_index(prefix), qkv_bias=None)
            config.attention_bias = config.qkv_bias  # here it only means q/k/v biases
            super().__init__(config=config, prefix=prefix, quant_config=quant_config, **kwargs)
            add_output_biases(self, config, quant_config, prefix)

    PerLayer.__name__ = PerLayer.__qualname__ = "Mucrasp" + layer_type.__name__
    return PerLayer


class MucraspLlamaDecoderLayer(LlamaDecoderLayer):
    qkv_bias: bool | None = None  # None: keep the config's own attention_bias (Llama)

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config=None, **kwargs):
        config = config or vllm_config.model_config.hf_config
        config = layer_config(config, extract_layer_index(prefix), self.qkv_bias)
        super().__init__(vllm_config, prefix=prefix, config=config, **kwargs)
        add_output_biases(self, config, self.get_quant_config(vllm_config), prefix)  # o_proj has one via attention_bias


class MucraspQwen2DecoderLayer(MucraspLlamaDecoderLayer):
    qkv_bias = True


class MucraspLlamaForCausalLM(LlamaForCausalLM):
    decoder_layer = MucraspLlamaDecoderLayer

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs):
        text_config = vllm_config.model_config.hf_config.get_text_config()
        vllm_config = vllm_config.with_hf_config(text_config, architectures=[type(self).__name__])
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=self.decoder_layer)


class MucraspQwen2ForCausalLM(MucraspLlamaForCausalLM):
    decoder_layer = MucraspQwen2DecoderLayer


@contextlib.contextmanager
def swapped(module, name: str, value):
    """Make `module.name` be `value` while a vLLM model's `__init__` builds what it names."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _language_model_as(module, architecture: str):
    """Make a vLLM VL model's `__init__` build its language model as `architecture`."""
    original = module.init_vllm_registered_model

    def build(vllm_config, *, prefix="", hf_config=None, architectures=None):
        return original(vllm_config, prefix=prefix, hf_config=hf_config, architectures=[architecture])

    return swapped(module, "init_vllm_registered_model", build)


@MULTIMODAL_REGISTRY.register_processor(
    qwen2_5_vl.Qwen2_5_VLMultiModalProcessor,
    info=qwen2_5_vl.Qwen2_5_VLProcessingInfo,
    dummy_inputs=qwen2_5_vl.Qwen2_5_VLDummyInputsBuilder,
)
class MucraspQwen2_5_VLForConditionalGeneration(qwen2_5_vl.Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        with _language_model_as(qwen2_5_vl, "MucraspQwen2ForCausalLM"):
            super().__init__(vllm_config=vllm_config, prefix=prefix)


@MULTIMODAL_REGISTRY.register_processor(
    qwen2_vl.Qwen2VLMultiModalProcessor,
    info=qwen2_vl.Qwen2VLProcessingInfo,
    dummy_inputs=qwen2_vl.Qwen2VLDummyInputsBuilder,
)
class MucraspQwen2VLForConditionalGeneration(qwen2_vl.Qwen2VLForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        with _language_model_as(qwen2_vl, "MucraspQwen2ForCausalLM"):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
