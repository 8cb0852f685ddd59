"""Serving benchmark: dense and pruned models on vLLM (CPU build) and ONNX Runtime, side by side,
at each weight format the export writes.

    python bench/serve.py                       # demo VLM dense/0.3/0.5 and SmolLM2-135M dense/0.3/0.5
    python bench/serve.py --models smollm --ratios 0.5 --backends vllm onnx
    python bench/serve.py --onnx-weights fp32 int8 int4 --vllm-weights bf16 w8a8   # the default formats

Weight formats: `export onnx --weights` (fp32 | int8 | int4 by default) and `export vllm --weights`
(bf16 | w8a8; on this CPU vLLM runs bf16 exports in fp32, the smoke test's `--dtype auto`). Every row's
CoT KL is against the dense model (teacher-forced on the spot-check set's dense answers; ONNX Runtime
and transformers rows: vLLM exposes no full logits). The ideal speedup of a row is the ratio of the
bytes one decode step reads, dense unquantized over the row's, at the bits of its format
(`mucrasp.planning.weight_formats`): ONNX Runtime's quantizers take every MatMul with a constant weight,
the LM head included; vLLM's compressed-tensors exports keep the LM head unquantized.

Each model is pruned (magnitude by default: no calibration data needed, and the serving speed of a
width does not depend on which channels were kept; `--method mucrasp` etc. calibrate on the dense model's
own traces, as the chain does without --calib), exported for each backend, and smoke-tested with
`mucrasp.serve.run_smoke` at the same load. SmolLM2's spot-check is the self-calibration's held-out
part. The ideal speedup of a pruned model is the ratio of the parameters one decode step reads:
decoder layers plus the LM head (the vision tower runs once per image, not per token). Writes
serve.{md,json,png} under --out (bench/results by default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
from pathlib import Path

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_figure_atomic, write_json_atomic, write_text_atomic
from mucrasp.calibration.self_calibration import SelfCalibrationConfig
from mucrasp.checkpoint import MANIFEST_NAME, load_pruned
from mucrasp.devices import SHORT_NAMES
from mucrasp.model_loading import read_model_config
from mucrasp.params import count_parameters
from mucrasp.serve import SmokeConfig, run_smoke

ROOT = Path(__file__).resolve().parents[1]


def model_source(name: str) -> Path:
    if name == "demo":
        from mucrasp.demo.bundled import bundled_demo_model

        return bundled_demo_model()
    from mucrasp.models.smollm2 import ensure_smollm2_checkpoint

    return ensure_smollm2_checkpoint()


def decode_params(folder: Path) -> tuple[int, int]:
    """(decoder-layer parameters, LM-head parameters) one decode step reads (embedding rows are gathered)."""
    _, adapter = read_model_config(folder)
    model = load_pruned(folder)
    counts = count_parameters(model, adapter)
    return counts.decoder, model.get_output_embeddings().weight.numel()


UNQUANTIZED = {"onnx": "fp32", "vllm": "bf16", "transformers": "fp32"}


def decode_bytes(params: tuple[int, int], backend: str, weights: str, dtype: str = "fp32") -> float:
    """Bytes of weights one decode step reads at `weights`, the unquantized tensors at `dtype`."""
    from mucrasp.planning.profiles import DTYPE_BYTES
    from mucrasp.planning.weight_formats import get_format

    decoder, head = params
    fmt = get_format(weights)
    per_weight = fmt.bytes_per_weight if fmt.quantized else DTYPE_BYTES[dtype]
    head_bytes = per_weight if backend == "onnx" and fmt.quantized else DTYPE_BYTES[dtype]  # see the docstring
    return decoder * per_weight + head * head_bytes


def variant(source: Path, ratio: float, work: Path, method: str, calibration: Path | None, align: int) -> Path:
    """A pruned checkpoint folder (ratio 0: the dense model with a manifest, so it exports the same way)."""
    out = work / f"r{ratio:g}"
    if (out / MANIFEST_NAME).is_file():
        return out
    if ratio == 0:
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
        (out / MANIFEST_NAME).write_text(json.dumps({"ratio": 0.0, "method": None}))
        return out
    from mucrasp.pruning import PruneConfig, prune

    prune(
        PruneConfig(
            model=source, out=out, ratio=ratio, method=method, calibration=calibration, align=align, overwrite=True
        )
    )
    return out


def self_calibration(source: Path, work: Path):
    """The dense model's own traces, as the chain makes them with no --calib: the calibration set of the
    methods that need one, and (SmolLM2) the disjoint spot-check set."""
    from mucrasp.calibration.self_calibration import self_calibrate

    made = self_calibrate(source, cache_dir=work)  # into work/self-calibration/<key>
    print(f"[bench] {made.describe()}", flush=True)
    return made


def export(pruned: Path, backend: str, weights: str) -> Path:
    out = pruned.parent / f"{pruned.name}-{backend}-{weights}"
    if out.is_dir():
        return out
    if backend == "vllm":
        from mucrasp.export.vllm_checkpoint import export_vllm

        return export_vllm(pruned, out, weights=weights).out
    from mucrasp.export.onnx_export import export_onnx

    return export_onnx(pruned, out, weights=weights).out


def planner_vs_vllm(folder: Path, weights: str, reported: dict, kv_cache_gb: float, dtype: str) -> dict:
    """The planner's weight and KV-cache figures for an export (its own config: pruned widths, ratio 0 on
    it) at the dtype vLLM ran it in, next to what vLLM said it allocated. On this CPU vLLM sizes its KV
    cache from VLLM_CPU_KVCACHE_SPACE, so the KV comparison is tokens: that space / the planner's bytes per
    token."""
    from mucrasp.planning.memory_model import checkpoint_weight_bytes, kv_bytes_per_token
    from mucrasp.planning.model_shape import model_shape

    config, adapter = read_model_config(folder)
    shape = model_shape(config, adapter)
    quantized = weights if weights != UNQUANTIZED["vllm"] else None
    weights_gib = checkpoint_weight_bytes(folder, dtype, quantized) / 2**30
    kv_tokens = kv_cache_gb * 2**30 / kv_bytes_per_token(shape, 0.0, dtype)
    out = {"predicted_weights_gib": weights_gib, "predicted_kv_tokens": kv_tokens, **reported}

    def error(predicted, measured):
        return None if not measured else (predicted - measured) / measured

    out["weights_error"] = error(weights_gib, reported.get("weights_gib"))
    out["kv_tokens_error"] = error(kv_tokens, reported.get("kv_cache_tokens"))
    return out


def backend_formats(args) -> list[tuple[str, str]]:
    """(backend, weights) pairs of the run, unquantized first per backend (the speedups' reference)."""
    formats = {"onnx": args.onnx_weights, "vllm": args.vllm_weights, "transformers": ["fp32"]}
    return [(b, w) for b in args.backends for w in formats[b]]


def source_fingerprint(source: Path) -> dict:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(source.glob("*.safetensors"))}


def fresh_work_dir(work: Path, source: Path, method: str, align: int) -> None:
    """Reuse pruned/exported variants only if they were made from these weights by this method and alignment."""
    stamp = work / "source.json"
    expected = {"source": str(source), "weights": source_fingerprint(source), "method": method, "align": align}
    if work.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != expected):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, expected)


def bench(args) -> list[dict]:
    rows = []
    for name in args.models:
        source = model_source(name)
        work = Path(args.work) / name
        fresh_work_dir(work, source, args.method, args.align)
        from mucrasp.scoring import get_method
        from mucrasp.serve import write_spot_check

        needs_traces = name != "demo" or get_method(args.method).needs_calibration
        made = self_calibration(source, work) if needs_traces else None
        if name == "demo":
            from mucrasp.calibration.records import load_records
            from mucrasp.demo.bundled import ensure_demo_data

            test = ensure_demo_data(work / "data")["test"]
            spot = lambda folder: write_spot_check(folder, load_records(test, args.spot_check), "accuracy", str(test))  # noqa: E731
        else:
            from mucrasp.calibration.records import load_records

            records = load_records(made.spot_check, args.spot_check)
            spot = lambda folder: write_spot_check(  # noqa: E731
                folder, records, "agreement", "the dense model's greedy answers to held-out self-calibration prompts"
            )
        calibration = made.calibration if get_method(args.method).needs_calibration else None
        for ratio in [0.0, *args.ratios]:
            pruned = variant(source, ratio, work, args.method, calibration, args.align)
            params = decode_params(pruned)
            for backend, weights in backend_formats(args):
                folder = export(pruned, backend, weights)
                if not (folder / "spot_check.jsonl").is_file():
                    spot(folder)
                print(f"[bench] {name} ratio {ratio:g} on {backend} ({weights}) ...", flush=True)
                report = run_smoke(
                    SmokeConfig(
                        folder,
                        backend=backend,
                        requests=args.requests,
                        concurrency=args.concurrency,
                        max_tokens=args.max_tokens,
                        spot_check_limit=args.spot_check,
                        # the dense answers' own length: a longer run would add numbers after the answer
                        spot_check_max_tokens=SelfCalibrationConfig().max_new_tokens,
                        processor_dir=pruned,
                        max_model_len=args.max_model_len,
                        kv_cache_gb=args.kv_cache_gb,
                        dense=source,
                        report=Path(args.work) / f"{name}-r{ratio:g}-{backend}-{weights}.json",
                    )
                )
                t, m = report.data["throughput"], report.data["memory"]
                # fp32 on this CPU, except vLLM's int8 exports on an AMX host (bf16); the vLLM rows report theirs
                dtype = SHORT_NAMES.get(report.data["backend_details"].get("dtype"), "fp32")
                read = decode_bytes(params, backend, weights, dtype)
                rows.append(
                    {
                        "model": name,
                        "ratio": ratio,
                        "backend": backend,
                        "weights": weights,
                        "dtype": dtype,
                        "decode_params": sum(params),
                        "decode_bytes": read,
                        "cot_kl": report.data["cot_kl"],
                        "tokens_per_s": t["tokens_per_s"],
                        "decode_tokens_per_s_per_stream": t["decode_tokens_per_s_per_stream"],
                        "ttft_p50_s": t["ttft_p50_s"],
                        "peak_memory_gb": m["peak_gb"],
                        "spot_check": report.data["spot_check"].get("score"),
                    }
                )
                reported = report.data["backend_details"].get("vllm_reported")
                if backend == "vllm" and reported:
                    rows[-1]["planner"] = planner_vs_vllm(folder, weights, reported, args.kv_cache_gb, dtype)
    for row in rows:
        # both against the same backend's dense unquantized row
        dense = next(
            r
            for r in rows
            if (r["model"], r["backend"], r["ratio"], r["weights"])
            == (row["model"], row["backend"], 0.0, UNQUANTIZED[row["backend"]])
        )
        row["speedup"] = row["tokens_per_s"] / dense["tokens_per_s"]
        row["ideal_speedup"] = dense["decode_bytes"] / row["decode_bytes"]
        row["speedup_vs_ideal"] = row["speedup"] / row["ideal_speedup"]
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Serving benchmark, {meta['date']}, {meta['machine']}. Load: {meta['requests']} requests of "
        f"{meta['max_tokens']} output tokens, {meta['concurrency']} in flight on vLLM (batch 1 on ONNX Runtime).",
        "",
        "Speedup: against the same backend's dense unquantized row. Ideal: the ratio of weight bytes one decode "
        "step reads. CoT KL: nats per chain-of-thought token against the dense model (transformers), "
        "teacher-forced; '-' where the backend gives no logits (vLLM).",
        "",
        "| model | ratio | backend | weights | decode params (M) | decode MB | tokens/s | speedup | ideal | "
        "realised/ideal | TTFT p50 (s) | peak RSS (GB) | CoT KL | spot-check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spot = "-" if r.get("spot_check") is None else f"{r['spot_check']:.2f}"
        kl = "-" if r.get("cot_kl") is None else f"{r['cot_kl']:.2g}"
        weights = r.get("weights", UNQUANTIZED.get(r["backend"], "-"))
        if r.get("dtype") and r["dtype"] != UNQUANTIZED.get(r["backend"]):
            weights += f" ({r['dtype']})"  # what the unquantized tensors and activations ran in
        read = "-" if r.get("decode_bytes") is None else f"{r['decode_bytes'] / 1e6:.0f}"
        lines.append(
            f"| {r['model']} | {r['ratio']:g} | {r['backend']} | {weights} | {r['decode_params'] / 1e6:.1f} | "
            f"{read} | {r['tokens_per_s']:.1f} | "
            f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['speedup_vs_ideal']:.0%} | {r['ttft_p50_s']} | "
            f"{r['peak_memory_gb']:.2f} | {kl} | {spot} |"
        )
    planned = [r for r in rows if r.get("planner")]
    if planned:
        lines += [
            "",
            "Planner against vLLM's own figures, per served export; error = (planned - reported) / reported. "
            "KV: its log line `KV cache size: N tokens`; on CPU the cache is VLLM_CPU_KVCACHE_SPACE, so this "
            "compares the planner's bytes per token. Weights: `Model loading took X GiB`, a GPU runner's line; "
            "vLLM's CPU worker logs none ('-'), and its parameters do not hold the weights it repacks into "
            "oneDNN handles, so no CPU figure stands in for it.",
            "",
            "| model | ratio | weights | planned weights (GiB) | vLLM (GiB) | error | planned KV tokens | "
            "vLLM KV tokens | error |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def pct(x):
            return "-" if x is None else f"{x:+.1%}"

        for r in planned:
            p = r["planner"]
            lines.append(
                f"| {r['model']} | {r['ratio']:g} | {r['weights']} | {p['predicted_weights_gib']:.4f} | "
                f"{p['weights_gib'] if p['weights_gib'] is not None else '-'} | {pct(p['weights_error'])} | "
                f"{p['predicted_kv_tokens']:,.0f} | {p['kv_cache_tokens'] if p['kv_cache_tokens'] else '-'} | "
                f"{pct(p['kv_tokens_error'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def key(r):
        return r["model"], r["backend"], r.get("weights", UNQUANTIZED.get(r["backend"], "-"))

    groups = sorted({key(r) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for group in groups:
        sel = sorted((r for r in rows if key(r) == group), key=lambda r: r["ratio"])
        ratios = [r["ratio"] for r in sel]
        line = axes[0].plot(ratios, [r["speedup"] for r in sel], "o-", label=" / ".join(group))[0]
        axes[0].plot(ratios, [r["ideal_speedup"] for r in sel], ":", color=line.get_color())
        axes[1].plot(ratios, [r["peak_memory_gb"] for r in sel], "o-", label=" / ".join(group))
    axes[0].set(
        xlabel="pruning ratio", ylabel="tokens/s speedup vs dense", title="throughput (dotted: ideal bytes ratio)"
    )
    axes[1].set(xlabel="pruning ratio", ylabel="peak RSS (GB)", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure_atomic(path, fig, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "smollm"], choices=["demo", "smollm"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--backends", nargs="+", default=["vllm", "onnx"], choices=["vllm", "onnx", "transformers"])
    parser.add_argument("--onnx-weights", nargs="+", default=["fp32", "int8", "int4"], help="export onnx --weights")
    parser.add_argument("--vllm-weights", nargs="+", default=["bf16", "w8a8"], help="export vllm --weights")
    parser.add_argument("--method", default="magnitude")
    parser.add_argument(
        "--align",
        type=int,
        default=8,
        help="prune --align; 16 for int8 on vLLM CPU with AMX (it cannot pack gate/up rows not a multiple of 32)",
    )
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="VLLM_CPU_KVCACHE_SPACE of the vLLM rows")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--spot-check", type=int, default=16, help="demo: held-out records to ask")
    parser.add_argument("--work", default=str(ROOT / "build" / "bench-serve"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--replot", action="store_true", help="redraw serve.png from the existing serve.json only")
    args = parser.parse_args()
    out = Path(args.out)
    if args.replot:
        plot(json.loads((out / "serve.json").read_text())["rows"], out / "serve.png")
        return
    rows = bench(args)
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, {platform.node()}",
        "command": " ".join(sys.argv),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "method": args.method,
        "align": args.align,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "serve.json", {"meta": meta, "rows": rows})
    write_text_atomic(out / "serve.md", markdown(rows, meta))
    plot(rows, out / "serve.png")
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
