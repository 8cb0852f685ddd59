"""Recovery of SmolLM2-135M pruned at 0.3: time per distillation step on this machine, and what it buys.

Pipeline (every stage through the library the CLI calls):
1. self-calibration: the dense model's greedy answers to the bundled word problems (calibration part),
   calibration and spot-check prompts disjoint (`mucrasp.calibration.self_calibration`);
2. `--method` (default mucrasp) scoring and pruning at `--ratio` on those calibration traces;
3. `recover` for `--steps` steps (full-parameter unless `--lora-rank`), timed per step;
4. the pruned and the recovered model against the dense one on the held-out spot-check
   traces: teacher-forced CoT KL against the dense model, side by side in one run.

    flock -s /tmp/mucrasp-heavy.lock .venv/bin/python bench/recovery_smollm.py --steps 20 \
        --out bench/results/recovery-smollm

The spot-check prompts are not a test split: they come from the word problems' calibration part (held
out from the calibration traces by the seeded split), so nothing here tunes on the test part.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--method", default="mucrasp", help="scoring method of the pruning stage")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--calib-samples", type=int, default=None, help="self-calibration prompts; default: its own")
    parser.add_argument("--spot-check", type=int, default=None, help="held-out prompts; default: self-calibration's")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="trace length; default: self-calibration's")
    parser.add_argument("--work", default="build/bench/recovery-smollm")
    parser.add_argument("--out", default="bench/results/recovery-smollm")
    args = parser.parse_args()

    from mucrasp.calibration import PivotConfig, build_batches, load_processor, load_records
    from mucrasp.calibration.self_calibration import SelfCalibrationConfig, self_calibrate
    from mucrasp.checkpoint import load_pruned
    from mucrasp.models.smollm2 import ensure_smollm2_checkpoint
    from mucrasp.pruning import PruneConfig, prune
    from mucrasp.recovery import RecoverConfig, RecoverySettings, mean_distillation_loss, recover
    from mucrasp.validation import field_default

    def log(description: str, done: int, total: int) -> None:
        print(f"  {description}: {done}/{total}", flush=True)

    work = Path(args.work)
    timings = {}
    dense = ensure_smollm2_checkpoint()
    start = time.perf_counter()
    sizes = {"samples": args.calib_samples, "spot_check": args.spot_check, "max_new_tokens": args.max_new_tokens}
    made = self_calibrate(
        dense,
        cache_dir=work / "cache",
        settings=SelfCalibrationConfig(**{k: v for k, v in sizes.items() if v is not None}),
        progress=log,
    )
    timings["self_calibration_s"] = time.perf_counter() - start
    print(made.describe(), flush=True)

    pruned = work / f"{args.method}-{args.ratio:g}"
    start = time.perf_counter()
    prune(
        PruneConfig(
            model=dense, out=pruned, ratio=args.ratio, method=args.method, calibration=made.calibration, overwrite=True
        ),
        progress=log,
    )
    timings["score_and_prune_s"] = time.perf_counter() - start

    recovered = work / f"{args.method}-{args.ratio:g}-recovered"
    settings = {"steps": args.steps, "lora_rank": args.lora_rank}
    if args.lr is not None:
        settings["lr"] = args.lr
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    start = time.perf_counter()
    report = recover(
        RecoverConfig(
            pruned=pruned, dense=dense, out=recovered, calibration=made.calibration, overwrite=True, **settings
        ),
        progress=lambda d, n, t: None,
        on_loss=lambda step, loss: print(f"  step {step}: loss {loss:.4f}", flush=True),
    )
    timings["recover_total_s"] = time.perf_counter() - start
    r = report.result

    # Held-out: teacher-forced KL(dense || model) on the spot-check traces (generation-free, so cheap here;
    # agreement of generated answers is `mucrasp-deploy eval`'s and is not measured by this script).
    teacher = load_pruned(dense)
    spot = build_batches(
        load_records(made.spot_check), load_processor(dense, False), teacher.config, PivotConfig(), vision=False
    )
    quality = {}
    for name, model in (("pruned", pruned), ("recovered", recovered)):
        quality[name] = {"cot_kl": mean_distillation_loss(load_pruned(model), teacher, spot), "items": len(spot)}
        print(name, quality[name], flush=True)

    batch = settings.get("batch_size", field_default(RecoverySettings, "batch_size"))
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU only (torch fp32)",
        "model": "SmolLM2-135M-Instruct",
        "ratio": args.ratio,
        "method": args.method,
        "self_calibration": made.info,
        "recovery": {k: v for k, v in report.manifest["recovery"].items() if k != "earlier"},
        "seconds_per_step": r.seconds_per_step,
        "samples_per_step": batch,
        "steps_in_20_min": int(20 * 60 // r.seconds_per_step),
        "timings": timings,
        "spot_check_quality": quality,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    rows = "\n".join(f"| {name} | {q['cot_kl']:.4f} |" for name, q in quality.items())
    out.with_suffix(".md").write_text(
        f"# Recovery of SmolLM2-135M pruned by {args.method} at {args.ratio:g}\n\n"
        f"{payload['date']}, {payload['machine']}\n\n"
        f"`{' '.join(['bench/recovery_smollm.py', *sys.argv[1:]])}`\n\n"
        f"- calibration: {made.info['calibration_samples']} self-calibration traces (up to "
        f"{made.info['max_new_tokens']} tokens), spot-check {made.info['spot_check_samples']} disjoint prompts\n"
        f"- {report.manifest['recovery']['training']}, {args.steps} steps of {batch} samples, "
        f"lr {report.manifest['recovery']['lr']}, T {report.manifest['recovery']['temperature']}\n"
        f"- **{r.seconds_per_step:.2f} s per step**: {payload['steps_in_20_min']} steps fit in 20 minutes\n"
        f"- distillation loss (train batches): step 1 {r.losses[0]:.4f}, step {len(r.losses)} {r.losses[-1]:.4f}\n"
        f"- self-calibration {timings['self_calibration_s']:.0f} s, "
        f"scoring+pruning {timings['score_and_prune_s']:.0f} s\n\n"
        f"Held-out spot-check traces ({len(spot)}): teacher-forced KL(dense || model) per response token:\n\n"
        "| model | CoT KL |\n|---|---|\n" + rows + "\n"
    )
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
