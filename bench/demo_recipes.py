"""Compare training recipes for the demo VLM: per-task accuracy as training goes on.

    .venv/bin/python bench/demo_recipes.py --variants default,uniform-mix [--device cuda] [--steps 4000]
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
# Each undoes one choice of the committed generator. The runs in bench/results/demo-recipes/ that
# led to those choices used the patches of commit c260329 on the generator as it was then
# (`git show c260329:bench/demo_recipes.py`).


def _patch_plain_floor(scenes) -> None:
    """A white floor: no column shading."""
    scenes.COLUMN_SHADES = (255,) * len(scenes.COLUMN_SHADES)


def _patch_column_first_scan(scenes) -> None:
    """left_or_right scans as 'column 1 red, ...' and then looks each colour's column up backwards."""
    committed = scenes.TASKS["left_or_right"]

    def left_or_right(rng):
        scene = committed(rng)
        f = scene.facts
        col_a, col_b = int(f["a_x"] // scenes.COLUMN_WIDTH) + 1, int(f["b_x"] // scenes.COLUMN_WIDTH) + 1
        held = {col_a: f["a_color"], col_b: f["b_color"]}
        scan = ", ".join(f"column {c} {held.get(c, 'empty')}" for c in range(1, 5))
        scene.response = (
            f"Step 1: I look at each column: {scan}. "
            f"Step 2: {f['a_color']} is in column {col_a} and {f['b_color']} is in column {col_b}. "
            f"Step 3: {scene.response.split(' Step 3: ', 1)[1]}"
        )
        return scene

    scenes.check_answer = lambda scene: None  # the committed check expects the committed wording
    scenes.TASKS["left_or_right"] = left_or_right


SCENE_PATCHES = {"plain-floor": _patch_plain_floor, "column-first-scan": _patch_column_first_scan}


# --- variants -----------------------------------------------------------------------------------

VARIANTS: dict[str, dict] = {
    "default": {},
    "uniform-mix": {"train": {"task_weights": None}},
    "plain-floor": {"scenes": ["plain-floor"]},
    "column-first-scan": {"scenes": ["column-first-scan"]},
    # M-RoPE with the width axis on 14 of the 16 rotary pairs: 0.56 .. 0.013 rad per column.
    "wide-positions": {"architecture": {"mrope_section": (1, 1, 14), "rope_theta": 100.0}},
}


def run_variant(name: str, args: argparse.Namespace, out_file: Path) -> None:
    import torch

    import mucrasp  # noqa: F401  (CPU-torch workarounds first)
    from mucrasp.demo import scenes
    from mucrasp.demo.dataset import split_seeds
    from mucrasp.demo.model_config import DemoArchitecture
    from mucrasp.demo.processor import build_processor
    from mucrasp.demo.train import TrainConfig, learning_curve_point, new_demo_model, train_steps

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
        point = learning_curve_point(model, processor, eval_scenes, done, time.perf_counter() - started, batch_size=100)
        record["evaluations"].append({**point, "loss": round(recent_loss, 4), "accuracy": round(point["accuracy"], 3)})
        out_file.write_text(json.dumps(record, indent=2))
        print(f"{name} step {done} acc {point['accuracy']:.3f} {point['tasks']}", flush=True)
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
            lines.append(
                f"| {run['variant']} | {e['step']} | {e['seconds']:.0f} | {e['loss']:.4f} | "
                f"{e['accuracy']:.3f} | {cells} |"
            )
    return "\n".join(lines) + "\n"


PLOTTED = ("accuracy", "count_by_color", "compare_shapes", "left_or_right")


def plot(results: dict, path: Path) -> None:
    """Accuracy against training step, per variant: overall and for the three slow task families."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.4), sharey=True)
    for run in results["runs"]:
        steps = [e["step"] for e in run["evaluations"]]
        for ax, key in zip(axes, PLOTTED):
            values = [e["accuracy"] if key == "accuracy" else e["tasks"].get(key, 0.0) for e in run["evaluations"]]
            ax.plot(steps, values, "o-", label=run["variant"])
    for ax, key in zip(axes, PLOTTED):
        ax.set(title=key, xlabel="training step", ylim=(0, 1.02))
        ax.axhline(0.9, color="k", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact-answer accuracy")
    axes[-1].legend(fontsize=7)
    fig.suptitle(
        f"{results['date']}, {results['device']}: {results['eval_items']} items from the {results['eval_split']}",
        fontsize=9,
    )
    fig.tight_layout()
    from mucrasp.atomic_io import write_figure_atomic

    write_figure_atomic(path, fig, dpi=110)
    plt.close(fig)


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
    parser.add_argument(
        "--save-dir", type=Path, default=None, help="keep each variant's trained model under DIR/VARIANT"
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="only redraw the .md tables and .png plots of these result JSONs",
    )
    args = parser.parse_args()
    if args.report:
        from mucrasp.atomic_io import write_text_atomic

        for path in args.report:
            results = json.loads(path.read_text())
            write_text_atomic(path.with_suffix(".md"), markdown(results))
            plot(results, path.with_suffix(".png"))
        return
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="demo-recipes-"))  # one file per variant, merged into --out
    parts = [work / f"{n}.json" for n in names]
    header = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs",
        "device": args.device,
        "eval_items": args.eval_items,
        "eval_split": "calibration seed range",
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
    plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
    print(f"wrote {args.out} (and .md, .png)")


if __name__ == "__main__":
    main()
