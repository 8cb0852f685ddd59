"""How much answer agreement a given CoT KL leaves on SmolLM2-135M: the dense model against copies of
itself that no pruning touched, only perturbed, on the metrics and test prompts of bench/quality.py.

    .venv/bin/python bench/agreement_floor.py                       # all 192 test prompts
    .venv/bin/python bench/agreement_floor.py --items 32 --scales 0.02,0.05

Why: on SmolLM2 every pruning method at 0.3 reaches a CoT KL under 0.1 yet agrees with the dense
answers on only 15-20% of the prompts. If a perturbation with no structure at all (bf16 rounding,
Gaussian noise on every linear weight, `scale` x that weight's RMS) at the same KL agrees just as
rarely, low agreement is a property of the model and the metric, not of the pruning, and no method
can reach the agreement goals at that KL. Reported per row, besides KL and agreement:
- next-token match: how often the perturbed model's top token is the dense model's (teacher-forced);
- shared prefix: mean leading tokens its greedy trace shares with the dense one, and the share of
  traces it reproduces token for token;
- accuracy against the true answers of the word problems (`mucrasp.demo.word_problems.true_answers`),
  for the dense model too: how often SmolLM2's own answers are right in the first place.
The pruned rows of bench/results/quality-smollm-full-*.json (same 192 prompts) are plotted beside
the perturbation curve. Nothing here chooses a default, so measuring on the test split is fair.
Writes bench/results/agreement-floor.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import platform
import time
from pathlib import Path

import torch
from quality import rounded_to_bf16  # bench/quality.py's noise floor, the same rounding

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_figure_atomic, write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import load_processor
from mucrasp.calibration.records import load_records
from mucrasp.demo.word_problems import true_answers_of
from mucrasp.evaluation.evaluate import EvalConfig, compare, dense_reference
from mucrasp.model_loading import load_model
from mucrasp.models.smollm2 import ensure_smollm2_checkpoint

RESULTS = Path(__file__).parent / "results"
COLUMNS = [
    ("cot_kl", "CoT KL", "{:.4f}"),
    ("next_token_match", "next-token match", "{:.3f}"),
    ("shared_prefix_tokens", "shared prefix (tokens)", "{:.1f}"),
    ("traces_reproduced", "traces reproduced", "{:.3f}"),
    ("agreement", "agreement", "{:.3f}"),
    ("agreement_answered", "agreement, answered", "{:.3f}"),
    ("accuracy", "accuracy (true answers)", "{:.3f}"),
]


def with_weight_noise(model, scale: float, seed: int):
    """A copy with N(0, (scale * rms(W))^2) added to every linear weight of the decoder layers."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in noisy.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                weight = module.weight
                rms = weight.float().pow(2).mean().sqrt()
                noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32) * (scale * rms)
                weight.add_(noise.to(weight.dtype))
    return noisy


def pruned_rows(pattern: str) -> list[dict]:
    """The SmolLM2 pruned rows measured on all 192 test prompts by bench/quality.py."""
    rows = []
    for path in sorted(glob.glob(pattern)):
        for row in json.loads(Path(path).read_text())["rows"]:
            if row["model"] == "smollm2-135m" and row["method"] != "dense" and row.get("items") == 192:
                rows.append({k: row[k] for k in ("method", "treatment", "ratio", "cot_kl", "agreement")})
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| perturbation | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "–" for key, _, fmt in COLUMNS]
        lines.append(f"| {row['perturbation']} | " + " | ".join(cells) + " |")
    dense = rows[0]
    lines += [
        "",
        f"Dense SmolLM2-135M: {dense['answered_items']} of {dense['items']} greedy traces end before the "
        f"96-token cap, and its answers are right on {dense['dense_accuracy']:.3f} of the prompts that have "
        "a numeric answer.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], pruned: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = [r for r in rows if r["perturbation"].startswith("noise")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([r["cot_kl"] for r in noise], [r["agreement"] for r in noise], "o-", color="grey", label="weight noise")
    for r in rows:
        if r["perturbation"] == "bf16 weights":
            left.plot(r["cot_kl"], r["agreement"], "s", color="black", label="bf16 weights")
    markers = {"oneshot": "v", "reconstruct": "o", "recover": "*"}
    for k, method in enumerate(sorted({r["method"] for r in pruned})):
        for treatment, marker in markers.items():
            points = [r for r in pruned if r["method"] == method and r["treatment"] == treatment]
            if points:
                ratios = "/".join(sorted({f"{r['ratio']:g}" for r in points}))
                left.scatter(
                    [r["cot_kl"] for r in points],
                    [r["agreement"] for r in points],
                    marker=marker,
                    color=f"C{k}",
                    label=f"{method} ({treatment}, {ratios})",
                )
    for goal in (0.8, 0.6):
        left.axhline(goal, color="red", lw=0.6, ls=":")
    left.set_xscale("log")
    left.set_xlabel("CoT KL (nats/token)")
    left.set_ylabel("answer agreement with the dense model")
    left.set_title("Agreement against KL: perturbed vs pruned")
    left.legend(fontsize=7)
    right.plot([r["next_token_match"] for r in noise], [r["shared_prefix_tokens"] for r in noise], "o-", color="grey")
    right.set_xlabel("teacher-forced next-token match")
    right.set_ylabel("greedy tokens shared with the dense trace")
    right.set_title("How far a greedy trace stays on the dense path")
    fig.tight_layout()
    write_figure_atomic(path, fig)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=0, help="the first N test prompts (0: all 192)")
    parser.add_argument("--scales", default="0.005,0.01,0.02,0.04,0.08", help="weight-noise scales (x RMS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--traces", default="build/data/smollm", help="folder with SmolLM2's test.jsonl")
    parser.add_argument("--pruned", default=str(RESULTS / "quality-smollm-full-*.json"), help="pruned rows to plot")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "agreement-floor"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",") if s]
    model = ensure_smollm2_checkpoint()
    test = Path(args.traces) / "test.jsonl"
    if not test.is_file():
        from mucrasp.demo.text_traces import write_text_traces

        write_text_traces(model, Path(args.traces))
    started = time.perf_counter()
    dense = load_model(model).model
    processor = load_processor(model, vision=False)
    config = EvalConfig(pruned=model, dense=model, data=test, limit=args.items or None, ground_truth=True)
    reference = dense_reference(dense, processor, load_records(test, config.limit), False, config)
    reference.truths = true_answers_of([r.prompt for r in reference.records])

    perturbations = [("dense", lambda: dense), ("bf16 weights", lambda: rounded_to_bf16(dense))]
    perturbations += [(f"noise {s:g}", lambda s=s: with_weight_noise(dense, s, args.seed)) for s in scales]
    rows = []
    for label, make in perturbations:
        began = time.perf_counter()
        rows.append({"perturbation": label, **compare(dense, make(), processor, reference, False, config)})
        print(
            f"{label}: {json.dumps({k: rows[-1].get(k) for k, _, _ in COLUMNS})} ({time.perf_counter() - began:.0f}s)",
            flush=True,
        )
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, in {time.perf_counter() - started:.0f}s (`bench/agreement_floor.py"
        f"{' --items ' + str(args.items) if args.items else ''} --scales {args.scales}`), "
        f"{len(reference.records)} SmolLM2 test prompts."
    )
    out = Path(args.out)
    pruned = pruned_rows(args.pruned) if not args.items else []
    write_json_atomic(out.with_suffix(".json"), {"header": header, "rows": rows, "pruned": pruned})
    write_text_atomic(out.with_suffix(".md"), markdown(rows, header))
    plot(rows, pruned, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
