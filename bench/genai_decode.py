"""Decode speed of ONNX exports in onnxruntime-genai, the runtime users serve these folders with.

    python bench/genai_decode.py build/bench-serve-q/smollm --tokenizer build/bench-serve-q/smollm/r0
    python bench/genai_decode.py DIR ... --rounds 3 --new-tokens 64 --out bench/results/genai-decode-smollm

Every `*-onnx-*` folder under DIR (as bench/serve.py leaves them: r<ratio>-onnx-<weights>) is timed on the
same prompts, batch 1, greedy, exactly `--new-tokens` tokens each (EOS ignored). The folders take turns,
round by round, so a change in the machine's load falls on all of them alike; each folder's figure is
its median round. Speedups are against the dense (r0) fp32 folder of the same run. Text models only (a
VL folder needs its image inputs; bench/serve.py times those through OnnxGenerator).
Writes genai.{md,json} under --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "A farmer has 17 sheep and buys 5 more. Each sheep eats 2 kg of hay a day. How much hay a day? Think step by step.",
    "Tom reads 12 pages a day. His book has 150 pages. After 9 days, how many pages are left? Explain.",
]
FOLDER = re.compile(r"r(?P<ratio>[0-9.]+)-onnx-(?P<weights>\w+)$")


def prompt_ids(tokenizer_dir: Path) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids.append(np.asarray(tokenizer(text)["input_ids"], dtype=np.int32))
    return ids


def time_folder(model, prompts: list[np.ndarray], new_tokens: int) -> dict:
    """One round: every prompt once. Returns decode tokens/s (after the first token) and TTFT."""
    import onnxruntime_genai as og

    ttfts, decode_s, produced = [], 0.0, 0
    for ids in prompts:
        params = og.GeneratorParams(model)
        total = len(ids) + new_tokens
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        count = 1
        while not generator.is_done():
            generator.generate_next_token()
            count += 1
        end = time.perf_counter()
        ttfts.append(first - start)
        decode_s += end - first
        produced += count - 1
        del generator
    return {"decode_tokens_per_s": produced / decode_s, "ttft_s": statistics.median(ttfts), "tokens": produced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="a bench/serve.py model work folder (holds r*-onnx-* exports)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder (the dense checkpoint)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import onnxruntime_genai as og

    from mucrasp.atomic_io import write_json_atomic, write_text_atomic

    folders = sorted(p for p in args.work.iterdir() if p.is_dir() and FOLDER.search(p.name))
    if not folders:
        sys.exit(f"no r<ratio>-onnx-<weights> folders under {args.work}")
    prompts = prompt_ids(args.tokenizer)
    models = {f: og.Model(str(f)) for f in folders}
    for f, m in models.items():  # warm-up: first-call allocations are not decode speed
        time_folder(m, prompts[:1], 4)
    rounds: dict[Path, list[dict]] = {f: [] for f in folders}
    for r in range(args.rounds):
        for f in folders:
            rounds[f].append(time_folder(models[f], prompts, args.new_tokens))
            print(f"[genai] round {r + 1} {f.name}: {rounds[f][-1]['decode_tokens_per_s']:.1f} tokens/s", flush=True)
    rows = []
    for f in folders:
        m = FOLDER.search(f.name)
        speeds = [x["decode_tokens_per_s"] for x in rounds[f]]
        rows.append(
            {
                "folder": f.name,
                "ratio": float(m["ratio"]),
                "weights": m["weights"],
                "decode_tokens_per_s": statistics.median(speeds),
                "decode_tokens_per_s_rounds": speeds,
                "ttft_s": statistics.median(x["ttft_s"] for x in rounds[f]),
            }
        )
    dense = next((r for r in rows if r["ratio"] == 0 and r["weights"] == "fp32"), None)
    for row in rows:
        row["speedup"] = row["decode_tokens_per_s"] / dense["decode_tokens_per_s"] if dense else None
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.node()}",
        "onnxruntime_genai": og.__version__ if hasattr(og, "__version__") else "?",
        "command": " ".join(sys.argv),
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "prompts": len(PROMPTS),
    }
    lines = [
        f"onnxruntime-genai decode, {meta['date']}, {meta['machine']}: batch 1, greedy, {args.new_tokens} tokens "
        f"per prompt, {len(PROMPTS)} prompts, median of {args.rounds} interleaved rounds. Speedup: against r0 fp32.",
        "",
        "| ratio | weights | decode tokens/s | rounds | speedup | TTFT (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["ratio"], r["weights"] != "fp32", r["weights"])):
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        spread = ", ".join(f"{x:.1f}" for x in r["decode_tokens_per_s_rounds"])
        lines.append(
            f"| {r['ratio']:g} | {r['weights']} | {r['decode_tokens_per_s']:.1f} | {spread} | {speedup} | "
            f"{r['ttft_s']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "genai.json", {"meta": meta, "rows": rows})
        write_text_atomic(args.out / "genai.md", text)


if __name__ == "__main__":
    main()
