"""Qwen2.5-VL: laid out like Qwen2-VL (windowed vision attention changes nothing in the decoder)."""

import sys

from mucrasp.adapters.qwen2_vl import Qwen2VLAdapter
from mucrasp.adapters.registry import register_adapter


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    architecture = "Qwen2_5_VLForConditionalGeneration"
    vllm_per_layer_class = "mucrasp.export.vllm_models:MucraspQwen2_5_VLForConditionalGeneration"
    config_class = "Qwen2_5_VLConfig"

    def vision_params(self, config):
        vc = config.vision_config
        d, i, out = vc.hidden_size, vc.intermediate_size, vc.out_hidden_size
        # RMSNorms; qkv and proj with bias; gated MLP with biases.
        block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * (d * i + i) + (i * d + d)
        return self._patch_embed_params(vc, d) + vc.depth * block + self._merger_params(vc, d, out, norm=d)

    def onnx_vision_inputs(self, visual, grid):
        inputs = super().onnx_vision_inputs(visual, grid)
        helpers = sys.modules[type(visual).__module__]
        inputs["window_index"], inputs["cu_window_seqlens"] = helpers.get_vision_window_index(
            grid,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        return inputs

    def onnx_vision_masks(self, visual, frame, group_h, group_w, h, w):
        # windowed blocks: windows of `window_size` pixels on the merged grid, per frame, as in
        # get_vision_window_index; the `fullatt_block_indexes` blocks: each frame whole
        size = visual.window_size // visual.spatial_merge_size // visual.patch_size
        per_row = (w // visual.spatial_merge_size + size - 1) // size
        window = (frame * ((h // visual.spatial_merge_size + size - 1) // size) + group_h // size) * per_row
        window = window + group_w // size
        same_frame = frame[:, None] == frame[None, :]
        same_window = window[:, None] == window[None, :]
        full = set(visual.fullatt_block_indexes)
        return [same_frame if i in full else same_window for i in range(len(visual.blocks))]

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
            window_size=56,
            fullatt_block_indexes=[1],
        )
