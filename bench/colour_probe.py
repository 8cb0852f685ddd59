"""Does the demo VLM's vision tower see colour? Two measurements of its output (merged) tokens.

    .venv/bin/python bench/colour_probe.py [--model DIR]

1. Cosine similarity for one square drawn in different colours, against the same square moved one
   cell over. A square of 20 px at (30, 30) lies inside merged vision token 5 (row 1, column 1 of
   the 4x4 grid of 28 px cells).
2. A linear probe: scenes of 3 shapes drawn by the scene generator; a logistic regression on each
   token predicts the colour of the shape in its cell (or none), fitted on 600 scenes and scored on
   200 others, for the model and for a freshly initialised one of the same architecture.

Cosine near 1.0 does not mean the colour is lost: the probe says whether it can still be read.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.calibration.batches import load_processor
from mucrasp.demo import scenes
from mucrasp.demo.bundled import bundled_demo_model
from mucrasp.demo.model_config import DemoArchitecture
from mucrasp.demo.scenes import COLORS
from mucrasp.demo.train import new_demo_model
from mucrasp.model_loading import load_model

TOKEN = 5  # the merged token holding the square at (30, 30)


def square(color: tuple[int, int, int], x: int = 30, y: int = 30) -> Image.Image:
    image = Image.new("RGB", (112, 112), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((x, y, x + 20, y + 20), fill=color)
    return image


def probe_scenes(n: int, seed: int) -> tuple[list[Image.Image], torch.Tensor]:
    """Images of 3 shapes and, per merged token (raster order), 0 for none or 1 + the colour's index."""
    import random

    rng, colors = random.Random(seed), list(COLORS)
    images, labels = [], []
    for _ in range(n):
        image, draw = scenes._canvas()
        cells = [0] * 16
        for box in scenes._place(rng, 3, 18, 24):
            color = rng.choice(colors)
            scenes._draw_item(draw, scenes._Item(rng.choice(scenes.SHAPES), color, box))
            cells[(box[1] // 28) * 4 + box[0] // 28] = 1 + colors.index(color)
        images.append(image)
        labels += cells
    return images, torch.tensor(labels)


@torch.no_grad()
def vision_tokens(model, processor, images: list[Image.Image]) -> torch.Tensor:
    parts = []
    for start in range(0, len(images), 50):
        encoded = processor.image_processor(images=images[start : start + 50], return_tensors="pt")
        parts.append(model.model.visual(encoded["pixel_values"], grid_thw=encoded["image_grid_thw"]).pooler_output)
    return torch.cat(parts).float()


def probe_accuracy(model, processor) -> tuple[float, float]:
    """Held-out accuracy of a linear colour probe: on all tokens, and on the tokens that hold a shape."""
    fit_images, fit_labels = probe_scenes(600, seed=1)
    test_images, test_labels = probe_scenes(200, seed=2)
    fit, test = vision_tokens(model, processor, fit_images), vision_tokens(model, processor, test_images)
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    fit, test = (fit - mean) / std, (test - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(fit.shape[1], len(COLORS) + 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(400):
            loss = torch.nn.functional.cross_entropy(linear(fit), fit_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        right = linear(test).argmax(1) == test_labels
    return right.float().mean().item(), right[test_labels > 0].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a demo VLM directory (default: the bundled one)")
    args = parser.parse_args()
    path = args.model or bundled_demo_model()
    model, processor = load_model(path).model, load_processor(path, vision=True)
    names = ["red", "blue", "green", "red, moved one cell right"]
    images = [square(COLORS["red"]), square(COLORS["blue"]), square(COLORS["green"]), square(COLORS["red"], x=58)]
    encoded = processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.model.visual(encoded["pixel_values"], grid_thw=encoded["image_grid_thw"])
    tokens = out.pooler_output.view(len(images), -1, out.pooler_output.shape[-1])[:, TOKEN]
    print(f"Vision-token cosine similarity at the square's token, {path}:\n")
    print("| pair | cosine |\n|---|---|")
    for a, b in [(0, 1), (0, 2), (1, 2), (0, 3)]:
        cosine = torch.nn.functional.cosine_similarity(tokens[a], tokens[b], dim=0).item()
        print(f"| {names[a]} / {names[b]} | {cosine:.3f} |")
    torch.manual_seed(0)
    fresh = new_demo_model(processor, DemoArchitecture()).eval()
    print("\nLinear colour probe on the merged vision tokens (held-out scenes):\n")
    print("| vision tower | all tokens | tokens holding a shape |\n|---|---|---|")
    for name, candidate in [(str(path), model), ("freshly initialised", fresh)]:
        everything, shapes = probe_accuracy(candidate, processor)
        print(f"| {name} | {everything:.3f} | {shapes:.3f} |")


if __name__ == "__main__":
    main()
