"""A content-keyed cache of scores files, so repeated deployments of a model skip the gradient pass.

The key is a SHA-256 over everything the scores depend on:
- the model: `config.json` and the bytes of every `*.safetensors` file (read in 16 MiB chunks, so
  memory stays flat; for a multi-GB model this reads every byte once per deployment, which costs
  seconds where the scoring pass it saves costs minutes; it is what makes the key content-based
  rather than trusting names, sizes or modification times);
- the calibration file's bytes and the bytes of every image its records name (a changed image
  changes the scores even when the JSONL is the same);
- the method's name and its *resolved* options (the pydantic model's dump, defaults included), so
  `--set window=16` and the default window get different entries;
- anything else that changes the inputs (the calibration sequence cap) and the package version,
  so scores written by an older mucrasp are not reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK = 16 * 2**20


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUCRASP_CACHE_DIR", Path.home() / ".cache" / "mucrasp"))


def _hash_file(digest: "hashlib._Hash", path: Path, label: str) -> None:
    digest.update(f"{label}\0{path.name}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    digest.update(b"\0")


def scores_cache_key(
    model: Path, calibration: Path | None, method: str, options: dict[str, Any], extra: dict[str, Any] | None = None
) -> str:
    """`options` should be the method's resolved options (`mucrasp.scoring.options.resolved_options`)."""
    import mucrasp

    digest = hashlib.sha256()
    model = Path(model)
    _hash_file(digest, model / "config.json", "config")
    for weights in sorted(model.glob("*.safetensors")):
        _hash_file(digest, weights, "weights")
    if calibration is not None:
        calibration = Path(calibration)
        _hash_file(digest, calibration, "calibration")
        from mucrasp.calibration.records import load_records

        # The records' own reader: the same image paths, and a bad record is its file:line error, not ours.
        images = dict.fromkeys(r.image for r in load_records(calibration) if r.image is not None)
        for image in images:
            _hash_file(digest, image, f"image {image}")
    digest.update(
        json.dumps(
            {"method": method, "options": options, "extra": extra or {}, "version": mucrasp.__version__},
            sort_keys=True,
            default=str,
        ).encode()
    )
    return digest.hexdigest()[:24]


def cached_scores_path(
    cache_dir: Path,
    model: Path,
    calibration: Path | None,
    method: str,
    options: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    key = scores_cache_key(model, calibration, method, options, extra)
    return Path(cache_dir) / "scores" / f"{method}-{key}.scores"
