"""Batched Qwen-VL inputs from (image, prompt, response) triples: for training and for generation.

Prompt and response are tokenised separately, exactly as at generation time, where the model sees
the chat-formatted prompt and produces the response tokens one by one.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def _prompt_text(processor: Any, prompt: str, has_image: bool) -> str:
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)


def prompt_inputs(processor: Any, images: list[Image.Image | None], prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompts, ready for `generate`."""
    tokenizer = processor.tokenizer
    texts = [_prompt_text(processor, p, im is not None) for im, p in zip(images, prompts)]
    present = [im for im in images if im is not None]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return dict(processor(text=texts, images=present or None, padding=True, return_tensors="pt"))
    finally:
        tokenizer.padding_side = previous_side


def training_inputs(processor: Any, images: list[Image.Image | None], prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response sequences with labels on the response (and its end token) only."""
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows, labels, types = [], [], []
    pixel_values, grids = [], []
    for image, prompt, response in zip(images, prompts, responses):
        encoded = processor(text=[_prompt_text(processor, prompt, image is not None)], images=[image] if image else None, return_tensors="pt")
        prompt_ids = encoded["input_ids"][0].tolist()
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
        rows.append(prompt_ids + response_ids)
        labels.append([-100] * len(prompt_ids) + response_ids)
        types.append(encoded["mm_token_type_ids"][0].tolist() + [0] * len(response_ids))
        if image is not None:
            pixel_values.append(encoded["pixel_values"])
            grids.append(encoded["image_grid_thw"])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id

    def padded(seqs, value):
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

    batch = {
        "input_ids": padded(rows, pad),
        "attention_mask": padded([[1] * len(r) for r in rows], 0),
        "labels": padded(labels, -100),
        "mm_token_type_ids": padded(types, 0),
    }
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch
