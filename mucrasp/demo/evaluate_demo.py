"""Exact-answer accuracy of a VLM on demo scenes, with greedy decoding of the full chain of thought."""

from __future__ import annotations

from typing import Any

from mucrasp.demo.scenes import Scene, extract_answer
from mucrasp.evaluation.generation import greedy_decode, vision_prompt_inputs

MAX_NEW_TOKENS = 64  # the longest chain of thought the generator writes is about 45 tokens


def answer_accuracy(model, processor: Any, scenes: list[Scene], batch_size: int = 25) -> float:
    correct = 0
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        inputs = vision_prompt_inputs(processor, [s.image for s in chunk], [s.question for s in chunk])
        responses = greedy_decode(model, processor.tokenizer, inputs, MAX_NEW_TOKENS)
        correct += sum(extract_answer(r) == s.answer for r, s in zip(responses, chunk))
    return correct / len(scenes)
