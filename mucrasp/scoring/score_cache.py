"""A content-keyed cache of scores files, so repeated deployments of a model skip the gradient pass.

The key covers what the scores depend on: the model's config and weight files (name, size, mtime),
the calibration file's bytes, the method and its options.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUCRASP_CACHE_DIR", Path.home() / ".cache" / "mucrasp"))


def scores_cache_key(model: Path, calibration: Path | None, method: str, options: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update((Path(model) / "config.json").read_bytes())
    for weights in sorted(Path(model).glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if calibration is not None:
        digest.update(Path(calibration).read_bytes())
    digest.update(json.dumps({"method": method, "options": options}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def cached_scores_path(cache_dir: Path, model: Path, calibration: Path | None, method: str, options: dict[str, Any]) -> Path:
    return Path(cache_dir) / "scores" / f"{method}-{scores_cache_key(model, calibration, method, options)}.scores"
