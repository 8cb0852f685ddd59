"""Calibration and test files for a text model: its own greedy chains of thought on the word problems.

`python -m mucrasp.demo.text_traces --model DIR --out FOLDER` writes FOLDER/calibration.jsonl and
FOLDER/test.jsonl in the calibration format (image null, prompt, response = the dense model's trace);
`--recovery` writes FOLDER/recovery.jsonl, the recovery pool, next to them.
"""

from __future__ import annotations

import json
from pathlib import Path

from mucrasp.atomic_io import atomic_directory, write_text_atomic
from mucrasp.calibration.batches import load_processor
from mucrasp.calibration.records import CalibrationRecord
from mucrasp.demo.word_problems import split_prompts
from mucrasp.evaluation.generation import greedy_responses
from mucrasp.model_loading import load_model

MAX_NEW_TOKENS = 96


def write_text_traces(model_dir: Path, out_dir: Path, progress=None) -> Path:
    loaded = load_model(model_dir)
    tokenizer = load_processor(model_dir, vision=False)
    with atomic_directory(Path(out_dir), overwrite=True) as staging:
        for split in ("calibration", "test"):
            (staging / f"{split}.jsonl").write_text(_trace_lines(loaded.model, tokenizer, split, progress))
    return Path(out_dir)


def write_recovery_traces(model_dir: Path, out_dir: Path, progress=None) -> Path:
    """OUT_DIR/recovery.jsonl: the model's traces on the recovery pool, added beside the other splits."""
    loaded = load_model(model_dir)
    path = Path(out_dir) / "recovery.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, _trace_lines(loaded.model, load_processor(model_dir, vision=False), "recovery", progress))
    return path


def _trace_lines(model, tokenizer, split: str, progress) -> str:
    prompts = split_prompts(split)
    records = [CalibrationRecord(None, p, "", f"{split}:{i}") for i, p in enumerate(prompts)]
    traces = greedy_responses(model, tokenizer, records, vision=False, max_new_tokens=MAX_NEW_TOKENS, progress=progress)
    lines = [json.dumps({"image": None, "prompt": p, "response": t}) for p, t in zip(prompts, traces) if t.strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--recovery", action="store_true", help="write only recovery.jsonl, beside the other splits")
    args = parser.parse_args()
    write = write_recovery_traces if args.recovery else write_text_traces
    print(write(Path(args.model), Path(args.out), progress=lambda d, n, t: print(f"{d}: {n}/{t}", flush=True)))
