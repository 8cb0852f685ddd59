"""Exact-answer accuracy of a VLM on demo scenes, with greedy decoding of the full chain of thought."""

from __future__ import annotations

import collections
from typing import Any

from mucrasp.demo.scenes import Scene, extract_answer
from mucrasp.evaluation.generation import greedy_decode, vision_prompt_inputs

MAX_NEW_TOKENS = 64  # the longest chain of thought the generator writes is about 50 tokens


def per_task_results(model, processor: Any, scenes: list[Scene], batch_size: int = 25) -> dict[str, dict[str, int]]:
    """{task: {"correct": c, "items": n}}, tasks sorted by name."""
    items, correct = collections.Counter(), collections.Counter()
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        inputs = vision_prompt_inputs(processor, [s.image for s in chunk], [s.question for s in chunk])
        for scene, response in zip(chunk, greedy_decode(model, processor.tokenizer, inputs, MAX_NEW_TOKENS)):
            items[scene.task] += 1
            correct[scene.task] += extract_answer(response) == scene.answer
    return {task: {"correct": correct[task], "items": items[task]} for task in sorted(items)}


def answer_accuracy(model, processor: Any, scenes: list[Scene], batch_size: int = 25) -> float:
    results = per_task_results(model, processor, scenes, batch_size)
    return sum(r["correct"] for r in results.values()) / len(scenes)
