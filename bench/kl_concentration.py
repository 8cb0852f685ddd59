"""Where a pruned model's CoT KL sits: per-token KL(dense || pruned), grouped by the text before each token.

    .venv/bin/python bench/kl_concentration.py                      # mucrasp and magnitude at 0.3, 60 validation items
    .venv/bin/python bench/kl_concentration.py --methods mucrasp,taylor,magnitude --ratio 0.5

The quality table reports the mean KL over every CoT token. When a model is near-certain of its own
traces that mean can rest on a handful of tokens, and then a 10x difference between two methods says
little about how each prunes. This shows how concentrated the mean is (share held by the top 1% and
the top 10 tokens) and which contexts hold it. It measures on the demo VLM's validation split, so the
test split stays out of every diagnosis. Writes bench/results/kl-concentration-demo.{md,json}.
"""

from __future__ import annotations

import argparse
import collections
import copy
import time
from pathlib import Path

import torch

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import CalibrationSource, build_batches, load_processor
from mucrasp.calibration.records import load_records
from mucrasp.demo.bundled import bundled_demo_model, ensure_demo_data
from mucrasp.evaluation.evaluate import EvalConfig, dense_reference
from mucrasp.evaluation.metrics import token_divergence
from mucrasp.model_loading import load_model
from mucrasp.pruning import prune_in_memory
from mucrasp.scoring import ScoringContext, available_methods, get_method

RESULTS = Path(__file__).parent / "results"
CONTEXT_TOKENS = 4  # the token and the three before it: enough to tell which CoT step it is in


def token_divergences(dense, pruned, batches, tokenizer) -> list[tuple[float, str]]:
    """(KL, the text ending at that token) for every response token of every batch."""
    out = []
    for batch in batches:
        divergence = token_divergence(dense, pruned, batch)
        ids = divergence.token_ids.tolist()
        for i, value in enumerate(divergence.kl.tolist()):
            out.append((value, tokenizer.decode(ids[max(0, i - CONTEXT_TOKENS + 1) : i + 1])))
    return out


def concentration(divergences: list[tuple[float, str]], top_contexts: int) -> dict:
    values = sorted((v for v, _ in divergences), reverse=True)
    total = sum(values)
    by_context = collections.Counter()
    for value, context in divergences:
        by_context[context] += value
    return {
        "tokens": len(values),
        "mean_kl": total / len(values),
        "top_1pct_share": sum(values[: max(1, len(values) // 100)]) / total,
        "top_10_share": sum(values[:10]) / total,
        "contexts": [{"context": c, "share": v / total} for c, v in by_context.most_common(top_contexts)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="mucrasp,magnitude")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--top", type=int, default=5, help="contexts listed per method")
    parser.add_argument("--out", default=str(RESULTS / "kl-concentration-demo"))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:  # before any model loads: a typo should cost nothing
        parser.error(f"unknown methods: {unknown}; available: {', '.join(available_methods())}")
    torch.manual_seed(0)

    data = ensure_demo_data(Path("build/data/demo"), ("calibration", "validation"))
    model_dir = bundled_demo_model()
    loaded = load_model(model_dir)
    dense, adapter = loaded.model, loaded.adapter
    processor = load_processor(model_dir, True)
    config = EvalConfig(
        pruned=model_dir,
        dense=model_dir,
        data=data["validation"],
        limit=args.items,
        ground_truth=True,
        max_new_tokens=64,
    )
    reference = dense_reference(dense, processor, load_records(data["validation"], args.items), True, config)
    batches = build_batches(reference.records, processor, dense.config, config.pivot, True)
    calibration = CalibrationSource(Path(data["calibration"]), Path(model_dir), None)

    results = {}
    for method in methods:
        context = ScoringContext(ratio=args.ratio, calibration=calibration, options={})
        components = get_method(method).components(dense, adapter, context)
        pruned = copy.deepcopy(dense)
        prune_in_memory(pruned, adapter, args.ratio, method=method, calibration=calibration, scores=components)
        results[method] = concentration(token_divergences(dense, pruned, batches, processor.tokenizer), args.top)
        print(
            f"{method}: mean KL {results[method]['mean_kl']:.5f}, "
            f"top 10 tokens hold {results[method]['top_10_share']:.0%}",
            flush=True,
        )

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} (`bench/kl_concentration.py --methods {args.methods} "
        f"--ratio {args.ratio} "
        f"--items {args.items}`), demo VLM, validation split, ratio {args.ratio}.",
        "",
        "| method | CoT tokens | mean KL | top 1% of tokens hold | top 10 tokens hold | "
        "contexts holding the most KL (share) |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        contexts = "; ".join(f"`{c['context'].strip()}` {c['share']:.0%}" for c in r["contexts"])
        lines.append(
            f"| {method} | {r['tokens']} | {r['mean_kl']:.5f} | {r['top_1pct_share']:.0%} | "
            f"{r['top_10_share']:.0%} | {contexts} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), {"ratio": args.ratio, "items": args.items, "methods": results})
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
