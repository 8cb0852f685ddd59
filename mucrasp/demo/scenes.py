"""Seeded synthetic visual-reasoning scenes: a picture, a question, a chain of thought, an answer.

Every task needs two or more steps that combine what is seen with a rule: counting by attribute,
comparing counts, spatial relations, which pan of a balance goes down, which way a ball rolls on a
ramp, and small arithmetic over stacked blocks. Each generator draws its scene from the facts it
sampled, writes the chain of thought from the same facts, and `check_answer` re-derives the answer
(and every count or place the chain of thought states) from the facts alone, so a record can never
state something its scene does not support.

Why the chains of thought look the way they do (measured with `bench/demo_recipes.py`): a small
model learns "count every colour, in a fixed order, then pick the one asked about" and "say what
each column holds, then compare column numbers" far faster than "count the blue ones" or "the red
shape is on the left", which need it to bind a word of the question to one spot of the picture.
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


COLUMN_WIDTH = 28  # the grid cell, and the image patch a vision token covers after the 2x2 merge
COLUMN_SHADES = (255, 210, 165, 120)  # the floor's grey in the 4 columns, left to right


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    # The floor is tiled in 4 columns of different greys. Qwen's vision tower has only relative
    # positions, so on a plain floor a shape looks the same in every column; left_or_right stayed
    # at chance in every recipe tried on one. The tiles put the column in the pixels.
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for column, shade in enumerate(COLUMN_SHADES):
        x0 = column * COLUMN_WIDTH
        draw.rectangle((x0, 0, x0 + COLUMN_WIDTH - 1, IMAGE_SIZE - 1), fill=(shade, shade, shade))
    return image, draw


def _column(center_x: float) -> int:
    return int(center_x // COLUMN_WIDTH) + 1


def _tally(counts: dict[str, int], names) -> str:
    """'red 2, blue 0, green 1, yellow 1': every name, always in the same order."""
    return ", ".join(f"{name} {counts.get(name, 0)}" for name in names)


def _column_scan(held: dict[int, str]) -> str:
    """'red 1, empty 2, empty 3, blue 4': what each column holds, then its number.

    The number comes after the colour so that finding a colour's column later is a plain copy of
    the token that followed it; with 'column 1 red' the model copied the numbers in scan order.
    """
    return ", ".join(f"{held.get(c, 'empty')} {c}" for c in range(1, len(COLUMN_SHADES) + 1))


def count_by_color(rng: random.Random) -> Scene:
    target = rng.choice(list(COLORS))
    n_target = rng.randint(0, 4)
    others = [c for c in COLORS if c != target]
    n_other = rng.randint(1, 3)
    items = [(rng.choice(SHAPES), target) for _ in range(n_target)] + [
        (rng.choice(SHAPES), rng.choice(others)) for _ in range(n_other)
    ]
    rng.shuffle(items)
    image, draw = _canvas()
    for (shape, color), box in zip(items, _place(rng, len(items), 18, 24)):
        _draw_item(draw, _Item(shape, color, box))
    colors = [c for _, c in items]
    counts = {c: colors.count(c) for c in COLORS}
    response = (
        f"Step 1: I count each color: {_tally(counts, COLORS)}. "
        f"Step 2: The question asks about {target}, so the count is {n_target}. "
        f"Therefore the answer is {n_target}."
    )
    return Scene(
        "count_by_color",
        image,
        f"How many {target} shapes are there?",
        response,
        str(n_target),
        {"target": target, "count": n_target, "colors": colors},
    )


def _plural(n: int, shape: str) -> str:
    return f"{n} {shape}" if n == 1 else f"{n} {shape}s"


def compare_shapes(rng: random.Random) -> Scene:
    first, second = rng.sample(SHAPES, 2)
    n_first, n_second = rng.sample(range(1, 6), 2)
    items = [first] * n_first + [second] * n_second
    rng.shuffle(items)
    image, draw = _canvas()
    # 20-26 px: at 16-22 px the trained model's shape tallies often swapped circles and squares.
    for shape, box in zip(items, _place(rng, len(items), 20, 26)):
        _draw_item(draw, _Item(shape, rng.choice(list(COLORS)), box))
    counts = {first: n_first, second: n_second}
    more = first if n_first > n_second else second
    response = (
        f"Step 1: I count each shape: {_tally(counts, SHAPES)}. "
        f"Step 2: There are {_plural(n_first, first)} and {_plural(n_second, second)}. "
        f"Step 3: {max(n_first, n_second)} is more than {min(n_first, n_second)}. "
        f"Therefore the answer is {more}s."
    )
    return Scene(
        "compare_shapes", image, f"Are there more {first}s or {second}s?", response, f"{more}s", {"counts": counts}
    )


def left_or_right(rng: random.Random) -> Scene:
    # Shapes are named by colour alone: binding colour, kind and place at once was more than the
    # demo model learned in its training budget.
    color_a, color_b = rng.sample(list(COLORS), 2)
    image, draw = _canvas()
    while True:
        box_a, box_b = _place(rng, 2, 18, 24)
        if abs((box_a[0] + box_a[2]) - (box_b[0] + box_b[2])) >= 40:  # clearly apart: never in one column
            break
    a, b = _Item(rng.choice(SHAPES), color_a, box_a), _Item(rng.choice(SHAPES), color_b, box_b)
    _draw_item(draw, a)
    _draw_item(draw, b)
    col_a, col_b = _column(a.center_x), _column(b.center_x)
    side = "left" if col_a < col_b else "right"
    response = (
        f"Step 1: I look at each column: {_column_scan({col_a: color_a, col_b: color_b})}. "
        f"Step 2: The two shapes are {color_a} {col_a} and {color_b} {col_b}. "
        f"Step 3: {col_a} is {'less' if col_a < col_b else 'more'} than {col_b}. "
        f"Therefore the answer is {side}."
    )
    question = f"Is the {color_a} shape left or right of the {color_b} shape?"
    return Scene(
        "left_or_right",
        image,
        question,
        response,
        side,
        {"a_x": a.center_x, "b_x": b.center_x, "a_color": color_a, "b_color": color_b},
    )


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
    return Scene(
        "balance",
        image,
        "All blocks weigh the same. Which side of the balance goes down?",
        response,
        heavier,
        {"left": n_left, "right": n_right},
    )


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
    return Scene(
        "stacks",
        image,
        "How many blocks are there in the two stacks together?",
        response,
        str(total),
        {"left": n_left, "right": n_right},
    )


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
    # The intermediate steps a task states must match the scene too, not only its final answer.
    stated = {
        "count_by_color": lambda: f"I count each color: {_tally({c: f['colors'].count(c) for c in COLORS}, COLORS)}.",
        "compare_shapes": lambda: f"I count each shape: {_tally(f['counts'], SHAPES)}.",
        "left_or_right": lambda: (
            "I look at each column: "
            f"{_column_scan({_column(f['a_x']): f['a_color'], _column(f['b_x']): f['b_color']})}."
        ),
    }.get(scene.task)
    if stated is not None and stated() not in scene.response:
        raise AssertionError(
            f"{scene.task}: the chain of thought {scene.response!r} does not match the scene (needs {stated()!r})"
        )


def make_scene(seed: int, task_weights: dict[str, float] | None = None) -> Scene:
    """The scene for one seed: the task and everything in it follow from the seed (and weights) alone.

    `task_weights` (training only) draws some task families more often than others; every split that
    is written to disk draws them uniformly.
    """
    rng = random.Random(seed)
    names = sorted(TASKS)
    task = (
        rng.choice(names) if task_weights is None else rng.choices(names, [task_weights.get(n, 1.0) for n in names])[0]
    )
    scene = TASKS[task](rng)
    check_answer(scene)
    return scene


def extract_answer(response: str) -> str | None:
    """The final answer of a chain of thought, as the generator writes it."""
    marker = "the answer is "
    at = response.rfind(marker)
    if at < 0:
        return None
    return response[at + len(marker) :].split(".")[0].strip() or None
