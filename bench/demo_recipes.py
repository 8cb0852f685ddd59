"""Compare training recipes for the demo VLM: per-task accuracy as training goes on.

    .venv/bin/python bench/demo_recipes.py --variants base,scan [--device cuda] [--steps 4000]
        [--eval-every 1000] [--eval-items 300] [--parallel 2] [--data-workers 0]
        [--save-dir DIR] [--out bench/results/demo-recipes.json]

Each variant trains a fresh model in its own process (variants patch the scene generator, which
is module state) and is scored on calibration-range items, never the test split. A variant is a
set of changes to the recipe in `mucrasp/demo/` as of the commit that holds this file: training
settings, architecture fields, and named patches of the scene generator. The output JSON (and a
markdown table beside it) is rewritten after every evaluation, so an interrupted run keeps what
it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


# --- scene-generator patches --------------------------------------------------------------------

def _patch_tally(scenes) -> None:
    """count_by_color tallies every colour before counting the asked one."""

    def tally(colors: list[str]) -> str:
        parts = [f"{colors.count(color)} {color}" for color in scenes.COLORS if color in colors]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"

    original = scenes.TASKS["count_by_color"]

    def count_by_color(rng):
        scene = original(rng)
        first, rest = scene.response.split(" Step 2:", 1)
        total = len(scene.facts["colors"])
        scene.response = f"Step 1: There are {total} shapes: {tally(scene.facts['colors'])}. Step 2:{rest}"
        return scene

    scenes.TASKS["count_by_color"] = count_by_color


COLUMN_SHADES = (255, 230, 205, 180)


def _patch_columns(scenes) -> None:
    """Each 28 px column of the floor its own grey; left_or_right reasons through column numbers."""

    def canvas():
        image = scenes.Image.new("RGB", (scenes.IMAGE_SIZE, scenes.IMAGE_SIZE), scenes.BACKGROUND)
        draw = scenes.ImageDraw.Draw(image)
        for column, shade in enumerate(COLUMN_SHADES):
            draw.rectangle((column * 28, 0, column * 28 + 27, scenes.IMAGE_SIZE - 1), fill=(shade,) * 3)
        return image, draw

    original = scenes.TASKS["left_or_right"]

    def left_or_right(rng):
        scene = original(rng)
        color_a, color_b = scene.question.split("Is the ")[1].split(" shape left or right of the ")
        color_b = color_b.split(" shape")[0]
        col_a, col_b = int(scene.facts["a_x"] // 28) + 1, int(scene.facts["b_x"] // 28) + 1
        scene.response = (
            f"Step 1: The {color_a} shape is in column {col_a}. "
            f"Step 2: The {color_b} shape is in column {col_b}. "
            f"Step 3: {col_a} is {'less' if col_a < col_b else 'more'} than {col_b}. "
            f"Therefore the answer is {scene.answer}."
        )
        return scene

    scenes._canvas = canvas
    scenes.TASKS["left_or_right"] = left_or_right


def _patch_colour_tally(scenes) -> None:
    """count_by_color counts every colour in a fixed order, then picks the asked one out of the tally."""

    def count_by_color(rng):
        scene = original(rng)
        colors, target = scene.facts["colors"], scene.facts["target"]
        tally = ", ".join(f"{color} {colors.count(color)}" for color in scenes.COLORS)
        scene.response = (
            f"Step 1: I count each colour: {tally}. "
            f"Step 2: The question asks about {target}, so the count is {colors.count(target)}. "
            f"Therefore the answer is {scene.answer}."
        )
        return scene

    original = scenes.TASKS["count_by_color"]
    scenes.TASKS["count_by_color"] = count_by_color


def _patch_column_scan(scenes) -> None:
    """Shaded columns; left_or_right names what each column holds, then compares column numbers."""
    _patch_columns(scenes)
    columns_version = scenes.TASKS["left_or_right"]

    def left_or_right(rng):
        scene = columns_version(rng)
        color_a, color_b = scene.question.split("Is the ")[1].split(" shape left or right of the ")
        color_b = color_b.split(" shape")[0]
        col_a, col_b = int(scene.facts["a_x"] // 28) + 1, int(scene.facts["b_x"] // 28) + 1
        held = {col_a: color_a, col_b: color_b}
        scan = ", ".join(f"column {c} {held.get(c, 'empty')}" for c in range(1, 5))
        scene.response = (
            f"Step 1: I look at each column: {scan}. "
            f"Step 2: {color_a} is in column {col_a} and {color_b} is in column {col_b}. "
            f"Step 3: {col_a} is {'less' if col_a < col_b else 'more'} than {col_b}. "
            f"Therefore the answer is {scene.answer}."
        )
        return scene

    scenes.TASKS["left_or_right"] = left_or_right


def _patch_shape_tally(scenes) -> None:
    """compare_shapes counts every shape in a fixed order, then compares the two asked about."""

    def compare_shapes(rng):
        scene = original(rng)
        counts = scene.facts["counts"]
        first, second = scene.question.split("Are there more ")[1].rstrip("?").split(" or ")
        first, second = first[:-1], second[:-1]  # "squares" -> "square"
        tally = ", ".join(f"{shape} {counts.get(shape, 0)}" for shape in scenes.SHAPES)
        n_first, n_second = counts[first], counts[second]
        scene.response = (
            f"Step 1: I count each shape: {tally}. "
            f"Step 2: There are {n_first} {first}s and {n_second} {second}s. "
            f"Step 3: {max(n_first, n_second)} is more than {min(n_first, n_second)}. "
            f"Therefore the answer is {scene.answer}."
        )
        return scene

    original = scenes.TASKS["compare_shapes"]
    scenes.TASKS["compare_shapes"] = compare_shapes


def _patch_strong_columns(scenes) -> None:
    global COLUMN_SHADES
    COLUMN_SHADES = (255, 210, 165, 120)


def _patch_big_shapes(scenes) -> None:
    """compare_shapes draws its shapes 20-26 px (was 16-22), so a circle and a square differ more."""
    shape_tally_version = scenes.TASKS["compare_shapes"]
    place = scenes._place

    def compare_shapes(rng):
        scenes._place = lambda rng, n, min_size=20, max_size=26: place(rng, n, min_size, max_size)
        try:
            return shape_tally_version(rng)
        finally:
            scenes._place = place

    scenes.TASKS["compare_shapes"] = compare_shapes


SCENE_PATCHES = {
    "tally": _patch_tally, "columns": _patch_columns, "colour-tally": _patch_colour_tally,
    "column-scan": _patch_column_scan, "shape-tally": _patch_shape_tally, "strong-columns": _patch_strong_columns,
    "big-shapes": _patch_big_shapes,
}


# --- variants -----------------------------------------------------------------------------------

WIDE_POSITIONS = {"mrope_section": (1, 1, 14), "rope_theta": 100.0}  # width axis: 0.56 .. 0.013 rad per column
HARD_TASKS_3X = {"count_by_color": 3.0, "left_or_right": 3.0}
SCAN2 = ["strong-columns", "colour-tally", "shape-tally", "big-shapes", "column-scan"]
SCAN2_WEIGHTS = {"count_by_color": 2.0, "compare_shapes": 3.0, "left_or_right": 4.0}
VISION_192x3 = {"vision_depth": 3, "vision_hidden_size": 192, "vision_heads": 6}

VARIANTS: dict[str, dict] = {
    "base": {},
    "wide-positions": {"architecture": WIDE_POSITIONS},
    "tally-columns": {"scenes": ["tally", "columns"]},
    "tally-columns-wide-v192": {"scenes": ["tally", "columns"], "architecture": {**WIDE_POSITIONS, **VISION_192x3}},
    "tally-columns-wide-v192-lr6e-4": {"scenes": ["tally", "columns"], "architecture": {**WIDE_POSITIONS, **VISION_192x3}, "train": {"learning_rate": 6e-4}},
    "tally-columns-wide-v192-b32": {"scenes": ["tally", "columns"], "architecture": {**WIDE_POSITIONS, **VISION_192x3}, "train": {"batch_size": 32}},
    "tally-wide-v192": {"scenes": ["tally"], "architecture": {**WIDE_POSITIONS, **VISION_192x3}},
    "tally-columns-v192": {"scenes": ["tally", "columns"], "architecture": VISION_192x3},
    # The tasks that bind a colour to a count or a place, drawn 3x as often in training; batch 32.
    "mix-b32": {"train": {"batch_size": 32, "task_weights": HARD_TASKS_3X}},
    "mix-b32-vlr5": {"train": {"batch_size": 32, "task_weights": HARD_TASKS_3X, "vision_lr_scale": 5.0}},
    "mix-b32-tally-columns-vlr5": {"scenes": ["tally", "columns"], "train": {"batch_size": 32, "task_weights": HARD_TASKS_3X, "vision_lr_scale": 5.0}},
    "mix-b32-tally-wide-vlr5": {"scenes": ["tally"], "architecture": WIDE_POSITIONS, "train": {"batch_size": 32, "task_weights": HARD_TASKS_3X, "vision_lr_scale": 5.0}},
    # Every count as a tally in a fixed order, left_or_right as a scan of the shaded columns.
    "scan": {"scenes": ["colour-tally", "shape-tally", "column-scan"], "train": {"task_weights": HARD_TASKS_3X}},
    "scan-uniform": {"scenes": ["colour-tally", "shape-tally", "column-scan"]},
    "scan-wide": {"scenes": ["colour-tally", "shape-tally", "column-scan"], "architecture": WIDE_POSITIONS, "train": {"task_weights": HARD_TASKS_3X}},
    "scan-strong": {"scenes": ["strong-columns", "colour-tally", "shape-tally", "column-scan"], "train": {"task_weights": HARD_TASKS_3X}},
    "scan2": {"scenes": SCAN2, "train": {"task_weights": SCAN2_WEIGHTS}},
    "scan2-wide": {"scenes": SCAN2, "architecture": WIDE_POSITIONS, "train": {"task_weights": SCAN2_WEIGHTS}},
    # Diagnostics: one task family alone.
    "only-count-by-color": {"train": {"task_weights": {t: 0.0 for t in ("compare_shapes", "left_or_right", "balance", "ramp", "stacks")}}},
    "only-count-by-color-colour-tally": {"scenes": ["colour-tally"], "train": {"task_weights": {t: 0.0 for t in ("compare_shapes", "left_or_right", "balance", "ramp", "stacks")}}},
    "only-left-or-right-column-scan": {"scenes": ["column-scan"], "train": {"task_weights": {t: 0.0 for t in ("compare_shapes", "count_by_color", "balance", "ramp", "stacks")}}},
    "only-count-by-color-lr1e-3": {"train": {"learning_rate": 1e-3, "task_weights": {t: 0.0 for t in ("compare_shapes", "left_or_right", "balance", "ramp", "stacks")}}},
}


def run_variant(name: str, args: argparse.Namespace, out_file: Path) -> None:
    import mucrasp  # noqa: F401  (CPU-torch workarounds first)
    import torch

    from mucrasp.demo import scenes
    from mucrasp.demo.dataset import split_seeds
    from mucrasp.demo.evaluate_demo import per_task_results
    from mucrasp.demo.model_config import DemoArchitecture
    from mucrasp.demo.processor import build_processor
    from mucrasp.demo.train import TrainConfig, new_demo_model, train_steps

    spec = VARIANTS[name]
    for patch in spec.get("scenes", []):
        SCENE_PATCHES[patch](scenes)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    architecture = dataclasses.replace(DemoArchitecture(), **spec.get("architecture", {}))
    config = dataclasses.replace(
        TrainConfig(steps=args.steps, device=args.device, data_workers=args.data_workers, architecture=architecture),
        **spec.get("train", {}),
    )
    processor = build_processor()  # after the patches: the tokenizer learns the patched wording
    model = new_demo_model(processor, architecture)
    eval_scenes = [scenes.make_scene(s) for s in split_seeds("calibration", args.eval_items)]
    record = {"variant": name, "spec": spec, "config": dataclasses.asdict(config), "evaluations": []}
    started = time.perf_counter()

    def on_step(step: int, recent_loss: float) -> bool:
        done = step + 1
        if done % args.eval_every and done != config.steps:
            return False
        tasks = per_task_results(model.eval(), processor, eval_scenes, batch_size=100)
        model.train()
        correct = sum(r["correct"] for r in tasks.values())
        record["evaluations"].append({
            "step": done, "seconds": round(time.perf_counter() - started, 1), "loss": round(recent_loss, 4),
            "accuracy": round(correct / len(eval_scenes), 3),
            "tasks": {t: round(r["correct"] / r["items"], 3) for t, r in tasks.items()},
        })
        out_file.write_text(json.dumps(record, indent=2))
        print(f"{name} step {done} acc {correct / len(eval_scenes):.3f} {record['evaluations'][-1]['tasks']}", flush=True)
        return False

    train_steps(model, processor, config, on_step)
    if args.save_dir is not None:
        model.cpu().save_pretrained(args.save_dir / name)
        processor.save_pretrained(args.save_dir / name)


def markdown(results: dict) -> str:
    """One row per evaluation of every run: overall and per-task accuracy as training goes on."""
    runs = results["runs"]
    tasks = sorted({t for r in runs for e in r["evaluations"] for t in e["tasks"]})
    lines = [
        f"Measured {results['date']} on {results['machine']}, device {results['device']}; "
        f"{results['eval_items']} items from the {results['eval_split']}.",
        "",
        "| variant | step | seconds | loss | accuracy | " + " | ".join(tasks) + " |",
        "|---|---|---|---|---|" + "---|" * len(tasks),
    ]
    for run in runs:
        for e in run["evaluations"]:
            cells = " | ".join(f"{e['tasks'].get(t, 0):.2f}" for t in tasks)
            lines.append(f"| {run['variant']} | {e['step']} | {e['seconds']:.0f} | {e['loss']:.4f} | {e['accuracy']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


def _merge(parts: list[Path], out: Path, header: dict) -> None:
    from mucrasp.atomic_io import write_json_atomic, write_text_atomic

    results = {**header, "runs": [json.loads(p.read_text()) for p in parts if p.is_file()]}
    write_json_atomic(out, results)
    write_text_atomic(out.with_suffix(".md"), markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-items", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--data-workers", type=int, default=0, help="batch-drawing processes per variant")
    parser.add_argument("--out", type=Path, default=RESULTS / "demo-recipes.json")
    parser.add_argument("--save-dir", type=Path, default=None, help="keep each variant's trained model under DIR/VARIANT")
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="only rewrite the .md tables of these result JSONs")
    args = parser.parse_args()
    if args.report:
        for path in args.report:
            path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="demo-recipes-"))  # one file per variant, merged into --out
    parts = [work / f"{n}.json" for n in names]
    header = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs",
        "device": args.device, "eval_items": args.eval_items, "eval_split": "calibration seed range",
    }
    context = multiprocessing.get_context("spawn")
    pending = list(zip(names, parts))
    running: list[multiprocessing.Process] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, part = pending.pop(0)
            process = context.Process(target=run_variant, args=(name, args, part), name=name)
            process.start()
            running.append(process)
        time.sleep(5)
        _merge(parts, args.out, header)
        running = [p for p in running if p.is_alive()]
    _merge(parts, args.out, header)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
