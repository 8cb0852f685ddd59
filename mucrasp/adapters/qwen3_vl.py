"""Qwen3-VL: a Qwen3 text decoder (q_norm/k_norm, no q/k/v biases, honours head_dim) under its own
vision tower, with interleaved M-RoPE and deepstack.

Deepstack: the vision tower also emits features from some of its blocks (`deepstack_visual_indexes`),
each merged like the final features; level i is added to the image tokens' hidden states after
decoder layer i. Pruning leaves the tower and those levels alone: they enter the decoder's residual
stream, whose width (hidden_size) slicing never changes.
"""

import torch
import transformers

from mucrasp.adapters.qwen2_vl import Qwen2VLAdapter
from mucrasp.adapters.registry import register_adapter

_VLLM_CLASS = "MucraspQwen3VLForConditionalGeneration"


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    architecture = "Qwen3VLForConditionalGeneration"
    stock_config_honours_head_dim = True  # Qwen3 attention reads head_dim (transformers and vLLM)
    vllm_per_layer_class = f"{__name__}:{_VLLM_CLASS}"
    # deepstack features enter the decoder, which onnxruntime-genai does not feed; the position
    # embeddings are interpolated from the grid (no `onnx_vision_forward`): one image size per export
    onnx_genai_type = None
    onnx_dynamic_image_size = False

    def qkv_bias(self, config):
        return bool(getattr(self.text_config(config), "attention_bias", False))

    def layer_norm_params(self, config):
        return 2 * self.text_config(config).hidden_size + 2 * self.head_dim(config)  # + q_norm, k_norm

    def vision_params(self, config):
        vc = config.vision_config
        d, i, out = vc.hidden_size, vc.intermediate_size, vc.out_hidden_size
        merged = d * vc.spatial_merge_size**2
        patch = self._patch_embed_params(vc, d) + d  # Conv3d with a bias
        # LayerNorms (weight and bias); qkv and proj with bias; fc1/fc2 MLP with biases.
        block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d)
        # the final merger normalises before the 2x2 shuffle, the deepstack mergers after it
        deepstack = len(vc.deepstack_visual_indexes) * self._merger_params(vc, d, out, norm=2 * merged)
        return (
            patch
            + vc.num_position_embeddings * d
            + vc.depth * block
            + self._merger_params(vc, d, out, norm=2 * d)
            + deepstack
        )

    def deepstack_levels(self, config):
        return len(config.vision_config.deepstack_visual_indexes)

    def onnx_vision_inputs(self, visual, grid):
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights

        inputs = super().onnx_vision_inputs(visual, grid)
        inputs["interp_indices"], inputs["interp_weights"] = get_vision_interpolation_indices_and_weights(
            grid,
            num_grid_per_side=visual.num_grid_per_side,
            mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners,
            spatial_merge_size=visual.spatial_merge_size,
        )
        return inputs

    def onnx_vision_outputs(self, out):
        return [out.pooler_output, torch.stack(out.deepstack_features)]

    def onnx_deepstack_kwargs(self, language_model, deepstack_embeds):
        # The graph gets each level already scattered to [B, S, hidden], so plain addition replaces the
        # boolean-mask update of `_deepstack_process`, whose data-dependent shape torch.export cannot trace.
        language_model._deepstack_process = lambda hidden, _mask, level: hidden + level
        return {"visual_pos_masks": None, "deepstack_visual_embeds": list(deepstack_embeds)}

    def tiny_vision_config(self, text):
        from mucrasp.tiny_models import PATCH_SIZE, SPATIAL_MERGE_SIZE, TEMPORAL_PATCH_SIZE

        return dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=text["hidden_size"],
            patch_size=PATCH_SIZE,
            spatial_merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0, 1],
        )

    def tiny_config(self, text):
        from mucrasp.tiny_models import qwen_vl_special_ids

        half = text["head_dim"] // 2
        # interleaved (t, h, w) sections summing to head_dim / 2, in the proportions of the real 24/20/20
        section = [half - 2 * (half * 20 // 64), half * 20 // 64, half * 20 // 64]
        rope = {"rope_type": "default", "mrope_section": section, "mrope_interleaved": True, "rope_theta": 10000.0}
        return transformers.Qwen3VLConfig(
            architectures=[self.architecture],
            text_config={**text, "rope_parameters": rope},
            vision_config=self.tiny_vision_config(text),
            **qwen_vl_special_ids(),
        )


def __getattr__(name: str):
    """The vLLM class, built on first access: vLLM imports it by name inside its own processes only."""
    if name != _VLLM_CLASS:
        raise AttributeError(name)
    from vllm.model_executor.models import qwen3_vl
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from mucrasp.export.vllm_models import per_layer_decoder_layer, swapped

    class MucraspQwen3LLMModel(qwen3_vl.Qwen3LLMModel):
        decoder_layer_type = per_layer_decoder_layer(qwen3_vl.Qwen3VLDecoderLayer)

    @MULTIMODAL_REGISTRY.register_processor(
        qwen3_vl.Qwen3VLMultiModalProcessor,
        info=qwen3_vl.Qwen3VLProcessingInfo,
        dummy_inputs=qwen3_vl.Qwen3VLDummyInputsBuilder,
    )
    class MucraspQwen3VLForConditionalGeneration(qwen3_vl.Qwen3VLForConditionalGeneration):
        # vLLM builds the language model as Qwen3LLMForCausalLM, which builds Qwen3LLMModel by name
        def __init__(self, *, vllm_config, prefix: str = "model"):
            with swapped(qwen3_vl, "Qwen3LLMModel", MucraspQwen3LLMModel):
                super().__init__(vllm_config=vllm_config, prefix=prefix)

    MucraspQwen3VLForConditionalGeneration.__qualname__ = name
    globals()[name] = MucraspQwen3VLForConditionalGeneration
    return MucraspQwen3VLForConditionalGeneration
