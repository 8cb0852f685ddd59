"""Real size: score -> prune 0.3 -> export vllm -> export onnx -> a transformers smoke run, on a random-weight
model with Qwen2.5-VL-7B's published widths, at a chosen depth, recording each step's wall time and peak RSS
against the source's weight bytes.

    .venv/bin/python bench/scale.py --layers 28 --vision-depth 32 --work /tmp/scale --name scale-full

Every step runs in its own child process; its peak RSS is the child's own (os.wait4's ru_maxrss), so one
step's memory never hides another's. The random checkpoint is written in bf16, sharded, straight from a
meta-device model's shapes, one shard at a time (the model is never materialised, in fp32 or at all).
Big intermediates are deleted as the run goes. Results: bench/results/NAME.{json,md,png}.

`--baseline` also times one plain forward+backward (every parameter's gradient computed, each dropped as
soon as it is accumulated, so no gradient buffer of the model's size exists) over the same calibration
samples, in the same dtype: the reference of the issue's "scoring ≤ 1.5× one forward+backward".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEMO_MODEL = ROOT / "models" / "demo-vlm"  # its tokenizer and processor serve the random model
DEMO_CALIBRATION = ROOT / "build" / "data" / "demo" / "calibration" / "calibration.jsonl"
SHARD_BYTES = 4 * 2**30  # Qwen2.5-VL-7B-Instruct ships 5 shards of <= ~4 GB
_POOL = 2**26  # random values drawn once (see write_random_checkpoint)
RSS_LIMIT_GIB = 21.0  # of the box's 23.5 GiB: a step past it is killed and recorded as failed for memory
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json")


def random_model_config(layers: int, vision_depth: int):
    """Qwen2.5-VL-7B's published sizes cut to `layers` and `vision_depth`, in bf16, with the demo tokenizer's
    special ids (its tokenizer and processor serve the random model)."""
    from mucrasp.published_configs import qwen25_vl_7b_config

    demo = json.loads((DEMO_MODEL / "config.json").read_text())
    config = qwen25_vl_7b_config(layers, vision_depth)
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        setattr(config, key, demo[key])
    text = demo.get("text_config", {})
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, text.get(key))
    config.dtype = "bfloat16"
    return config


def write_random_checkpoint(folder: Path, layers: int, vision_depth: int, seed: int = 0) -> dict:
    """A bf16 random-weight checkpoint, sharded at SHARD_BYTES, from the meta model's names and shapes."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from mucrasp.checkpoint import file_keys

    config = random_model_config(layers, vision_depth)
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration(config)
    keys = file_keys(model)
    shapes = {keys[name]: tuple(t.shape) for name, t in model.state_dict().items()}
    folder.mkdir(parents=True)
    groups, current, size = [], [], 0
    for key, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    groups.append(current)
    # Values come from one pool of N(0, 1) draws taken at random offsets: writing 8 B independent draws would
    # take minutes on 2 cores, and timing and memory do not depend on the values' independence.
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(_POOL, generator=generator, dtype=torch.bfloat16)
    weight_map, total = {}, 0
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for key in group:
            shape = shapes[key]
            if key.endswith("norm.weight") or ".norm" in key and key.endswith(".weight") or key.endswith("ln_q.weight"):
                tensors[key] = torch.ones(shape, dtype=torch.bfloat16)
            elif key.endswith(".bias"):
                tensors[key] = torch.zeros(shape, dtype=torch.bfloat16)
            else:
                # std 1/sqrt(fan_in) keeps activations O(1) at any depth (bf16 has no room for blow-ups)
                fan_in = shape[-1] if len(shape) > 1 else 1
                std = 0.02 if "embed" in key else (1.0 / max(fan_in, 1)) ** 0.5
                numel = int(torch.Size(shape).numel())
                offset = int(torch.randint(0, _POOL - min(numel, _POOL) + 1, (1,), generator=generator))
                flat = pool[offset : offset + numel] if numel <= _POOL else pool.repeat(numel // _POOL + 1)[:numel]
                tensors[key] = flat.reshape(shape) * std  # a new tensor: the pool is not saved with it
            weight_map[key] = name
            total += tensors[key].numel() * 2
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config.save_pretrained(folder)
    if (DEMO_MODEL / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(DEMO_MODEL).save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        if (DEMO_MODEL / name).is_file():
            shutil.copy2(DEMO_MODEL / name, folder / name)
    params = sum(int(torch.Size(s).numel()) for s in shapes.values())
    return {"parameters": params, "weight_bytes": total, "shards": len(groups)}


def write_calibration(path: Path, samples: int) -> None:
    """The first `samples` demo calibration records (one 112x112 image, a short CoT each), images resolved."""
    lines = DEMO_CALIBRATION.read_text().splitlines()[:samples]
    out = []
    for line in lines:
        record = json.loads(line)
        if record.get("image"):
            record["image"] = str((DEMO_CALIBRATION.parent / record["image"]).resolve())
        out.append(json.dumps(record))
    path.write_text("\n".join(out) + "\n")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_step(name: str, argv: list[str], timeout: float, log: Path, rss_limit_gib: float = RSS_LIMIT_GIB) -> dict:
    """Run one step in a child process; its wall time, exit status and own peak RSS. A child past
    `rss_limit_gib` is killed (recorded as such) before the kernel's OOM killer picks a process itself."""
    started = time.perf_counter()
    over_limit = False
    with log.open("w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = started + timeout
        status, usage, timed_out = None, None, False
        while status is None:
            pid, status_code, rusage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                status, usage = status_code, rusage
                break
            over_limit = _rss_gib(child.pid) > rss_limit_gib
            if time.perf_counter() > deadline or over_limit:
                child.kill()
                timed_out = not over_limit
                _, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.5)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return {
        "step": name,
        "ok": child.returncode == 0 and not timed_out,
        "exit": child.returncode,
        "timed_out": timed_out,
        "killed_at_rss_limit_gib": rss_limit_gib if over_limit else None,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB on Linux
        "log_tail": tail if child.returncode != 0 or timed_out or over_limit else [],
    }


# ---- child-process modes --------------------------------------------------------------------------------
def baseline_main(model_dir: str, calibration: str, samples: int, out_json: str) -> None:
    """One plain forward+backward per sample, every parameter's gradient computed and dropped at once."""

    from mucrasp.calibration.batches import CalibrationSource, resolve_batches
    from mucrasp.calibration.pivots import PivotConfig
    from mucrasp.model_loading import load_model
    from mucrasp.scoring.taylor_hooks import response_token_losses

    loaded = load_model(model_dir, dtype="auto", device="auto")
    model = loaded.model
    source = CalibrationSource(Path(calibration), Path(model_dir), samples)
    batches = resolve_batches(source, model.config, PivotConfig(), True, "baseline")
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    started = time.perf_counter()
    for batch in batches:
        logits = model(**batch.inputs, use_cache=False).logits
        loss = response_token_losses(logits, batch.input_ids)[batch.response_mask].mean()
        del logits
        loss.backward()
    seconds = time.perf_counter() - started
    for hook in hooks:
        hook.remove()
    tokens = [int(b.input_ids.shape[-1]) for b in batches]
    Path(out_json).write_text(json.dumps({"seconds": seconds, "samples": len(batches), "tokens": tokens}))


def smoke_main(pruned_dir: str, out_json: str) -> None:
    """transformers: load the pruned checkpoint in its own dtype and greedily generate a few tokens."""
    import torch

    from mucrasp.calibration.batches import load_processor
    from mucrasp.checkpoint import load_pruned

    started = time.perf_counter()
    model = load_pruned(pruned_dir)
    loaded_s = time.perf_counter() - started
    processor = load_processor(Path(pruned_dir), True)
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = tokenizer("Step 1: count the shapes.", return_tensors="pt").input_ids
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    generate_s = time.perf_counter() - started
    Path(out_json).write_text(
        json.dumps(
            {
                "dtype": str(next(model.parameters()).dtype),
                "new_tokens": int(out.shape[-1] - ids.shape[-1]),
                "load_s": round(loaded_s, 1),
                "generate_s": round(generate_s, 1),
            }
        )
    )


# ---- the run --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vision-depth", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mucrasp-scale"))
    parser.add_argument("--name", default=None, help="results file stem (default: scale-L<layers>)")
    parser.add_argument("--steps", default="score,baseline,prune,export_vllm,smoke,export_onnx")
    parser.add_argument("--step-timeout", type=float, default=1800)
    parser.add_argument(
        "--onnx-timeout", type=float, default=None, help="export onnx's own limit (default: --step-timeout)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--deadline", type=float, default=None, help="unix time: every step's limit ends there at the latest"
    )
    parser.add_argument("--baseline-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--smoke-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--write-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        model_dir, calibration, samples, out_json = args.baseline_child
        return baseline_main(model_dir, calibration, int(samples), out_json)
    if args.smoke_child:
        return smoke_main(*args.smoke_child)
    if args.write_child:
        folder, layers, vision_depth, out_json = args.write_child
        info = write_random_checkpoint(Path(folder), int(layers), int(vision_depth))
        Path(out_json).write_text(json.dumps(info))
        return None

    name = args.name or f"scale-L{args.layers}"
    steps = args.steps.split(",")
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    source, scores, pruned = work / "source", work / "scores.safetensors", work / "pruned"
    calibration = work / "calibration.jsonl"
    write_calibration(calibration, args.samples)
    py, cli = sys.executable, [sys.executable, "-m", "mucrasp"]
    results = {"name": name, "layers": args.layers, "vision_depth": args.vision_depth, "samples": args.samples}
    results["ratio"] = args.ratio
    results["machine"] = {"cpus": os.cpu_count(), "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * 4096 / 2**30, 1)}
    results["steps"] = []

    def save() -> None:
        write_results(name, results)

    # In a child: a forked child's peak RSS starts at its parent's, so the parent must stay small (no torch here).
    started = time.perf_counter()
    info = work / "source.json"
    written = run_step(
        "write",
        [py, __file__, "--write-child", str(source), str(args.layers), str(args.vision_depth), str(info)],
        args.step_timeout,
        work / "write.log",
    )
    if not written["ok"]:
        raise SystemExit(f"writing the random checkpoint failed: {written['log_tail']}")
    results["source"] = json.loads(info.read_text()) | {"write_peak_rss_gib": written["peak_rss_gib"]}
    results["source"]["write_s"] = round(time.perf_counter() - started, 1)
    results["source"]["folder_bytes"] = dir_bytes(source)
    source_bytes = results["source"]["weight_bytes"]
    save()

    def step(label: str, argv: list[str], timeout: float | None = None) -> dict:
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
        limit = timeout or args.step_timeout
        if args.deadline is not None:
            limit = max(1.0, min(limit, args.deadline - time.time()))
        record = run_step(label, argv, limit, work / f"{label}.log")
        record["limit_s"] = round(limit)
        record["peak_over_weights"] = round(record["peak_rss_gib"] * 2**30 / source_bytes, 3)
        results["steps"].append(record)
        print(f"    {record['wall_s']} s, peak {record['peak_rss_gib']} GiB, ok={record['ok']}", flush=True)
        save()
        return record

    if "score" in steps:
        step(
            "score",
            cli
            + ["score", str(source), "--calib", str(calibration), "--out", str(scores)]
            + ["--max-samples", str(args.samples)],
        )
        if scores.exists():
            results["score_details"] = _score_memory(_safetensors_metadata(scores))
    if "baseline" in steps:
        out_json = work / "baseline.json"
        record = step(
            "baseline",
            [py, __file__, "--baseline-child", str(source), str(calibration), str(args.samples), str(out_json)],
        )
        if record["ok"]:
            record.update(json.loads(out_json.read_text()))
    if "prune" in steps and scores.exists():
        record = step(
            "prune",
            cli + ["prune", str(source), "--scores", str(scores), "--ratio", str(args.ratio), "--out", str(pruned)],
        )
        record["folder_bytes"] = dir_bytes(pruned)
        record["folder_over_source"] = round(dir_bytes(pruned) / max(results["source"]["folder_bytes"], 1), 3)
        record["shards"] = len(list(pruned.glob("*.safetensors")))
        index = pruned / "model.safetensors.index.json"
        record["sharded_index"] = index.is_file()
        if (pruned / "pruning.json").is_file():
            manifest = json.loads((pruned / "pruning.json").read_text())
            record["dtype"] = manifest.get("dtype")
            record["ratio_achieved"] = manifest.get("ratio_achieved")
    shutil.rmtree(source, ignore_errors=True)  # nothing after this reads the dense model
    if "export_vllm" in steps and pruned.exists():
        out = work / "vllm"
        record = step("export_vllm", cli + ["export", "vllm", str(pruned), "--out", str(out)])
        record["folder_bytes"] = dir_bytes(out)
        shutil.rmtree(out, ignore_errors=True)
    # the smoke run before the ONNX export: at full depth the export is the step most likely to fail or run long
    if "smoke" in steps and pruned.exists():
        out_json = work / "smoke.json"
        record = step("smoke", [py, __file__, "--smoke-child", str(pruned), str(out_json)])
        if record["ok"]:
            record.update(json.loads(out_json.read_text()))
    if "export_onnx" in steps and pruned.exists():
        out = work / "onnx"
        record = step(
            "export_onnx",
            cli + ["export", "onnx", str(pruned), "--out", str(out), "--dtype", "fp16"],
            args.onnx_timeout,
        )
        record["folder_bytes"] = dir_bytes(out)
        shutil.rmtree(out, ignore_errors=True)
    save()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"results: {RESULTS / name}.md")


def _safetensors_metadata(path: Path) -> dict:
    """A safetensors file's `__metadata__`, read from its header without importing torch."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(length)).get("__metadata__", {})


def _score_memory(meta: dict) -> dict:
    """The scoring run's own report (per-sample time, checkpointing decision), from the scores file."""
    for value in meta.values():
        try:
            data = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict):
            found = _find(data, "seconds_per_sample")
            if found is not None:
                return found
    return {}


def _find(data, key):
    if isinstance(data, dict):
        if key in data:
            return data
        for value in data.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def write_results(name: str, results: dict) -> None:
    from mucrasp.atomic_io import write_json_atomic, write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{name}.json", results)
    src = results.get("source", {})
    weight_gib = src.get("weight_bytes", 0) / 2**30
    lines = [
        f"# Real size: Qwen2.5-VL-7B widths, {results['layers']} decoder layers, "
        f"{results['vision_depth']} vision blocks",
        "",
        f"Random bf16 weights, {src.get('parameters', 0) / 1e9:.2f} B parameters, {weight_gib:.2f} GiB of weights "
        f"in {src.get('shards', '?')} shards (written in {src.get('write_s', '?')} s). {results['samples']} "
        f"calibration samples; ratio {results['ratio']}. Machine: {results['machine']['cpus']} CPUs, "
        f"{results['machine']['mem_gib']} GiB RAM. Each step in its own process; peak RSS is that process's.",
        "",
        "| step | ok | wall s | peak RSS GiB | peak / weight bytes | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results.get("steps", []):
        notes = []
        if "folder_bytes" in r:
            notes.append(f"folder {r['folder_bytes'] / 2**30:.2f} GiB")
        if "folder_over_source" in r:
            notes.append(f"{r['folder_over_source']}x source folder, {r.get('shards')} shards, dtype {r.get('dtype')}")
        if r["step"] == "baseline" and "seconds" in r:
            notes.append(f"fwd+bwd {r['seconds']:.1f} s over {r['samples']} samples, tokens {r['tokens']}")
        if r["step"] == "smoke" and "new_tokens" in r:
            notes.append(f"{r['new_tokens']} tokens in {r['generate_s']} s, {r['dtype']}")
        if r["timed_out"]:
            notes.append(f"stopped at its {r.get('limit_s', '?')} s limit")
        if r.get("killed_at_rss_limit_gib"):
            notes.append(f"killed at the {r['killed_at_rss_limit_gib']} GiB RSS limit")
        if not r["ok"] and r.get("log_tail"):
            notes.append("failed: " + " / ".join(line.strip()[:160] for line in r["log_tail"]).replace("|", "/"))
        lines.append(
            f"| {r['step']} | {'yes' if r['ok'] else 'no'} | {r['wall_s']} | {r['peak_rss_gib']} | "
            f"{r['peak_over_weights']} | {'; '.join(notes)} |"
        )
    score = results.get("score_details") or {}
    base = next((r for r in results.get("steps", []) if r["step"] == "baseline" and "seconds" in r), None)
    if score:
        lines += [
            "",
            f"Scoring: {score.get('seconds_per_sample')} s per sample (gradient pass only), run dtype "
            f"{score.get('run_dtype')}, gradient checkpointing {score.get('gradient_checkpointing')} "
            f"({score.get('checkpointing_reason')}).",
        ]
        if base:
            per = base["seconds"] / max(base["samples"], 1)
            lines.append(
                f"Plain forward+backward: {per:.1f} s per sample; gradient pass / plain = "
                f"{score.get('seconds_per_sample', 0) / per:.2f} (same run, same samples, same dtype)."
            )
    write_text_atomic(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    _plot(name, results)


def _plot(name: str, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps = results.get("steps", [])
    if not steps:
        return
    weight_gib = results["source"]["weight_bytes"] / 2**30
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [r["step"] for r in steps]
    axes[0].bar(labels, [r["peak_rss_gib"] for r in steps], color=["C0" if r["ok"] else "C3" for r in steps])
    axes[0].axhline(weight_gib, color="k", ls="--", label="source weight bytes")
    axes[0].axhline(1.3 * weight_gib, color="C1", ls=":", label="1.3x weight bytes")
    axes[0].set_ylabel("peak RSS (GiB)")
    axes[0].legend(fontsize=8)
    axes[1].bar(labels, [r["wall_s"] for r in steps], color=["C0" if r["ok"] else "C3" for r in steps])
    axes[1].set_ylabel("wall time (s)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Qwen2.5-VL-7B widths, {results['layers']} layers (red: failed)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
