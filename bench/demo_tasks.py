"""Per-task exact-answer accuracy of the bundled demo VLM, on calibration-range items (not the test split).

    .venv/bin/python bench/demo_tasks.py [--items 128] [--model DIR] [--out DIR]

Writes bench/results/demo_tasks.{json,md}: which task families the demo model has learned.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import load_processor
from mucrasp.demo.bundled import bundled_demo_model
from mucrasp.demo.dataset import split_seeds
from mucrasp.demo.evaluate_demo import per_task_results
from mucrasp.demo.scenes import make_scene
from mucrasp.model_loading import load_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=128)
    parser.add_argument("--model", type=Path, default=None, help="a demo VLM directory (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where demo_tasks.{json,md} go")
    args = parser.parse_args()
    path = args.model or bundled_demo_model()
    model, processor = load_model(path).model, load_processor(path, vision=True)
    scenes = [make_scene(seed) for seed in split_seeds("calibration", args.items)]
    rows = per_task_results(model, processor, scenes, batch_size=32)
    n_correct = sum(r["correct"] for r in rows.values())
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, torch {torch.__version__}, "
        f"{args.items} calibration-range items."
    )
    lines = [header, "", "| task | correct | items | accuracy |", "|---|---|---|---|"]
    lines += [f"| {t} | {r['correct']} | {r['items']} | {r['correct'] / r['items']:.2f} |" for t, r in rows.items()]
    lines.append(f"| all | {n_correct} | {len(scenes)} | {n_correct / len(scenes):.2f} |")
    write_json_atomic(args.out / "demo_tasks.json", {"header": header, "tasks": rows})
    write_text_atomic(args.out / "demo_tasks.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
