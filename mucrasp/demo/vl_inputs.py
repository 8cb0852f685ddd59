"""Batched Qwen-VL training inputs from (image, prompt, response) triples.

Prompt and response are tokenised separately, exactly as at generation time, where the model sees
the chat-formatted prompt and produces the response tokens one by one.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from mucrasp.evaluation.generation import chat_prompt


def training_inputs(
    processor: Any, images: list[Image.Image | None], prompts: list[str], responses: list[str]
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response sequences with labels on the response (and its end token) only."""
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows, labels, types = [], [], []
    pixel_values, grids = [], []
    for image, prompt, response in zip(images, prompts, responses):
        encoded = processor(
            text=[chat_prompt(processor, prompt, image is not None)],
            images=[image] if image else None,
            return_tensors="pt",
        )
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
