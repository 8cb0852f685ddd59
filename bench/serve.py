"""Serving benchmark: dense and pruned models on vLLM (CPU build) and ONNX Runtime, side by side.

    python bench/serve.py                       # demo VLM dense/0.3/0.5 and SmolLM2-135M dense/0.3/0.5
    python bench/serve.py --models smollm --ratios 0.5 --backends vllm onnx

Each model is pruned (magnitude by default: no calibration data needed, and the serving speed of a
width does not depend on which channels were kept), exported for each backend, and smoke-tested with
`mucrasp.serve.run_smoke` at the same load. The ideal speedup of a pruned model is the ratio of the
parameters one decode step reads: decoder layers plus the LM head (the vision tower runs once per
image, not per token). Writes bench/results/serve.{md,json,png}.
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
from mucrasp.atomic_io import write_json_atomic, write_text_atomic
from mucrasp.checkpoint import MANIFEST_NAME, load_pruned
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


def decode_params(folder: Path) -> int:
    """Parameters one decode step reads: decoder layers + LM head (embedding rows are gathered, not read)."""
    _, adapter = read_model_config(folder)
    model = load_pruned(folder)
    counts = count_parameters(model, adapter)
    return counts.decoder + model.get_output_embeddings().weight.numel()


def variant(source: Path, ratio: float, work: Path, method: str) -> Path:
    """A pruned checkpoint folder (ratio 0: the dense model with a manifest, so it exports the same way)."""
    out = work / f"r{ratio:g}"
    if (out / MANIFEST_NAME).is_file():
        return out
    if ratio == 0:
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
        (out / MANIFEST_NAME).write_text(json.dumps({"ratio": 0.0, "method": None}))
        return out
    from mucrasp.pruning import PruneConfig, prune

    prune(PruneConfig(model=source, out=out, ratio=ratio, method=method, overwrite=True))
    return out


def export(pruned: Path, backend: str) -> Path:
    out = pruned.parent / f"{pruned.name}-{backend}"
    if out.is_dir():
        return out
    if backend == "vllm":
        from mucrasp.export.vllm_checkpoint import export_vllm

        return export_vllm(pruned, out).out
    from mucrasp.export.onnx_export import export_onnx

    return export_onnx(pruned, out).out


def source_fingerprint(source: Path) -> dict:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(source.glob("*.safetensors"))}


def fresh_work_dir(work: Path, source: Path, method: str) -> None:
    """Reuse pruned/exported variants only if they were made from these weights by this method."""
    stamp = work / "source.json"
    expected = {"source": str(source), "weights": source_fingerprint(source), "method": method}
    if work.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != expected):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, expected)


def bench(args) -> list[dict]:
    rows = []
    for name in args.models:
        source = model_source(name)
        work = Path(args.work) / name
        fresh_work_dir(work, source, args.method)
        spot = None
        if name == "demo":
            from mucrasp.calibration.records import load_records
            from mucrasp.demo.bundled import ensure_demo_data
            from mucrasp.serve import write_spot_check

            test = ensure_demo_data(work / "data")["test"]
            spot = lambda folder: write_spot_check(folder, load_records(test, args.spot_check), "accuracy", str(test))  # noqa: E731
        dense_params = None
        for ratio in [0.0, *args.ratios]:
            pruned = variant(source, ratio, work, args.method)
            params = decode_params(pruned)
            dense_params = dense_params or params
            for backend in args.backends:
                folder = export(pruned, backend)
                if spot and not (folder / "spot_check.jsonl").is_file():
                    spot(folder)
                print(f"[bench] {name} ratio {ratio:g} on {backend} ...", flush=True)
                report = run_smoke(
                    SmokeConfig(
                        folder,
                        backend=backend,
                        requests=args.requests,
                        concurrency=args.concurrency,
                        max_tokens=args.max_tokens,
                        spot_check_limit=args.spot_check,
                        processor_dir=pruned,
                        max_model_len=args.max_model_len,
                        report=Path(args.work) / f"{name}-r{ratio:g}-{backend}.json",
                    )
                )
                t, m = report.data["throughput"], report.data["memory"]
                rows.append(
                    {
                        "model": name,
                        "ratio": ratio,
                        "backend": backend,
                        "decode_params": params,
                        "ideal_speedup": dense_params / params,
                        "tokens_per_s": t["tokens_per_s"],
                        "decode_tokens_per_s_per_stream": t["decode_tokens_per_s_per_stream"],
                        "ttft_p50_s": t["ttft_p50_s"],
                        "peak_memory_gb": m["peak_gb"],
                        "spot_check": report.data["spot_check"].get("score"),
                    }
                )
    for row in rows:
        dense = next(r for r in rows if (r["model"], r["backend"], r["ratio"]) == (row["model"], row["backend"], 0.0))
        row["speedup"] = row["tokens_per_s"] / dense["tokens_per_s"]
        row["speedup_vs_ideal"] = row["speedup"] / row["ideal_speedup"]
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Serving benchmark, {meta['date']}, {meta['machine']}. Load: {meta['requests']} requests of "
        f"{meta['max_tokens']} output tokens, {meta['concurrency']} in flight on vLLM (batch 1 on ONNX Runtime).",
        "",
        "| model | ratio | backend | decode params (M) | tokens/s | speedup | ideal | realised/ideal | "
        "TTFT p50 (s) | peak RSS (GB) | spot-check |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spot = "-" if r["spot_check"] is None else f"{r['spot_check']:.2f}"
        lines.append(
            f"| {r['model']} | {r['ratio']:g} | {r['backend']} | {r['decode_params'] / 1e6:.1f} | "
            f"{r['tokens_per_s']:.1f} | "
            f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['speedup_vs_ideal']:.0%} | {r['ttft_p50_s']} | "
            f"{r['peak_memory_gb']:.2f} | {spot} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["backend"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model, backend in groups:
        sel = sorted((r for r in rows if (r["model"], r["backend"]) == (model, backend)), key=lambda r: r["ratio"])
        ratios = [r["ratio"] for r in sel]
        axes[0].plot(ratios, [r["speedup"] for r in sel], "o-", label=f"{model} / {backend}")
        axes[1].plot(ratios, [r["peak_memory_gb"] for r in sel], "o-", label=f"{model} / {backend}")
    for model, style in zip(sorted({r["model"] for r in rows}), ["k--", "k:", "k-."]):
        ideal = sorted({(r["ratio"], r["ideal_speedup"]) for r in rows if r["model"] == model})
        axes[0].plot([i[0] for i in ideal], [i[1] for i in ideal], style, label=f"ideal ({model})")
    axes[0].set(xlabel="pruning ratio", ylabel="tokens/s speedup vs dense", title="throughput")
    axes[1].set(xlabel="pruning ratio", ylabel="peak RSS (GB)", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "smollm"], choices=["demo", "smollm"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--backends", nargs="+", default=["vllm", "onnx"], choices=["vllm", "onnx", "transformers"])
    parser.add_argument("--method", default="magnitude")
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
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "serve.json", {"meta": meta, "rows": rows})
    write_text_atomic(out / "serve.md", markdown(rows, meta))
    plot(rows, out / "serve.png")
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
