"""The demo VLM's architecture: a small Qwen2.5-VL, deep and wide enough for pruning to choose.

8 decoder layers with GQA (6 query heads over 2 KV heads, head size 32, the smallest vLLM's CPU
attention accepts), an MLP 4x the hidden size, and a small vision tower. The knobs that training
experiments vary are fields of `DemoArchitecture`; its defaults are the committed model's.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Qwen2_5_VLConfig


@dataclass(frozen=True)
class DemoArchitecture:
    hidden_size: int = 192
    num_layers: int = 8
    num_heads: int = 6  # head size 32
    num_kv_heads: int = 2
    rope_theta: float = 10000.0
    # Frequencies of the 16 rotary pairs handed to the (time, height, width) axes of M-RoPE, highest
    # first; they must sum to head_dim / 2.
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    vision_depth: int = 2
    vision_hidden_size: int = 128
    vision_heads: int = 4


def demo_config(
    special_ids: dict[str, int], vocab_size: int, arch: DemoArchitecture = DemoArchitecture()
) -> Qwen2_5_VLConfig:
    hidden = arch.hidden_size
    if sum(arch.mrope_section) * 2 != hidden // arch.num_heads:
        raise ValueError(
            f"mrope_section {arch.mrope_section} must sum to head_dim / 2 = {hidden // arch.num_heads // 2}"
        )
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=special_ids["<|im_start|>"],
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
        rope_parameters={
            "rope_type": "default",
            "mrope_section": list(arch.mrope_section),
            "rope_theta": arch.rope_theta,
        },
    )
    vision = dict(
        depth=arch.vision_depth,
        hidden_size=arch.vision_hidden_size,
        intermediate_size=2 * arch.vision_hidden_size,
        num_heads=arch.vision_heads,
        out_hidden_size=hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[arch.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        text_config=text,
        vision_config=vision,
        image_token_id=special_ids["<|image_pad|>"],
        video_token_id=special_ids["<|video_pad|>"],
        vision_start_token_id=special_ids["<|vision_start|>"],
        vision_end_token_id=special_ids["<|vision_end|>"],
        bos_token_id=special_ids["<|im_start|>"],
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )
