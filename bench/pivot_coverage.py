"""How much of each model's calibration CoT the pivot windows cover, per window size.

    .venv/bin/python bench/pivot_coverage.py --calib-samples 24

A_pivot is a gradient over the tokens inside pivot windows only, so this share is how much signal
it has next to A_global (all response tokens). Writes bench/results/pivot_coverage.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from transformers import AutoConfig

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.atomic_io import write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import CalibrationSource, summarize
from mucrasp.calibration.pivots import PivotConfig
from mucrasp.demo.bundled import bundled_demo_model, ensure_demo_data
from mucrasp.models.smollm2 import ensure_smollm2_checkpoint

RESULTS = Path(__file__).parent / "results"


def calibration_sets(models: list[str]) -> list[tuple[str, Path, Path, bool]]:
    """(name, calibration file, model folder, is vision-language) for the chosen bundled models."""
    sets = []
    if "demo" in models:
        demo = ensure_demo_data(Path("build/data/demo"), ("calibration",))
        sets.append(("demo-vlm", Path(demo["calibration"]), bundled_demo_model(), True))
    if "smollm" in models:
        smollm = ensure_smollm2_checkpoint()
        traces = Path("build/data/smollm")
        if not (traces / "calibration.jsonl").is_file():
            from mucrasp.demo.text_traces import write_text_traces

            write_text_traces(smollm, traces)  # SmolLM2's own greedy traces: slow the first time
        sets.append(("smollm2-135m", traces / "calibration.jsonl", smollm, False))
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calib-samples", type=int, default=None, help="the first N calibration records (default: all)"
    )
    parser.add_argument("--windows", default="4,8,16")
    parser.add_argument("--models", nargs="+", default=["demo", "smollm"], choices=["demo", "smollm"])
    parser.add_argument("--out", default=str(RESULTS / "pivot_coverage"))
    args = parser.parse_args(argv)
    rows = []
    for name, path, model_dir, vision in calibration_sets(args.models):
        model_config = AutoConfig.from_pretrained(model_dir)
        source = CalibrationSource(path, Path(model_dir), args.calib_samples)
        for window in (int(w) for w in args.windows.split(",")):
            summary = summarize(source.batches(model_config, PivotConfig(window=window), vision))
            rows.append({"model": name, "window": window, **summary.as_dict()})
    header = f"Measured {time.strftime('%Y-%m-%d')} (`{' '.join(sys.argv)}`)."
    lines = [
        header,
        "",
        "| model | window | samples | response tokens | in pivot windows | share | samples without markers |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['window']} | {r['samples']} | {r['response_tokens']} | {r['pivot_window_tokens']} | "
        f"{r['pivot_fraction']:.2f} | {r['samples_without_markers']} |"
        for r in rows
    ]
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), {"header": header, "rows": rows})
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
