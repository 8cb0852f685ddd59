"""The held-out reasoning set stored with an export, and how a backend's answers are scored on it.

`spot_check.jsonl` holds records in the calibration format (`image`, `prompt`, `response`), images
under `spot_check/`. `spot_check.json` says what `response` is:
- `accuracy`: the ground-truth chain of thought (the demo VLM's test split); the score is the share of
  final answers that match it exactly;
- `agreement`: the dense model's own greedy answer; the score is the share of final answers that
  agree with the dense model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mucrasp.atomic_io import write_json_atomic, write_text_atomic
from mucrasp.calibration.records import CalibrationRecord, load_records
from mucrasp.errors import MucraspError
from mucrasp.evaluation.answers import final_answer

SPOT_CHECK_FILE = "spot_check.jsonl"
SPOT_CHECK_META = "spot_check.json"
SPOT_CHECK_IMAGES = "spot_check"
KINDS = ("accuracy", "agreement")


@dataclass
class SpotCheckSet:
    records: list[CalibrationRecord]
    kind: str
    source: str


def write_spot_check(
    export_dir: str | Path, records: Sequence[CalibrationRecord], kind: str = "accuracy", source: str = ""
) -> Path:
    """Store `records` with the export (images copied in), so the smoke test needs nothing else."""
    if kind not in KINDS:
        raise MucraspError(f"unknown spot-check kind {kind!r} (choose from: {', '.join(KINDS)})")
    if not records:
        raise MucraspError("a spot-check set needs at least one record")
    export_dir = Path(export_dir)
    images = export_dir / SPOT_CHECK_IMAGES
    lines = []
    for i, record in enumerate(records):
        image = None
        if record.image is not None:
            images.mkdir(parents=True, exist_ok=True)
            name = f"{i:04d}{Path(record.image).suffix or '.png'}"
            shutil.copy2(record.image, images / name)
            image = f"{SPOT_CHECK_IMAGES}/{name}"
        lines.append(json.dumps({"image": image, "prompt": record.prompt, "response": record.response}))
    write_text_atomic(export_dir / SPOT_CHECK_FILE, "\n".join(lines) + "\n")
    write_json_atomic(export_dir / SPOT_CHECK_META, {"kind": kind, "records": len(records), "source": source})
    return export_dir / SPOT_CHECK_FILE


def load_spot_check(
    export_dir: str | Path, data: str | Path | None = None, limit: int | None = None
) -> SpotCheckSet | None:
    """The set given with --data, else the one stored with the export, else None."""
    if data is not None:
        path = Path(data)
        meta = path.with_suffix(".json")
    else:
        path = Path(export_dir) / SPOT_CHECK_FILE
        meta = Path(export_dir) / SPOT_CHECK_META
        if not path.is_file():
            return None
    # A --data file without a sidecar holds ground truth: that is what a user hands over.
    kind = json.loads(meta.read_text()).get("kind", "accuracy") if meta.is_file() else "accuracy"
    if kind not in KINDS:
        raise MucraspError(f"{meta}: unknown spot-check kind {kind!r}")
    return SpotCheckSet(records=load_records(path, max_samples=limit), kind=kind, source=str(path))


def dense_answers(
    dense_dir: str | Path, records: Sequence[CalibrationRecord], max_new_tokens: int = 128
) -> list[CalibrationRecord]:
    """The same prompts with the dense model's greedy responses: an `agreement` set for any model."""
    from mucrasp.calibration.batches import load_processor
    from mucrasp.checkpoint import load_pruned
    from mucrasp.evaluation.generation import greedy_responses
    from mucrasp.model_loading import read_model_config

    _, adapter = read_model_config(dense_dir)
    model = load_pruned(dense_dir)
    processor = load_processor(dense_dir, adapter.is_vision_language)
    responses = greedy_responses(
        model, processor, list(records), adapter.is_vision_language, max_new_tokens, batch_size=4
    )
    return [
        CalibrationRecord(r.image, r.prompt, response or "(empty)", r.where) for r, response in zip(records, responses)
    ]


def score_answers(spot: SpotCheckSet, responses: Sequence[str]) -> dict[str, Any]:
    matches = []
    for record, response in zip(spot.records, responses, strict=True):
        expected, got = final_answer(record.response), final_answer(response)
        matches.append(expected is not None and expected == got)
    return {
        "kind": spot.kind,
        "score": sum(matches) / len(matches),
        "matched": sum(matches),
        "records": len(matches),
        "source": spot.source,
    }
