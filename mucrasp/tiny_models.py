"""Small models of every supported family, built from configs in memory.

Tests use them (no hub, no downloads), and `make demo` falls back to one while no trained demo
model is available. Head size is 32 and M-RoPE sections sum to 16 because vLLM's CPU attention
accepts no smaller head, so the same configs serve the export and serving tests.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from mucrasp.adapters import get_adapter

VOCAB_SIZE = 512
# Special ids of the Qwen-VL families, placed at the top of the small vocabulary.
IMAGE_TOKEN_ID = VOCAB_SIZE - 4
VIDEO_TOKEN_ID = VOCAB_SIZE - 3
VISION_START_TOKEN_ID = VOCAB_SIZE - 2
VISION_END_TOKEN_ID = VOCAB_SIZE - 1
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
SPATIAL_MERGE_SIZE = 2

_TEXT = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(architecture: str, **text_overrides) -> PretrainedConfig:
    """A config of `architecture` small enough to build and run in a test (its adapter builds it)."""
    return get_adapter(architecture).tiny_config({**_TEXT, **text_overrides})


def qwen_vl_special_ids() -> dict[str, int]:
    return dict(
        bos_token_id=1,
        eos_token_id=2,
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_TOKEN_ID,
        vision_end_token_id=VISION_END_TOKEN_ID,
    )


def mrope_section(head_dim: int) -> list[int]:
    """(temporal, height, width) rotary sections summing to head_dim / 2, as vLLM requires."""
    half = head_dim // 2
    temporal = half // 4
    rest = half - temporal
    return [temporal, rest // 2, rest - rest // 2]


def build_tiny_model(architecture: str, seed: int = 0, **text_overrides) -> PreTrainedModel:
    """A randomly initialised fp32 model in eval mode, deterministic for a given seed."""
    config = tiny_config(architecture, **text_overrides)
    torch.manual_seed(seed)
    model = get_adapter(architecture).model_class()(config)
    # The default init is tiny; larger weights make masked-vs-sliced comparisons meaningful.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    return model.eval().float()


def tiny_image_inputs(grid_hw: tuple[int, int] = (4, 4), prompt_ids: list[int] | None = None, seed: int = 0) -> dict:
    """input_ids with one image placeholder run, plus matching pixel_values and image_grid_thw."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid_hw
    patches = h * w
    image_tokens = patches // (SPATIAL_MERGE_SIZE**2)
    prompt_ids = prompt_ids if prompt_ids is not None else [5, 17, 42, 99]
    ids = [1, VISION_START_TOKEN_ID] + [IMAGE_TOKEN_ID] * image_tokens + [VISION_END_TOKEN_ID] + prompt_ids
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        # What the Qwen-VL processors return beside input_ids: 1 marks image tokens (M-RoPE needs it).
        "mm_token_type_ids": torch.tensor([[int(i == IMAGE_TOKEN_ID) for i in ids]]),
        "pixel_values": torch.randn(patches, 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE**2, generator=g),
        "image_grid_thw": torch.tensor([[1, h, w]]),
    }


def save_tiny_model(architecture: str, out_dir, seed: int = 0, **text_overrides):
    """Write a tiny model as a Hugging Face folder (atomically), for demos and CLI tests."""
    from pathlib import Path

    from mucrasp.atomic_io import atomic_directory

    model = build_tiny_model(architecture, seed=seed, **text_overrides)
    with atomic_directory(Path(out_dir), overwrite=True) as staging:
        model.save_pretrained(staging)
    return Path(out_dir)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a small randomly initialised model to a folder.")
    parser.add_argument("--arch", default="Qwen2_5_VLForConditionalGeneration")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_tiny_model(args.arch, args.out, seed=args.seed))
