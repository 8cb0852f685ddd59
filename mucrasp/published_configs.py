"""Real models' published sizes, as transformers configs: for the planner's tests and for random-weight
benchmarks at real size, where no checkpoint can be downloaded."""

from __future__ import annotations


def qwen25_vl_7b_config(layers: int = 28, vision_depth: int = 32):
    """Qwen2.5-VL-7B-Instruct's config.json (the fields that size it), optionally cut to `layers` decoder
    layers and `vision_depth` vision blocks. Token ids are left at transformers' defaults."""
    import transformers

    full_attention = [i for i in (7, 15, 23, 31) if i < vision_depth] or [vision_depth - 1]
    return transformers.Qwen2_5_VLConfig(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
            max_position_embeddings=128000,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=1280,
            intermediate_size=3420,
            out_hidden_size=3584,
            num_heads=16,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=full_attention,
        ),
        tie_word_embeddings=False,
    )
