"""Exact-answer accuracy of a VLM on demo scenes, with greedy decoding of the full chain of thought."""

from __future__ import annotations

from typing import Any

import torch

from mucrasp.demo.scenes import Scene, extract_answer
from mucrasp.demo.vl_inputs import prompt_inputs

MAX_NEW_TOKENS = 64  # the longest chain of thought the generator writes is about 45 tokens


@torch.no_grad()
def greedy_responses(model, processor: Any, images, prompts, batch_size: int = 25) -> list[str]:
    responses = []
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for start in range(0, len(prompts), batch_size):
        inputs = prompt_inputs(processor, images[start:start + batch_size], prompts[start:start + batch_size])
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=end, pad_token_id=processor.tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        responses.extend(processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return responses


def answer_accuracy(model, processor: Any, scenes: list[Scene]) -> float:
    responses = greedy_responses(model, processor, [s.image for s in scenes], [s.question for s in scenes])
    correct = sum(extract_answer(r) == s.answer for r, s in zip(responses, scenes))
    return correct / len(scenes)
