"""Where the bundled demo model and its data live.

The trained demo VLM is committed at `models/demo-vlm/` in the repository (about 11 MB, bf16);
`make demo-model` reproduces it. Its calibration and test splits are regenerated on demand from
their seeds, so they are not committed.
"""

from __future__ import annotations

import os
from pathlib import Path

from mucrasp.demo.dataset import first_record, write_split
from mucrasp.errors import MucraspError

REPO_ROOT = Path(__file__).resolve().parents[2]


def bundled_demo_model() -> Path:
    path = Path(os.environ.get("MUCRASP_DEMO_MODEL", REPO_ROOT / "models" / "demo-vlm"))
    if not (path / "model.safetensors").is_file():
        raise MucraspError(f"the demo model is missing at {path}: run `make demo-model` (or pass --model)")
    return path


def ensure_demo_data(root: Path, splits: tuple[str, ...] = ("calibration", "test")) -> dict[str, Path]:
    """The named splits (calibration: 128, test: 500, validation: 200) as JSONL files under `root`: written once, rewritten if an older generator wrote them."""
    paths = {}
    for split in splits:
        jsonl = Path(root) / split / f"{split}.jsonl"
        if not jsonl.is_file() or not _matches_generator(jsonl, split):
            write_split(split, jsonl.parent)
        paths[split] = jsonl
    return paths


def _matches_generator(jsonl: Path, split: str) -> bool:
    """False when the file was written by an older scene generator (its first record differs)."""
    with jsonl.open() as lines:
        return lines.readline().strip() == first_record(split)
