"""The demo VLM's architecture: a small Qwen2.5-VL, deep and wide enough for pruning to choose.

8 decoder layers with GQA (8 query heads over 2 KV heads, head size 32, the smallest vLLM's CPU
attention accepts), an MLP 4x the hidden size, and a 2-block vision tower. About 5.5M parameters:
11 MB in bf16, which is how the weights are stored in git.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig


def demo_config(special_ids: dict[str, int], vocab_size: int) -> Qwen2_5_VLConfig:
    hidden, heads = 192, 6
    text = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=8,
        num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=special_ids["<|im_start|>"], eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
        # M-RoPE sections must sum to head_dim / 2 = 16.
        rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
    )
    vision = dict(
        depth=2, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=hidden, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        architectures=["Qwen2_5_VLForConditionalGeneration"], text_config=text, vision_config=vision,
        image_token_id=special_ids["<|image_pad|>"], video_token_id=special_ids["<|video_pad|>"],
        vision_start_token_id=special_ids["<|vision_start|>"], vision_end_token_id=special_ids["<|vision_end|>"],
        bos_token_id=special_ids["<|im_start|>"], eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )
