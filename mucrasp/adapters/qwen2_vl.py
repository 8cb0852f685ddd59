"""Qwen2-VL: the language model sits at `model.model.language_model`; the vision tower is left alone."""

import sys

import torch
import transformers

from mucrasp.adapters.base import ArchitectureAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class Qwen2VLAdapter(ArchitectureAdapter):
    architecture = "Qwen2VLForConditionalGeneration"
    is_vision_language = True
    stock_config_honours_head_dim = False  # the text attention derives head_dim from the head count
    stop_tokens = ("<|im_end|>",)
    vllm_per_layer_class = "mucrasp.export.vllm_models:MucraspQwen2VLForConditionalGeneration"
    config_class = "Qwen2VLConfig"
    # onnxruntime-genai has no Qwen2-VL type; its Qwen2.5-VL one runs the same three-graph layout
    onnx_genai_type = "qwen2_5_vl"
    #: Whether `onnx_vision_forward` exists: a vision graph that takes image_grid_thw as an input (any image size).
    onnx_dynamic_image_size = True
    hf_auto_class = "AutoModelForImageTextToText"

    def text_config(self, config):
        return config.text_config

    def language_model(self, model):
        return model.model.language_model

    def qkv_bias(self, config):
        return True  # the Qwen2 text decoder always carries q/k/v biases and has no flag for it

    # ---- the vision tower -----------------------------------------------------------------------
    def vision_tower(self, model):
        return model.model.visual

    def vision_params(self, config):
        vc = config.vision_config
        d, out = vc.embed_dim, vc.hidden_size
        i = int(d * vc.mlp_ratio)
        # LayerNorms (weight and bias); qkv and proj with bias; fc1/fc2 MLP with biases.
        block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d)
        return self._patch_embed_params(vc, d) + vc.depth * block + self._merger_params(vc, d, out, norm=2 * d)

    @staticmethod
    def _patch_embed_params(vc, d: int) -> int:
        in_ch = getattr(vc, "in_channels", None) or getattr(vc, "in_chans", 3)
        return d * in_ch * vc.temporal_patch_size * vc.patch_size**2  # a bias-free Conv3d

    @staticmethod
    def _merger_params(vc, d: int, out: int, norm: int) -> int:
        merged = d * vc.spatial_merge_size**2
        return norm + (merged * merged + merged) + (merged * out + out)

    def onnx_vision_inputs(self, visual, grid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Index tensors the tower would derive from the grid values in Python, which a trace cannot
        keep symbolic: computed once with the tower's own helpers, passed as the kwargs it accepts."""
        helpers = sys.modules[type(visual).__module__]
        merge = visual.spatial_merge_size
        inputs = {"position_ids": helpers.get_vision_position_ids(grid, merge)}
        inputs["cu_seqlens"], _ = helpers.get_vision_attention_seqlens(grid, visual.config)
        return inputs

    def onnx_vision_forward(self, visual, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """The tower's forward for ONE image of any grid, traceable: `grid_thw` ([1, 3]) is a graph input.

        The tower derives rotary positions and attention segments from the grid values in Python.
        Here they are tensor arithmetic on the grid and the patch index instead, and each block's
        attention segments become a mask over all patches (patches stay in the processor's order;
        attention within a segment does not depend on the order, nor does the merger, which takes
        the same groups of `merge**2` consecutive patches)."""
        h, w = grid_thw[0, 1], grid_thw[0, 2]  # frames follow from the patch count
        x = visual.patch_embed(pixel_values)
        m = visual.spatial_merge_size
        index = torch.arange(x.shape[0], device=x.device)
        frame = index // (h * w)
        k = index % (h * w)
        group, inner = k // (m * m), k % (m * m)
        group_h, group_w = group // (w // m), group % (w // m)  # position on the merged grid
        positions = torch.stack([group_h * m + inner // m, group_w * m + inner % m], dim=-1)
        cos, sin = visual.rotary_pos_emb(x, positions)
        masks = self.onnx_vision_masks(visual, frame, group_h, group_w, h, w)
        for i, block in enumerate(visual.blocks):
            x = x + _masked_vision_attention(block.attn, block.norm1(x), cos, sin, masks[i])
            x = x + block.mlp(block.norm2(x))
        return [visual.merger(x)]

    def onnx_vision_masks(self, visual, frame, group_h, group_w, h, w) -> list[torch.Tensor]:
        """Per block, which patches attend to which ([patches, patches] bool): Qwen2-VL, each frame whole."""
        same_frame = frame[:, None] == frame[None, :]
        return [same_frame] * len(visual.blocks)

    def onnx_vision_outputs(self, out) -> list[torch.Tensor]:
        """The vision graph's outputs: the merged image features (and any deepstack levels after them)."""
        return [out.pooler_output]

    def deepstack_levels(self, config) -> int:
        """Visual feature levels added to the hidden states of the first decoder layers (Qwen3-VL)."""
        return 0

    def onnx_deepstack_kwargs(self, language_model, deepstack_embeds: torch.Tensor) -> dict:
        """Kwargs that make the language model add deepstack_embeds[i] ([B, S, hidden], zeros off the
        image tokens) to the hidden states after decoder layer i; only asked when there are levels."""
        raise NotImplementedError(f"{self.architecture} has no deepstack levels")

    # ---- tests ------------------------------------------------------------------------------------
    def tiny_vision_config(self, text: dict) -> dict:
        from mucrasp.tiny_models import PATCH_SIZE, SPATIAL_MERGE_SIZE, TEMPORAL_PATCH_SIZE

        return dict(
            depth=2,
            embed_dim=64,
            hidden_size=text["hidden_size"],
            mlp_ratio=2,
            num_heads=2,
            patch_size=PATCH_SIZE,
            spatial_merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
        )

    def tiny_config(self, text):
        from mucrasp.tiny_models import mrope_section, qwen_vl_special_ids

        text = dict(text)
        text.pop("head_dim")  # the Qwen2-VL text attention derives it from hidden_size / heads
        head_dim = text["hidden_size"] // text["num_attention_heads"]
        rope = {"rope_type": "default", "mrope_section": mrope_section(head_dim), "rope_theta": 10000.0}
        return getattr(transformers, self.config_class)(
            architectures=[self.architecture],
            text_config={**text, "rope_parameters": rope},
            vision_config=self.tiny_vision_config(text),
            **qwen_vl_special_ids(),
        )


def _masked_vision_attention(attn, hidden: torch.Tensor, cos, sin, mask: torch.Tensor) -> torch.Tensor:
    """A Qwen-VL vision attention (qkv, rotary, proj) over all patches at once, restricted by `mask`."""
    helpers = sys.modules[type(attn).__module__]
    n = hidden.shape[0]
    q, k, v = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = helpers.apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))  # [heads, patches, head_dim]
    scores = torch.matmul(q, k.transpose(1, 2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, v).transpose(0, 1).reshape(n, -1)
    return attn.proj(out)
