"""Where vLLM's CPU decode time goes, dense against pruned: a profile of the engine in-process.

    .venv/bin/python bench/profile_vllm.py                           # the demo VLM: dense and three 0.5 variants
    .venv/bin/python bench/profile_vllm.py --folders A-vllm B-vllm   # any vLLM export folders

By default the bundled demo VLM is pruned by magnitude at `--ratio` in three ways that separate the
suspects: per-layer widths with MLP channels in multiples of 8 (the default) and of 64 (GEMM
shapes), and uniform widths (the stock vLLM class instead of the per-layer plugin); the dense model
is the first row. Each folder is loaded in a fresh process with the engine in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), eager as `mucrasp-deploy smoke` serves on CPU, and asked for
`--batch` text prompts of `--tokens` output tokens, timed, then once more under `torch.profiler`.
The profile splits the wall time into torch operators (GEMMs, attention, KV cache,
norms/activations, other ops) and the rest: Python in the engine (scheduling, input preparation,
attention metadata, sampling). Writes bench/results/profile-vllm.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model runs in this process, so the profiler sees it
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

import mucrasp  # noqa: E402,F401  (CPU-torch workarounds before vLLM imports transformers)
from mucrasp.atomic_io import write_json_atomic, write_text_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results"

# Operator name fragments -> group; the first match wins.
GROUPS = [
    (
        "gemm",
        ("onednn_mm", "aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "weight_packed_linear", "aten::bmm"),
    ),
    ("attention", ("attention", "attn", "sdpa", "paged")),
    ("kv cache", ("reshape_and_cache", "cache")),
    (
        "norm/activation/rope",
        (
            "rms_norm",
            "silu",
            "rotary",
            "rope",
            "aten::mul",
            "aten::add",
            "aten::pow",
            "aten::rsqrt",
            "aten::mean",
            "aten::neg",
            "aten::cat",
            "aten::sigmoid",
        ),
    ),
]


def _group(name: str) -> str:
    lower = name.lower()
    for group, fragments in GROUPS:
        if any(f in lower for f in fragments):
            return group
    return "other ops"


def _kv_cache_groups(llm) -> int | None:
    try:
        core = llm.llm_engine.engine_core.engine_core
        return len(core.scheduler.kv_cache_config.kv_cache_groups)
    except AttributeError:  # engine internals moved; the profile stands without this count
        return None


def profile_folder(folder: Path, batch: int, tokens: int, repeats: int) -> dict:
    """Timed and profiled decoding of one export; runs in a child process of its own (see `measure`)."""
    from vllm import LLM, SamplingParams

    llm = LLM(str(folder), dtype="bfloat16", max_model_len=512, enforce_eager=True, seed=0, max_num_seqs=batch)
    prompts = [{"prompt_token_ids": [3 + (i * 7 + j) % 50 for j in range(24)]} for i in range(batch)]
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up: oneDNN primitives and caches are built here
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        walls.append(time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled_start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        profiled_wall = time.perf_counter() - profiled_start
    groups: dict[str, float] = {}
    top = []
    for event in prof.key_averages():
        self_s = event.self_cpu_time_total / 1e6
        groups[_group(event.key)] = groups.get(_group(event.key), 0.0) + self_s
        top.append((self_s, event.key, event.count))
    op_total = sum(groups.values())
    top.sort(reverse=True)
    return {
        "folder": str(folder),
        "walls_s": walls,
        "profiled_wall_s": profiled_wall,
        "kv_cache_groups": _kv_cache_groups(llm),
        "share_of_wall": {
            **{g: s / profiled_wall for g, s in sorted(groups.items())},
            "python (engine, outside torch ops)": max(0.0, profiled_wall - op_total) / profiled_wall,
        },
        "top_ops": [{"op": k, "self_s": round(s, 4), "calls": c} for s, k, c in top[:12]],
    }


def measure(folders: list[Path], args) -> list[dict]:
    """Each folder in a fresh process (an engine torn down in-process leaves threads and memory
    behind that slow the next one), over `--rounds` rounds in alternating order; tokens/s is the
    median of every timed run, the profile is the first round's."""
    import json
    import statistics
    import subprocess
    import sys
    import tempfile

    runs: dict[Path, list[dict]] = {folder: [] for folder in folders}
    for round_index in range(args.rounds):
        for folder in folders if round_index % 2 == 0 else folders[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                result = Path(tmp) / "result.json"
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(folder),
                        "--result",
                        str(result),
                        "--batch",
                        str(args.batch),
                        "--tokens",
                        str(args.tokens),
                        "--repeats",
                        str(args.repeats),
                    ],
                    check=True,
                )
                runs[folder].append(json.loads(result.read_text()))
            print(f"[profile] round {round_index + 1}: {folder.name} done", flush=True)
    results = []
    for folder, measured in runs.items():
        walls = [w for run in measured for w in run["walls_s"]]
        wall = statistics.median(walls)
        results.append(
            measured[0]
            | {"walls_s": walls, "tokens_per_s": args.batch * args.tokens / wall, "step_ms": 1000 * wall / args.tokens}
        )
    dense = results[0]["tokens_per_s"]
    for r in results:
        r["vs_first"] = r["tokens_per_s"] / dense
    return results


def demo_variants(ratio: float, work: Path) -> list[Path]:
    """Dense and pruned exports of the demo VLM, made afresh under `work` (never stale ones)."""
    import shutil

    from mucrasp.demo.bundled import bundled_demo_model
    from mucrasp.export.vllm_checkpoint import export_vllm
    from mucrasp.pruning import PruneConfig, prune

    source = bundled_demo_model()
    shutil.rmtree(work, ignore_errors=True)
    variants = {
        "dense": dict(ratio=0.0, layout="uniform"),
        f"r{ratio:g}-align8": dict(ratio=ratio, align=8),
        f"r{ratio:g}-align64": dict(ratio=ratio, align=64),
        f"r{ratio:g}-uniform": dict(ratio=ratio, layout="uniform"),
    }
    folders = []
    for name, options in variants.items():
        pruned, exported = work / name, work / f"{name}-vllm"
        prune(PruneConfig(model=source, out=pruned, method="magnitude", **options))
        folders.append(export_vllm(pruned, exported).out)
    return folders


def markdown(results: list[dict], meta: str) -> str:
    shares = sorted({g for r in results for g in r["share_of_wall"]})
    lines = [
        meta,
        "",
        "| model | tokens/s | vs first row | ms / decode step | KV-cache groups | " + " | ".join(shares) + " |",
        "|---|---|---|---|---|" + "---|" * len(shares),
    ]
    for r in results:
        cells = " | ".join(f"{r['share_of_wall'].get(g, 0):.0%}" for g in shares)
        lines.append(
            f"| {Path(r['folder']).name} | {r['tokens_per_s']:.1f} | {r['vs_first']:.2f}x | {r['step_ms']:.2f} | "
            f"{r['kv_cache_groups']} | {cells} |"
        )
    for r in results:
        lines += ["", f"Top operators, {Path(r['folder']).name} (self CPU seconds over the profiled run):", ""]
        lines += [f"- `{t['op']}`: {t['self_s']:.3f} s in {t['calls']} calls" for t in r["top_ops"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", type=Path, help="vLLM export folders (default: demo VLM variants)")
    parser.add_argument("--ratio", type=float, default=0.5, help="pruning ratio of the demo variants")
    parser.add_argument("--work", type=Path, default=Path("build/profile-vllm"), help="where demo variants are made")
    parser.add_argument(
        "--batch", type=int, default=4, help="sequences decoded together (the smoke test's concurrency)"
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per folder, in alternating order")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        args.result.write_text(json.dumps(profile_folder(args.child, args.batch, args.tokens, args.repeats)))
        return
    folders = args.folders or demo_variants(args.ratio, args.work)
    results = measure(folders, args)
    meta = (
        f"vLLM CPU decode profile, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"batch {args.batch}, {args.tokens} output tokens, eager, bf16; "
        f"tokens/s: median of {args.rounds * args.repeats} timed "
        f"runs in {args.rounds} fresh processes per model. Shares are of one profiled run's wall time."
    )
    write_json_atomic(args.out / "profile-vllm.json", {"meta": meta, "results": results})
    write_text_atomic(args.out / "profile-vllm.md", markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
