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


# Each template draws its numbers in the order its prompt names them (so the prompts never change)
# and returns the prompt with its true answer, as `final_answer` would read it; None where the answer
# is a sentence, not a number.
def _add(r, n, i):
    a, b = r.randint(2, 9), r.randint(2, 9)
    return f"{n} has {a} {i} and buys {b} more. How many {i} does {n} have now?", a + b


def _give_away(r, n, i):
    a, b = r.randint(10, 20), r.randint(2, 9)
    return f"{n} had {a} {i} and gave away {b}. How many {i} are left?", a - b


def _boxes(r, n, i):
    a, b = r.randint(2, 6), r.randint(2, 9)
    return f"There are {a} boxes with {b} {i} in each box. How many {i} are there in total?", a * b


def _share(r, n, i):
    a, b = r.choice([12, 16, 18, 20, 24]), r.choice([2, 4])
    return f"{n} shares {a} {i} equally among {b} friends. How many {i} does each friend get?", a / b


def _train(r, n, i):
    a, b = r.randint(1, 9), r.randint(2, 3)
    arrival = (a + b - 1) % 12 + 1  # on a 12-hour clock
    return f"A train leaves at {a} o'clock and travels for {b} hours. At what time does it arrive?", arrival


def _age(r, n, i):
    a, b = r.randint(8, 15), r.randint(2, 6)
    return f"{n} is {a} years old. Her brother is {b} years older. How old is her brother?", a + b


def _shopping(r, n, i):
    a, b, c = r.randint(2, 5), r.randint(3, 8), r.randint(2, 3)
    return (
        f"A pencil costs {a} dollars and a notebook costs {b} dollars. How much do {c} pencils and one notebook cost?",
        c * a + b,
    )


def _reading(r, n, i):
    a, b = r.randint(5, 15), r.randint(3, 7)
    return f"{n} reads {a} pages every day. How many pages does {n} read in {b} days?", a * b


def _feathers(r, n, i):
    return f"Which is heavier, a kilogram of feathers or {r.randint(2, 5)} kilograms of stones? Explain.", None


def _syllogism(r, n, i):
    return f"If all cats are animals and {n}'s pet is a cat, is {n}'s pet an animal? Explain your reasoning.", None


def _area(r, n, i):
    a, b = r.randint(2, 9), r.randint(2, 9)
    return f"A rectangle is {a} meters long and {b} meters wide. What is its area?", a * b


def _walking(r, n, i):
    a, b = r.randint(2, 5), r.randint(2, 5)
    # "to school and back": a each way, so 2a a day
    return f"{n} walks {a} kilometers to school and back every day. How far does {n} walk in {b} days?", 2 * a * b


TEMPLATES = [
    _add,
    _give_away,
    _boxes,
    _share,
    _train,
    _age,
    _shopping,
    _reading,
    _feathers,
    _syllogism,
    _area,
    _walking,
]


def _answered_problems(seed: int, n: int) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    problems: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    k = 0
    while len(problems) < n:
        prompt, answer = TEMPLATES[k % len(TEMPLATES)](rng, rng.choice(NAMES), rng.choice(ITEMS))
        prompt += SUFFIX
        k += 1
        if prompt not in seen:
            seen.add(prompt)
            problems.append((prompt, None if answer is None else f"{answer:g}"))
    return problems


def word_problems(seed: int = 0, n: int = N_PROMPTS) -> list[str]:
    """`n` distinct prompts, cycling through the templates; repeats are redrawn, so no prompt can be
    in both the calibration and the test part."""
    return [prompt for prompt, _ in _answered_problems(seed, n)]


def true_answers(split: str) -> list[str | None]:
    """The true final answer of each prompt of `split_prompts(split)`, in order (None: not a number)."""
    problems = _answered_problems(0, N_PROMPTS + (N_RECOVERY if split == "recovery" else 0))
    return [answer for _, answer in problems[_split_slice(split)]]


def true_answers_of(prompts: list[str]) -> list[str | None]:
    """The true answer of each prompt, from whichever split holds it (None: not a bundled word problem,
    or one without a numeric answer)."""
    known = dict(_answered_problems(0, N_PROMPTS + N_RECOVERY))
    return [known.get(p) for p in prompts]


def _split_slice(split: str) -> slice:
    # The recovery pool draws past the first N_PROMPTS from the same generator, so the calibration and
    # test parts are the same whether or not it exists.
    slices = {
        "calibration": slice(0, N_CALIBRATION),
        "test": slice(N_CALIBRATION, N_PROMPTS),
        "recovery": slice(N_PROMPTS, N_PROMPTS + N_RECOVERY),
    }
    if split not in slices:
        raise ValueError(f"unknown word-problem split {split!r} (choose from {', '.join(SPLITS)})")
    return slices[split]


def split_prompts(split: str) -> list[str]:
    return word_problems(n=N_PROMPTS + (N_RECOVERY if split == "recovery" else 0))[_split_slice(split)]
