"""What each ONNX weight format costs a pruned SmolLM2-135M: CoT KL, agreement and decode speed, one run.

    .venv/bin/python bench/onnx_weights_quality.py --ratio 0.3 --calib-samples 64 --validation-items 32 \
        --out bench/results/onnx-weights-smollm

1. `mucrasp-deploy prune` (the library call) at `--ratio` with `--method`, calibrated on the first
   `--calib-samples` of SmolLM2's calibration traces, reconstruction on (the default with calibration).
2. `export onnx --weights fp32`, then copies of that export with the decoder quantized by ONNX
   Runtime's tools (`mucrasp.export.onnx_quantize.quantize_graph`): int8 (dynamic, per channel), and
   int4 (MatMulNBits) at each `--int4-accuracy-levels` (4: int8 activations inside the kernel, the
   export's default and its fast x86 path; 1: fp32 activations).
3. Every variant is measured by `mucrasp.evaluation.compare` against the dense torch model on the same
   validation traces (the second half of the calibration file, never calibrated on; the test part is
   not read), plus greedy decode tokens/s (`OnnxGenerator`, batch 1, `--speed-tokens` new tokens per
   prompt, the median of `--rounds` interleaved rounds).

This is where the int4 export's accuracy level is chosen: on validation. Writes `<out>.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_figure_atomic, write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import load_processor
from mucrasp.calibration.records import load_records
from mucrasp.checkpoint import read_json_file
from mucrasp.evaluation.evaluate import EvalConfig, compare, dense_reference
from mucrasp.evaluation.generation import text_prompt_inputs
from mucrasp.export.onnx_causal_lm import OnnxCausalLM
from mucrasp.export.onnx_export import export_onnx
from mucrasp.export.onnx_manifest import MANIFEST_NAME
from mucrasp.export.onnx_quantize import INT4_ACCURACY_LEVEL, quantize_graph
from mucrasp.model_loading import load_model
from mucrasp.models.smollm2 import ensure_smollm2_checkpoint
from mucrasp.pruning import PruneConfig, prune

sys.path.insert(0, str(Path(__file__).parent))
from quality import smollm_validation_split  # noqa: E402  (the same validation split as the quality bench)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def quantized_copy(fp32_export: Path, out: Path, weights: str, accuracy_level: int = INT4_ACCURACY_LEVEL) -> Path:
    """A copy of an fp32 export with its decoder quantized in place; the manifest says what was done."""
    shutil.copytree(fp32_export, out)
    record = quantize_graph(out / "decoder.onnx", weights, int4_accuracy_level=accuracy_level)
    manifest = read_json_file(out / MANIFEST_NAME)
    manifest["weights"] = {"format": weights, "quantized_graphs": {"decoder": record}}
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return out


def decode_seconds(model: OnnxCausalLM, prompts: list[torch.Tensor], new_tokens: int) -> float:
    started = time.perf_counter()
    for ids in prompts:
        model.generator.generate(ids.numpy(), max_new_tokens=new_tokens, stop_at_eos=False)
    return time.perf_counter() - started


def markdown(payload: dict) -> str:
    lines = [
        f"# ONNX weight formats of SmolLM2-135M pruned at {payload['ratio']:g} ({payload['method']}), validation",
        "",
        f"{payload['date']}, {payload['machine']}; `{payload['command']}`",
        "",
        f"- pruning: {payload['method']} at {payload['ratio']:g} on {payload['calibration_samples']} calibration "
        "traces, with reconstruction; measured on "
        f"{payload['validation_items']} validation traces (the calibration file's second half)",
        f"- tokens/s: greedy decode in `OnnxGenerator`, batch 1, {payload['speed_tokens']} new tokens per prompt, "
        f"{payload['speed_prompts']} prompts, median of {payload['rounds']} interleaved rounds",
        "",
        "| weights | int4 accuracy level | CoT KL | KL / fp32's | agreement | agreement, answered (n) "
        "| tokens/s | speed / fp32's | decoder MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = payload["rows"][0]
    for r in payload["rows"]:
        answered = (
            f"{r['agreement_answered']:.3f} ({r['answered_items']})" if r.get("agreement_answered") is not None else "–"
        )
        lines.append(
            f"| {r['weights']} | {r['accuracy_level'] if r['accuracy_level'] is not None else '–'} | "
            f"{r['cot_kl']:.4f} | {r['cot_kl'] / base['cot_kl']:.2f}× | {r['agreement']:.3f} | {answered} | "
            f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}× | {r['decoder_mb']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(payload["rows"]):
        ax.scatter(r["tokens_per_s"], r["cot_kl"], s=60, color=f"C{i}", label=r["label"])
    ax.set(
        title=f"SmolLM2-135M at {payload['ratio']:g}: ONNX weight formats (validation)",
        xlabel="decode tokens/s (batch 1)",
        ylabel="CoT KL(dense || export), nats/token",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_figure_atomic(path, fig, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--method", default="mucrasp")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--validation-items", type=int, default=32)
    parser.add_argument("--int4-accuracy-levels", default=f"{INT4_ACCURACY_LEVEL},1")
    parser.add_argument("--speed-prompts", type=int, default=4)
    parser.add_argument("--speed-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smollm-traces", default="build/data/smollm")
    parser.add_argument("--work", default="build/bench-onnx-weights", help="pruned checkpoint and exports")
    parser.add_argument("--out", default="bench/results/onnx-weights-smollm")
    args = parser.parse_args(argv)

    dense_dir = ensure_smollm2_checkpoint()
    traces = Path(args.smollm_traces)
    if not (traces / "calibration.jsonl").is_file():
        from mucrasp.demo.text_traces import write_text_traces

        write_text_traces(dense_dir, traces)
    validation = smollm_validation_split(traces / "calibration.jsonl", args.calib_samples)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    calibration = work / "calibration.jsonl"
    lines = (traces / "calibration.jsonl").read_text(encoding="utf-8").splitlines()[: args.calib_samples]
    write_text_atomic(calibration, "\n".join(lines) + "\n")

    started = time.perf_counter()
    pruned = prune(
        PruneConfig(
            model=dense_dir,
            out=work / "pruned",
            ratio=args.ratio,
            method=args.method,
            calibration=calibration,
            overwrite=True,
        )
    ).out
    log(f"pruned in {time.perf_counter() - started:.0f}s")
    fp32 = export_onnx(pruned, work / "onnx-fp32", overwrite=True).out
    levels = [int(v) for v in args.int4_accuracy_levels.split(",") if v]
    variants = [("fp32", None, fp32)]
    with tempfile.TemporaryDirectory(prefix="onnx-weights-", dir=work) as scratch:
        variants.append(("int8", None, quantized_copy(fp32, Path(scratch) / "int8", "int8")))
        for level in levels:
            variants.append(("int4", level, quantized_copy(fp32, Path(scratch) / f"int4-{level}", "int4", level)))
        log(f"exported {len(variants)} variants")

        dense = load_model(dense_dir)
        processor = load_processor(dense_dir, False)
        config = EvalConfig(pruned=pruned, dense=dense_dir, data=validation, limit=args.validation_items)
        reference = dense_reference(
            dense.model, processor, load_records(validation, args.validation_items), False, config
        )
        models = [OnnxCausalLM(folder, dense.model.config) for _, _, folder in variants]
        rows = []
        for (weights, level, folder), model in zip(variants, models):
            metrics = compare(dense.model, model, processor, reference, False, config)
            decoder_bytes = sum(f.stat().st_size for f in folder.glob("decoder.onnx*"))
            rows.append(
                {
                    "label": weights if level is None else f"{weights} (accuracy level {level})",
                    "weights": weights,
                    "accuracy_level": level,
                    "decoder_mb": decoder_bytes / 1e6,
                    **metrics,
                }
            )
            log(f"{rows[-1]['label']}: KL {metrics['cot_kl']:.4f}, agreement {metrics['agreement']:.3f}")

        prompts = [
            text_prompt_inputs(processor, [r.prompt])["input_ids"][0] for r in reference.records[: args.speed_prompts]
        ]
        seconds: dict[int, list[float]] = {i: [] for i in range(len(rows))}
        for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits every variant alike
            for i, model in enumerate(models):
                seconds[i].append(decode_seconds(model, prompts, args.speed_tokens))
        for i, row in enumerate(rows):
            row["tokens_per_s"] = len(prompts) * args.speed_tokens / statistics.median(seconds[i])

    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": " ".join(["bench/onnx_weights_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "method": args.method,
        "ratio": args.ratio,
        "calibration_samples": args.calib_samples,
        "validation_items": len(reference.records),
        "speed_prompts": len(prompts),
        "speed_tokens": args.speed_tokens,
        "rounds": args.rounds,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), payload)
    write_text_atomic(out.with_suffix(".md"), markdown(payload))
    plot(payload, out.with_suffix(".png"))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
