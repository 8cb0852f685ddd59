"""Calibration fixtures for tests: a tiny byte-level tokenizer with a chat template, a Qwen-VL
processor around it, and JSONL calibration files with small images.

The tiny models have 512 ids with the image/vision ids at the top (see mucrasp.tiny_models), so
the tokenizer maps the 256 bytes to 0..255, chat specials just above, and the vision specials to
exactly the model's ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import mucrasp  # noqa: F401  (applies the CPU torch workarounds before transformers imports torchvision)
from mucrasp.tiny_models import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_END_TOKEN_ID, VISION_START_TOKEN_ID

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

RESPONSES = [
    "Step 1: The ball is red. Step 2: Red things are warm. Therefore the ball is warm.",
    "First we count the blocks. There are three. So the answer is 3.",
    "The cube sits on the table and does not move at all during the whole scene here",
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({f"<|unused{i}|>": i for i in range(259, IMAGE_TOKEN_ID)})
    vocab.update({"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
    vocab.update(
        {
            "<|image_pad|>": IMAGE_TOKEN_ID,
            "<|video_pad|>": VIDEO_TOKEN_ID,
            "<|vision_start|>": VISION_START_TOKEN_ID,
            "<|vision_end|>": VISION_END_TOKEN_ID,
        }
    )
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[
            "<|im_start|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
        ],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_processor(model_dir: Path, vision: bool = True) -> None:
    """Write the tokenizer (text models) or a Qwen2.5-VL processor (VL models) into `model_dir`."""
    tokenizer = tiny_tokenizer()
    if not vision:
        tokenizer.save_pretrained(model_dir)
        return
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    # 56x56 px -> 4x4 patches of 14 -> 4 merged image tokens: cheap for the tiny vision tower.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(model_dir)


def write_image(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((56, 56, 3)) * 255).astype("uint8")).save(path)
    return path


def write_calibration(folder: Path, with_images: bool = True, n: int = 3, name: str = "calib.jsonl") -> Path:
    """A JSONL file of `n` records; images (relative paths) when `with_images`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        image = None
        if with_images:
            write_image(folder / f"img{i}.png", seed=i)
            image = f"img{i}.png"
        lines.append(
            json.dumps(
                {"image": image, "prompt": f"Question {i}: what happens?", "response": RESPONSES[i % len(RESPONSES)]}
            )
        )
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_vl_calibration(folder: Path):
    """A tiny Qwen2.5-VL with a processor in `folder` and calibration batches with images:
    (model, adapter, batches)."""
    from mucrasp.adapters import adapter_for_config
    from mucrasp.calibration import CalibrationSource, PivotConfig
    from mucrasp.tiny_models import build_tiny_model

    save_processor(folder)
    model = build_tiny_model("Qwen2_5_VLForConditionalGeneration")
    batches = CalibrationSource(write_calibration(folder / "cal"), folder).batches(
        model.config, PivotConfig(), vision=True
    )
    return model, adapter_for_config(model.config), batches
