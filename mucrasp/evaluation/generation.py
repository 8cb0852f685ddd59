"""Greedy generation of full chains of thought, batched with left padding."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from mucrasp.calibration.records import CalibrationRecord


def chat_prompt(processor: Any, prompt: str, has_image: bool) -> str:
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def _left_padded(tokenizer: Any):
    class _Left:
        def __enter__(self):
            self.previous = tokenizer.padding_side
            tokenizer.padding_side = "left"

        def __exit__(self, *exc):
            tokenizer.padding_side = self.previous

    return _Left()


def vision_prompt_inputs(
    processor: Any, images: Sequence[Image.Image | None], prompts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Left-padded chat prompts with their images, ready for `generate`."""
    texts = [chat_prompt(processor, p, im is not None) for im, p in zip(images, prompts)]
    present = [im for im in images if im is not None]
    with _left_padded(processor.tokenizer):
        return dict(processor(text=texts, images=present or None, padding=True, return_tensors="pt"))


def text_prompt_inputs(tokenizer: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    with _left_padded(tokenizer):
        return dict(tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt"))


@torch.no_grad()
def greedy_decode(model, tokenizer: Any, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
    from mucrasp.adapters import adapter_for_config

    stop = adapter_for_config(model.config).stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    inputs = {name: value.to(model.device) for name, value in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=pad)
    return [r.strip() for r in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]


def _load_image(path) -> Image.Image | None:
    if path is None:
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


def greedy_responses(
    model,
    processor: Any,
    records: Sequence[CalibrationRecord],
    vision: bool,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress=None,
) -> list[str]:
    """The model's greedy continuation of each record's prompt, decoded without special tokens."""
    tokenizer = getattr(processor, "tokenizer", processor)
    responses: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        if vision:
            inputs = vision_prompt_inputs(processor, [_load_image(r.image) for r in chunk], [r.prompt for r in chunk])
        else:
            inputs = text_prompt_inputs(tokenizer, [r.prompt for r in chunk])
        responses.extend(greedy_decode(model, tokenizer, inputs, max_new_tokens))
        if progress is not None:
            progress("greedy generation", len(responses), len(records))
    return responses
