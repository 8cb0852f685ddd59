"""Train the demo VLM from scratch on streamed synthetic scenes (CPU: about a minute per 100 steps on 2 cores).

`make demo-model` runs this module. Everything is seeded; the settings that matter (learning rate,
warm-up, steps, architecture) are the defaults of `TrainConfig` and are recorded in
`training.json` beside the weights, with the wall time and the accuracy measured at the end.
`bench/demo_recipes.py` drives `train_steps` with other settings to compare recipes.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.progress import Progress

from mucrasp.atomic_io import atomic_directory
from mucrasp.demo.dataset import split_seeds
from mucrasp.demo.evaluate_demo import per_task_results
from mucrasp.demo.model_config import DemoArchitecture, demo_config
from mucrasp.demo.processor import build_processor, special_token_ids
from mucrasp.demo.scenes import make_scene
from mucrasp.demo.vl_inputs import training_inputs

# Measured with bench/demo_recipes.py: balance, ramp and stacks are learned within a few hundred
# steps, the tally and column-scan tasks take a few thousand, so training draws those more often.
HARD_TASK_WEIGHTS = {"count_by_color": 3.0, "compare_shapes": 3.0, "left_or_right": 4.0}


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 16
    learning_rate: float = 3e-4  # 1e-3 failed to learn to count in the design notes' trial
    warmup_steps: int = 50
    min_lr_fraction: float = 0.1  # cosine decay ends here
    weight_decay: float = 0.01
    seed: int = 0
    eval_items: int = 200  # fresh items (from the calibration seed range) for the checks
    eval_every: int = 1000  # steps between per-task checks recorded in training.json (0: only at the end)
    threads: int = 2
    device: str = "cpu"
    # Batches drawn in a worker process; 0 draws them in the training loop, which is what the
    # committed model used (on 2 cores a worker would only take a core from the matrix products).
    data_workers: int = 0
    # Relative weights of the task families in the training stream (None: as `make_scene` draws them).
    task_weights: dict[str, float] | None = field(default_factory=lambda: dict(HARD_TASK_WEIGHTS))
    vision_lr_scale: float = 1.0  # the vision tower's learning rate relative to the language model's
    architecture: DemoArchitecture = field(default_factory=DemoArchitecture)


def _learning_rate(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.learning_rate * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cosine)


def new_demo_model(processor: Any, architecture: DemoArchitecture):
    from transformers import Qwen2_5_VLForConditionalGeneration

    special = special_token_ids(processor.tokenizer)
    vocab = math.ceil(len(processor.tokenizer) / 64) * 64
    return Qwen2_5_VLForConditionalGeneration(demo_config(special, vocab, architecture)).float()


class _TrainBatches(torch.utils.data.IterableDataset):
    """Batches of fresh train-split scenes, in seed order."""

    def __init__(self, processor: Any, batch_size: int, task_weights: dict[str, float] | None):
        self.processor, self.batch_size, self.task_weights = processor, batch_size, task_weights

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        seeds = iter(split_seeds("train", 1_000_000))
        while True:
            scenes = [make_scene(next(seeds), self.task_weights) for _ in range(self.batch_size)]
            yield training_inputs(
                self.processor, [s.image for s in scenes], [s.question for s in scenes], [s.response for s in scenes]
            )


def train_steps(
    model, processor: Any, config: TrainConfig, on_step: Callable[[int, float], bool] | None = None
) -> list[float]:
    """Train `model` in place for `config.steps` steps; returns the losses.

    `on_step(step, recent_loss)` runs after every step; returning True stops training early.
    """
    model.to(config.device).train()
    vision = [p for name, p in model.named_parameters() if ".visual." in f".{name}"]
    language = [p for name, p in model.named_parameters() if ".visual." not in f".{name}"]
    optimizer = torch.optim.AdamW(
        [{"params": language, "lr_scale": 1.0}, {"params": vision, "lr_scale": config.vision_lr_scale}],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    batches = torch.utils.data.DataLoader(
        _TrainBatches(processor, config.batch_size, config.task_weights),
        batch_size=None,
        num_workers=config.data_workers,
        prefetch_factor=4 if config.data_workers else None,
        # Forked workers draw scenes with the generator exactly as this process has it; spawned ones
        # would re-import it, silently dropping any patch a recipe experiment applied.
        multiprocessing_context="fork" if config.data_workers else None,
    )
    losses: list[float] = []
    for step, batch in zip(range(config.steps), batches):
        batch = {name: value.to(config.device) for name, value in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config) * group["lr_scale"]
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None and on_step(step, sum(losses[-20:]) / len(losses[-20:])):
            break
    model.eval()
    return losses


def learning_curve_point(model, processor: Any, scenes: list, step: int, seconds: float, batch_size: int = 25) -> dict:
    """Overall and per-task accuracy at one step of training; leaves the model in training mode."""
    tasks = per_task_results(model.eval(), processor, scenes, batch_size)
    model.train()
    correct = sum(r["correct"] for r in tasks.values())
    return {
        "step": step,
        "seconds": round(seconds, 1),
        "accuracy": correct / len(scenes),
        "tasks": {t: round(r["correct"] / r["items"], 3) for t, r in tasks.items()},
    }


def train(out_dir: Path, config: TrainConfig = TrainConfig()) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    processor = build_processor()
    model = new_demo_model(processor, config.architecture)
    # Checks use calibration-range seeds, never the test split.
    check_scenes = [make_scene(s) for s in split_seeds("calibration", config.eval_items)]
    curve: list[dict] = []
    started = time.perf_counter()
    interactive = sys.stderr.isatty()

    def check(step: int) -> dict:
        curve.append(learning_curve_point(model, processor, check_scenes, step, time.perf_counter() - started))
        return curve[-1]

    # Rich holds redirected output until the bar stops; in a log file, plain lines show progress.
    with Progress(disable=not interactive, redirect_stdout=False) as bar:
        task = bar.add_task("training demo VLM", total=config.steps)

        def say(line: str) -> None:
            if interactive:
                bar.console.print(line)
            else:
                print(line, flush=True)

        def report(step: int, recent: float) -> bool:
            done = step + 1
            bar.update(task, advance=1, description=f"training demo VLM (loss {recent:.3f})")
            if not interactive and done % 100 == 0:
                say(f"step {done}/{config.steps} loss {recent:.4f} {time.perf_counter() - started:.0f}s")
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                point = check(done)
                say(f"step {done}: accuracy {point['accuracy']:.3f} {point['tasks']}")
            return False

        losses = train_steps(model, processor, config, report)
    train_seconds = time.perf_counter() - started  # includes the intermediate checks

    final = check(len(losses))
    record = {
        "config": asdict(config),
        "train_wall_seconds": round(train_seconds, 1),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "accuracy_on_calibration_items": final["accuracy"],
        "per_task_accuracy": final["tasks"],
        "learning_curve": curve,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    with atomic_directory(Path(out_dir), overwrite=True) as staging:
        model.cpu().to(torch.bfloat16).save_pretrained(staging)  # bf16 keeps the weights in git small
        processor.save_pretrained(staging)
        (staging / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train the demo VLM on synthetic visual-reasoning scenes.")
    parser.add_argument("--out", default="models/demo-vlm")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument(
        "--eval-every",
        type=int,
        default=TrainConfig.eval_every,
        help="steps between per-task checks (0: only at the end)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=TrainConfig.threads,
        help="torch threads; 1 is steadier when other jobs share the cores",
    )
    args = parser.parse_args()
    print(
        json.dumps(
            train(Path(args.out), TrainConfig(steps=args.steps, threads=args.threads, eval_every=args.eval_every)),
            indent=2,
        )
    )
