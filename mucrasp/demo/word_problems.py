"""A seeded set of short word problems and reasoning questions for the text-only model (SmolLM2).

Their calibration and evaluation traces are the dense model's own greedy answers (see
`mucrasp.evaluation.traces`), so the prompts only have to invite step-by-step reasoning.
Split: the first 128 are calibration, the next 192 are test (never tune on them), and the 256 after
those are a recovery pool: more of the model's own traces to distil on, disjoint from both.
"""

from __future__ import annotations

import random

NAMES = ["Tom", "Anna", "Ravi", "Mei", "Omar", "Lena", "Kofi", "Sara", "Ivan", "Lucia"]
ITEMS = ["apples", "books", "marbles", "pencils", "cookies", "stickers", "coins", "cards"]
SUFFIX = " Think step by step."
N_PROMPTS = 320
N_CALIBRATION = 128
N_RECOVERY = 256
SPLITS = ("calibration", "test", "recovery")

TEMPLATES = [
    lambda r, n, i: f"{n} has {r.randint(2, 9)} {i} and buys {r.randint(2, 9)} more. How many {i} does {n} have now?",
    lambda r, n, i: f"{n} had {r.randint(10, 20)} {i} and gave away {r.randint(2, 9)}. How many {i} are left?",
    lambda r, n, i: (
        f"There are {r.randint(2, 6)} boxes with {r.randint(2, 9)} {i} in each box. How many {i} are there in total?"
    ),
    lambda r, n, i: (
        f"{n} shares {r.choice([12, 16, 18, 20, 24])} {i} equally among {r.choice([2, 4])} friends. "
        f"How many {i} does each friend get?"
    ),
    lambda r, n, i: (
        f"A train leaves at {r.randint(1, 9)} o'clock and travels for {r.randint(2, 3)} hours. "
        "At what time does it arrive?"
    ),
    lambda r, n, i: (
        f"{n} is {r.randint(8, 15)} years old. Her brother is {r.randint(2, 6)} years older. How old is her brother?"
    ),
    lambda r, n, i: (
        f"A pencil costs {r.randint(2, 5)} dollars and a notebook costs {r.randint(3, 8)} dollars. "
        f"How much do {r.randint(2, 3)} pencils and one notebook cost?"
    ),
    lambda r, n, i: (
        f"{n} reads {r.randint(5, 15)} pages every day. How many pages does {n} read in {r.randint(3, 7)} days?"
    ),
    lambda r, n, i: f"Which is heavier, a kilogram of feathers or {r.randint(2, 5)} kilograms of stones? Explain.",
    lambda r, n, i: f"If all cats are animals and {n}'s pet is a cat, is {n}'s pet an animal? Explain your reasoning.",
    lambda r, n, i: (
        f"A rectangle is {r.randint(2, 9)} meters long and {r.randint(2, 9)} meters wide. What is its area?"
    ),
    lambda r, n, i: (
        f"{n} walks {r.randint(2, 5)} kilometers to school and back every day. "
        f"How far does {n} walk in {r.randint(2, 5)} days?"
    ),
]


def word_problems(seed: int = 0, n: int = N_PROMPTS) -> list[str]:
    """`n` distinct prompts, cycling through the templates; repeats are redrawn, so no prompt can be
    in both the calibration and the test part."""
    rng = random.Random(seed)
    prompts: list[str] = []
    seen: set[str] = set()
    k = 0
    while len(prompts) < n:
        prompt = TEMPLATES[k % len(TEMPLATES)](rng, rng.choice(NAMES), rng.choice(ITEMS)) + SUFFIX
        k += 1
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def split_prompts(split: str) -> list[str]:
    # The recovery pool draws past the first N_PROMPTS from the same generator, so the calibration and
    # test parts are the same whether or not it exists.
    if split == "calibration":
        return word_problems()[:N_CALIBRATION]
    if split == "test":
        return word_problems()[N_CALIBRATION:]
    if split == "recovery":
        return word_problems(n=N_PROMPTS + N_RECOVERY)[N_PROMPTS:]
    raise ValueError(f"unknown word-problem split {split!r} (choose from {', '.join(SPLITS)})")
