"""Where the bundled demo model and its data live.

The trained demo VLM is committed at `models/demo-vlm/` in the repository (about 11 MB, bf16);
`make demo-model` reproduces it. It installs with the package as package data `mucrasp/demo_model/`
(pyproject.toml maps `mucrasp.demo_model` to that folder), so a non-editable `pip install` has it
too. Its calibration and test splits are regenerated on demand from their seeds, so they are not
committed.
"""

from __future__ import annotations

import os
from pathlib import Path

from mucrasp.demo.dataset import first_record, write_split
from mucrasp.errors import MucraspError

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A source checkout (and an editable install, which imports from it): the committed folder.
CHECKOUT_DEMO_MODEL = REPO_ROOT / "models" / "demo-vlm"


def installed_demo_model() -> Path:
    """Where an installed wheel keeps the demo model (package data next to the `mucrasp` package)."""
    return Path(__file__).resolve().parents[1] / "demo_model"


def bundled_demo_model() -> Path:
    """The demo model folder: $MUCRASP_DEMO_MODEL, else the installed package data, else the checkout's."""
    if os.environ.get("MUCRASP_DEMO_MODEL"):
        candidates = [Path(os.environ["MUCRASP_DEMO_MODEL"])]
    else:
        candidates = [installed_demo_model(), CHECKOUT_DEMO_MODEL]
    for path in candidates:
        if (path / "model.safetensors").is_file():
            return path
    looked = " or ".join(str(p) for p in candidates)
    raise MucraspError(
        f"the bundled demo model is missing (looked in {looked}): reinstall mucrasp-deploy, "
        "run `make demo-model` in a checkout, or pass --model"
    )


def ensure_demo_data(root: Path, splits: tuple[str, ...] = ("calibration", "test")) -> dict[str, Path]:
    """The named splits (calibration: 128, test: 500, validation: 200) as JSONL files under `root`: written once,
    rewritten if an older generator wrote them."""
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
