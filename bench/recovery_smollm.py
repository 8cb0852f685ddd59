"""Recovery of SmolLM2-135M after pruning: held-out CoT KL against distillation steps, per learning rate and traces.

    .venv/bin/python bench/recovery_smollm.py --ratio 0.3 --calib-samples 64 --lrs 1e-5,3e-5,1e-4 \
        --steps 64 --eval-every 16 --out bench/results/recovery-smollm

Pipeline, on the same traces and split as `bench/quality.py --eval-split validation`:
1. calibration: the first `--calib-samples` of SmolLM2's calibration traces (the dense model's greedy
   answers, `build/data/smollm/calibration.jsonl`); validation: the second half of that file, which
   never calibrates. The test part is not read.
2. `--method` scores and prunes at `--ratio`, then `--reconstruct` (on by default) refits o_proj and
   down_proj, all in memory (`mucrasp.pruning.prune_in_memory`).
3. For each learning rate and each set of traces to distil on (`--recover-on`: the calibration
   traces, which reconstruction has already fitted, or the recovery pool, 256 other prompts disjoint
   from calibration, validation and test), a copy of that pruned model is distilled from the dense
   one (`mucrasp.recovery.distil`, the loop `mucrasp-deploy recover` runs), and every `--eval-every`
   steps its teacher-forced CoT KL(dense || model) on the validation traces is measured: a learning
   curve per run, side by side in one run, plus the seconds per step.

This is where recovery's defaults (steps, lr) are chosen: on validation, never on the test part.
Writes `<out>.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_figure_atomic, write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import CalibrationSource
from mucrasp.calibration.pivots import PivotConfig
from mucrasp.model_loading import load_model
from mucrasp.models.smollm2 import ensure_smollm2_checkpoint
from mucrasp.pruning import prune_in_memory
from mucrasp.recovery import RecoverySettings, distil, mean_distillation_loss
from mucrasp.validation import field_default

sys.path.insert(0, str(Path(__file__).parent))
from quality import smollm_validation_split  # noqa: E402  (the same validation split as the quality bench)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def learning_curve(pruned, dense, train, validation, settings: RecoverySettings, every: int, traces: str) -> dict:
    """Distil a copy of `pruned`; the validation KL at step 0 and every `every` steps, and the time per step."""
    student = copy.deepcopy(pruned)
    curve = [(0, mean_distillation_loss(student, dense, validation))]
    evaluation_seconds = 0.0

    def on_loss(step: int, loss: float) -> None:
        nonlocal evaluation_seconds
        if step % every == 0 or step == settings.steps:
            started = time.perf_counter()
            curve.append((step, mean_distillation_loss(student, dense, validation)))
            evaluation_seconds += time.perf_counter() - started
            log(f"  lr {settings.lr:g} step {step}: train loss {loss:.4f}, validation KL {curve[-1][1]:.4f}")

    started = time.perf_counter()
    result = distil(student, dense, train, settings, on_loss=on_loss)
    training_seconds = time.perf_counter() - started - evaluation_seconds
    return {
        "lr": settings.lr,
        "traces": f"{traces} ({len(train)})",
        "curve": [{"step": s, "validation_kl": round(kl, 5)} for s, kl in curve],
        "train_losses": [round(v, 5) for v in result.losses],
        "seconds_per_step": round(training_seconds / settings.steps, 3),
    }


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(payload["runs"]):
        steps = [p["step"] for p in run["curve"]]
        label = f"lr {run['lr']:g}, on {run.get('traces', 'calibration')}"
        ax.plot(steps, [p["validation_kl"] for p in run["curve"]], marker="o", color=f"C{i}", label=label)
    ax.axhline(payload["oneshot_validation_kl"], color="grey", linestyle=":", label="one-shot (no reconstruction)")
    ax.set(
        title=f"SmolLM2-135M, {payload['method']} at {payload['ratio']:g}: recovery on validation traces",
        xlabel=f"distillation steps ({payload['batch_size']} traces each)",
        ylabel="CoT KL(dense || model), nats/token",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_figure_atomic(path, fig, dpi=110)


def markdown(payload: dict) -> str:
    steps = [p["step"] for p in payload["runs"][0]["curve"]]
    lines = [
        f"# Recovery of SmolLM2-135M: {payload['method']} at {payload['ratio']:g}, validation traces",
        "",
        f"{payload['date']}, {payload['machine']}; `{payload['command']}`",
        "",
        f"- calibration: the first {payload['calibration_samples']} calibration traces; validation: the "
        f"{payload['validation_samples']} traces of the calibration file's second half (never calibrated on)",
        f"- pruning: {payload['method']} at {payload['ratio']:g}, "
        + ("then reconstruction" if payload["reconstruct"] else "no reconstruction")
        + f"; scoring+pruning {payload['prune_seconds']:.0f} s",
        f"- recovery: full-parameter distillation (T {payload['temperature']:g}), {payload['batch_size']} "
        "traces per step; validation KL of the one-shot model (no reconstruction) "
        f"{payload['oneshot_validation_kl']:.4f}",
        "",
        "Validation CoT KL(dense || model) per response token, by distillation step:",
        "",
        "| lr | distilled on (traces) | s/step | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for run in payload["runs"]:
        values = " | ".join(f"{p['validation_kl']:.4f}" for p in run["curve"])
        traces = run.get("traces", "calibration")
        lines.append(f"| {run['lr']:g} | {traces} | {run['seconds_per_step']:.2f} | {values} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--method", default="mucrasp")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--validation-items", type=int, default=None, help="first N validation traces (default all)")
    parser.add_argument("--no-reconstruct", action="store_true")
    parser.add_argument("--lrs", default="1e-5,3e-5,1e-4")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=16)
    parser.add_argument(
        "--recover-on",
        default="calibration",
        help="traces to distil on, comma list: calibration (the calibration traces), recovery (the recovery pool)",
    )
    parser.add_argument("--batch-size", type=int, default=field_default(RecoverySettings, "batch_size"))
    parser.add_argument("--smollm-traces", default="build/data/smollm")
    parser.add_argument("--out", default="bench/results/recovery-smollm")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model_dir = ensure_smollm2_checkpoint()
    traces = Path(args.smollm_traces)
    if not (traces / "calibration.jsonl").is_file():
        from mucrasp.demo.text_traces import write_text_traces

        write_text_traces(model_dir, traces)
    validation_file = smollm_validation_split(traces / "calibration.jsonl", args.calib_samples)
    loaded = load_model(model_dir)
    dense, adapter = loaded.model, loaded.adapter
    calibration = CalibrationSource(traces / "calibration.jsonl", model_dir, args.calib_samples)
    train = calibration.batches(dense.config, PivotConfig(), vision=False)
    validation = CalibrationSource(validation_file, model_dir, args.validation_items).batches(
        dense.config, PivotConfig(), vision=False
    )

    oneshot = copy.deepcopy(dense)
    prune_in_memory(oneshot, adapter, args.ratio, method=args.method, calibration=calibration)
    oneshot_kl = mean_distillation_loss(oneshot, dense, validation)
    del oneshot
    log(f"one-shot {args.method} {args.ratio}: validation KL {oneshot_kl:.4f}")
    pruned = copy.deepcopy(dense)
    started = time.perf_counter()
    prune_in_memory(
        pruned, adapter, args.ratio, method=args.method, calibration=calibration, reconstruct=not args.no_reconstruct
    )
    prune_seconds = time.perf_counter() - started
    sources = {"calibration": train}
    if "recovery" in args.recover_on.split(","):
        if not (traces / "recovery.jsonl").is_file():
            from mucrasp.demo.text_traces import write_recovery_traces

            write_recovery_traces(model_dir, traces)
        sources["recovery"] = CalibrationSource(traces / "recovery.jsonl", model_dir).batches(
            dense.config, PivotConfig(), vision=False
        )
    runs = []
    for lr in [float(v) for v in args.lrs.split(",") if v]:
        for name in [v for v in args.recover_on.split(",") if v]:
            settings = RecoverySettings(steps=args.steps, lr=lr, batch_size=args.batch_size)
            runs.append(learning_curve(pruned, dense, sources[name], validation, settings, args.eval_every, name))
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32",
        "command": " ".join(["bench/recovery_smollm.py", *sys.argv[1:]]),
        "method": args.method,
        "ratio": args.ratio,
        "reconstruct": not args.no_reconstruct,
        "calibration_samples": len(train),
        "validation_samples": len(validation),
        "batch_size": args.batch_size,
        "temperature": field_default(RecoverySettings, "temperature"),
        "oneshot_validation_kl": round(oneshot_kl, 5),
        "prune_seconds": round(prune_seconds, 1),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), payload)
    write_text_atomic(out.with_suffix(".md"), markdown(payload))
    plot(payload, out.with_suffix(".png"))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
