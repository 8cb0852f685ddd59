"""Does the demo VLM's vision tower see colour? Cosine similarity of its output tokens for one square
drawn in different colours, against the same square moved one cell over.

    .venv/bin/python bench/colour_probe.py [--model DIR]

A square of 20 px at (30, 30) lies inside merged vision token 5 (row 1, column 1 of the 4x4 grid of
28 px cells). Near 1.0 between colours means the token barely changes with colour; the moved square
is the contrast: what a difference the tower does encode looks like. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
import torch
from PIL import Image, ImageDraw

from mucrasp.calibration.batches import load_processor
from mucrasp.demo.bundled import bundled_demo_model
from mucrasp.demo.scenes import COLORS
from mucrasp.model_loading import load_model

TOKEN = 5  # the merged token holding the square at (30, 30)


def square(color: tuple[int, int, int], x: int = 30, y: int = 30) -> Image.Image:
    image = Image.new("RGB", (112, 112), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((x, y, x + 20, y + 20), fill=color)
    return image


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


if __name__ == "__main__":
    main()
