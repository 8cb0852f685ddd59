"""Seeded synthetic visual-reasoning scenes: a picture, a question, a chain of thought, an answer.

Every task needs two or more steps that combine what is seen with a rule: counting by attribute,
comparing counts, spatial relations, which pan of a balance goes down, which way a ball rolls on a
ramp, and small arithmetic over stacked blocks. Each generator draws its scene from the facts it
sampled, writes the chain of thought from the same facts, and `check_answer` re-derives the answer
from the facts alone, so a record can never state an answer its scene does not support.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image, ImageDraw

IMAGE_SIZE = 112
BACKGROUND = (255, 255, 255)
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (20, 160, 40), "yellow": (230, 200, 0)}
SHAPES = ("square", "circle", "triangle")


@dataclass
class Scene:
    task: str
    image: Image.Image
    question: str
    response: str  # the chain of thought, ending in "Therefore the answer is X."
    answer: str
    facts: dict = field(default_factory=dict)


@dataclass
class _Item:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


def _draw_item(draw: ImageDraw.ImageDraw, item: _Item) -> None:
    x0, y0, x1, y1 = item.box
    fill = COLORS[item.color]
    if item.shape == "square":
        draw.rectangle(item.box, fill=fill)
    elif item.shape == "circle":
        draw.ellipse(item.box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _place(rng: random.Random, n: int, min_size: int = 16, max_size: int = 22) -> list[tuple[int, int, int, int]]:
    """Non-overlapping boxes of varied size and position, on a coarse grid so shapes stay apart."""
    cells = [(cx, cy) for cx in range(4) for cy in range(4)]
    rng.shuffle(cells)
    boxes = []
    for cx, cy in cells[:n]:
        size = rng.randint(min_size, max_size)
        x0 = cx * 28 + rng.randint(1, 27 - size)
        y0 = cy * 28 + rng.randint(1, 27 - size)
        boxes.append((x0, y0, x0 + size, y0 + size))
    return boxes


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    return image, ImageDraw.Draw(image)


def count_by_color(rng: random.Random) -> Scene:
    target = rng.choice(list(COLORS))
    n_target = rng.randint(0, 4)
    others = [c for c in COLORS if c != target]
    n_other = rng.randint(1, 3)
    items = [(rng.choice(SHAPES), target) for _ in range(n_target)] + [(rng.choice(SHAPES), rng.choice(others)) for _ in range(n_other)]
    rng.shuffle(items)
    image, draw = _canvas()
    for (shape, color), box in zip(items, _place(rng, len(items), 18, 24)):
        _draw_item(draw, _Item(shape, color, box))
    total = len(items)
    response = (
        f"Step 1: There are {total} shapes in the picture. "
        f"Step 2: I count the {target} ones: {n_target}. "
        f"Therefore the answer is {n_target}."
    )
    return Scene("count_by_color", image, f"How many {target} shapes are there?", response, str(n_target),
                 {"target": target, "count": n_target, "colors": [c for _, c in items]})


def compare_shapes(rng: random.Random) -> Scene:
    first, second = rng.sample(SHAPES, 2)
    n_first, n_second = rng.sample(range(1, 6), 2)
    items = [first] * n_first + [second] * n_second
    rng.shuffle(items)
    image, draw = _canvas()
    for shape, box in zip(items, _place(rng, len(items))):
        _draw_item(draw, _Item(shape, rng.choice(list(COLORS)), box))
    more = first if n_first > n_second else second
    response = (
        f"Step 1: I count the {first}s: {n_first}. "
        f"Step 2: I count the {second}s: {n_second}. "
        f"Step 3: {max(n_first, n_second)} is more than {min(n_first, n_second)}. "
        f"Therefore the answer is {more}s."
    )
    return Scene("compare_shapes", image, f"Are there more {first}s or {second}s?", response, f"{more}s",
                 {"counts": {first: n_first, second: n_second}})


def left_or_right(rng: random.Random) -> Scene:
    # Shapes are named by colour alone: binding colour, kind and place at once was more than the
    # demo model learned in its training budget.
    color_a, color_b = rng.sample(list(COLORS), 2)
    image, draw = _canvas()
    while True:
        box_a, box_b = _place(rng, 2, 18, 24)
        if abs((box_a[0] + box_a[2]) - (box_b[0] + box_b[2])) >= 40:  # clearly apart horizontally
            break
    a, b = _Item(rng.choice(SHAPES), color_a, box_a), _Item(rng.choice(SHAPES), color_b, box_b)
    _draw_item(draw, a)
    _draw_item(draw, b)
    side = "left" if a.center_x < b.center_x else "right"
    other = "right" if side == "left" else "left"
    response = (
        f"Step 1: The {color_a} shape is on the {side}. "
        f"Step 2: The {color_b} shape is on the {other}. "
        f"Therefore the answer is {side}."
    )
    question = f"Is the {color_a} shape left or right of the {color_b} shape?"
    return Scene("left_or_right", image, question, response, side, {"a_x": a.center_x, "b_x": b.center_x})


def _blocks(n: int) -> str:
    return f"{n} block" if n == 1 else f"{n} blocks"


def balance(rng: random.Random) -> Scene:
    n_left, n_right = rng.sample(range(1, 5), 2)
    image, draw = _canvas()
    draw.polygon([(56, 70), (48, 100), (64, 100)], fill=(90, 90, 90))  # the pivot
    tilt = 8 if n_left > n_right else -8  # the heavier pan sits lower
    draw.line([(12, 70 + tilt), (100, 70 - tilt)], fill=(60, 60, 60), width=3)
    for side, n, x in (("left", n_left, 14), ("right", n_right, 74)):
        base = 70 + (tilt if side == "left" else -tilt) - 2
        for k in range(n):
            y1 = base - k * 11
            draw.rectangle((x + 2, y1 - 10, x + 22, y1), fill=COLORS["blue"], outline=(0, 0, 0))
    heavier = "left" if n_left > n_right else "right"
    response = (
        f"Step 1: The left pan holds {_blocks(n_left)}. "
        f"Step 2: The right pan holds {_blocks(n_right)}. "
        f"Step 3: The side with more blocks is heavier, so it goes down. "
        f"Therefore the answer is {heavier}."
    )
    return Scene("balance", image, "All blocks weigh the same. Which side of the balance goes down?", response,
                 heavier, {"left": n_left, "right": n_right})


def ramp(rng: random.Random) -> Scene:
    high = rng.choice(["left", "right"])
    image, draw = _canvas()
    y_high, y_low = rng.randint(30, 50), rng.randint(90, 100)
    left_y, right_y = (y_high, y_low) if high == "left" else (y_low, y_high)
    draw.polygon([(8, left_y), (104, right_y), (104, 104), (8, 104)], fill=(140, 100, 60))
    ball_x = rng.randint(40, 72)
    surface = left_y + (right_y - left_y) * (ball_x - 8) / 96
    draw.ellipse((ball_x - 7, surface - 15, ball_x + 7, surface - 1), fill=COLORS[rng.choice(["red", "green"])])
    roll = "right" if high == "left" else "left"
    response = (
        f"Step 1: The ramp is higher on the {high}. "
        f"Step 2: A ball rolls downhill, away from the high end. "
        f"Therefore the answer is {roll}."
    )
    return Scene("ramp", image, "Which way will the ball roll, left or right?", response, roll, {"high": high})


def stacks(rng: random.Random) -> Scene:
    n_left, n_right = rng.randint(1, 4), rng.randint(1, 4)
    image, draw = _canvas()
    draw.line([(0, 104), (112, 104)], fill=(60, 60, 60), width=2)
    for n, x, color in ((n_left, 16, rng.choice(list(COLORS))), (n_right, 70, rng.choice(list(COLORS)))):
        for k in range(n):
            y1 = 103 - k * 20
            draw.rectangle((x, y1 - 18, x + 26, y1), fill=COLORS[color], outline=(0, 0, 0))
    total = n_left + n_right
    response = (
        f"Step 1: The left stack has {_blocks(n_left)}. "
        f"Step 2: The right stack has {_blocks(n_right)}. "
        f"Step 3: {n_left} + {n_right} = {total}. "
        f"Therefore the answer is {total}."
    )
    return Scene("stacks", image, "How many blocks are there in the two stacks together?", response, str(total),
                 {"left": n_left, "right": n_right})


TASKS: dict[str, Callable[[random.Random], Scene]] = {
    "count_by_color": count_by_color,
    "compare_shapes": compare_shapes,
    "left_or_right": left_or_right,
    "balance": balance,
    "ramp": ramp,
    "stacks": stacks,
}


def check_answer(scene: Scene) -> None:
    """Re-derive the answer from the scene's facts; raise if the record contradicts them."""
    f = scene.facts
    expected = {
        "count_by_color": lambda: str(sum(c == f["target"] for c in f["colors"])),
        "compare_shapes": lambda: max(f["counts"], key=f["counts"].get) + "s",
        "left_or_right": lambda: "left" if f["a_x"] < f["b_x"] else "right",
        "balance": lambda: "left" if f["left"] > f["right"] else "right",
        "ramp": lambda: "right" if f["high"] == "left" else "left",
        "stacks": lambda: str(f["left"] + f["right"]),
    }[scene.task]()
    if scene.answer != expected or not scene.response.endswith(f"the answer is {expected}."):
        raise AssertionError(f"{scene.task}: stated answer {scene.answer!r}, scene says {expected!r}")


def make_scene(seed: int, task_weights: dict[str, float] | None = None) -> Scene:
    """The scene for one seed: the task and everything in it follow from the seed (and weights) alone.

    `task_weights` (training only) draws some task families more often than others; every split that
    is written to disk draws them uniformly.
    """
    rng = random.Random(seed)
    names = sorted(TASKS)
    task = rng.choice(names) if task_weights is None else rng.choices(names, [task_weights.get(n, 1.0) for n in names])[0]
    scene = TASKS[task](rng)
    check_answer(scene)
    return scene


def extract_answer(response: str) -> str | None:
    """The final answer of a chain of thought, as the generator writes it."""
    marker = "the answer is "
    at = response.rfind(marker)
    if at < 0:
        return None
    return response[at + len(marker):].split(".")[0].strip() or None
