"""Write the demo splits as calibration-format JSONL files with PNG images.

Each split draws scenes from its own seed range, so no split can share a seed with another:
train is streamed from [0, 1e6) during training and never written, calibration is [1e6, 1e6+128),
test is [2e6, 2e6+n), validation is [3e6, 3e6+200), recovery (self-calibration's distillation pool for
`recover`) is [4e6, 4e6+256). The test split is for evaluation only: never calibrate or tune on it.
Method choices (ablations, defaults) are made on validation.
"""

from __future__ import annotations

import json
from pathlib import Path

from mucrasp.atomic_io import atomic_directory
from mucrasp.demo.scenes import Scene, make_scene

SPLIT_SEED_BASE = {
    "train": 0,
    "calibration": 1_000_000,
    "test": 2_000_000,
    "validation": 3_000_000,
    "recovery": 4_000_000,
}
SPLIT_SIZES = {"calibration": 128, "test": 500, "validation": 200, "recovery": 256}


def split_seeds(split: str, n: int | None = None) -> range:
    base = SPLIT_SEED_BASE[split]
    return range(base, base + (n if n is not None else SPLIT_SIZES[split]))


def scene_record(scene: Scene, image_path: str | None) -> dict:
    # Exactly the calibration fields; the answer is the end of `response` (see scenes.extract_answer).
    return {"image": image_path, "prompt": scene.question, "response": scene.response}


def _image_name(split: str, seed: int) -> str:
    return f"images/{split}-{seed}.png"


def first_record(split: str) -> str:
    """The first JSONL line `write_split` writes for `split`: enough to tell whether a file is current."""
    seed = split_seeds(split)[0]
    return json.dumps(scene_record(make_scene(seed), _image_name(split, seed)))


def write_split(split: str, out_dir: Path, n: int | None = None, overwrite: bool = True) -> Path:
    """Write `<out_dir>/<split>.jsonl` and `<out_dir>/images/`, atomically; returns the JSONL path."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        lines = []
        for seed in split_seeds(split, n):
            scene = make_scene(seed)
            name = _image_name(split, seed)
            scene.image.save(staging / name, format="PNG")
            lines.append(json.dumps(scene_record(scene, name)))
        (staging / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return out_dir / f"{split}.jsonl"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a split of the synthetic visual-reasoning data.")
    parser.add_argument("split", choices=sorted(SPLIT_SIZES))
    parser.add_argument("--out", required=True)
    parser.add_argument("-n", type=int, default=None)
    args = parser.parse_args()
    print(write_split(args.split, Path(args.out), args.n))
