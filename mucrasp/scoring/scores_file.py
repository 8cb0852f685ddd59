"""The scores file: what `mucrasp-deploy score` measured, reusable by `prune --scores` at any ratio.

A safetensors file: tensors `unit/<component>/<mlp|attn>/<layer>`, `layer/<statistic>` and
`per_layer/<name>/<layer>` (what a method needs at prune time, e.g. FLAP's calibration means), plus
JSON metadata (method, architecture, layer widths, details). The layer widths let `prune` refuse
scores taken on a different model.

The file is written under a unique temporary name beside the target and renamed into place, so two
writers never share a half-written file; `scores_lock` lets one `score` run at a time own a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from mucrasp.errors import MucraspError
from mucrasp.scoring.base import ScoreComponents
from mucrasp.units import UNIT_TYPES, UnitScores

FORMAT = "mucrasp-scores"
VERSION = "1"


def save_scores(
    path: str | Path, components: ScoreComponents, architecture: str, layer_widths: list[tuple[int, int]]
) -> Path:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, scores in components.unit_scores.items():
        for unit_type in UNIT_TYPES:
            for layer, values in enumerate(scores.of(unit_type)):
                tensors[f"unit/{name}/{unit_type}/{layer}"] = values.detach().double().contiguous().cpu()
    for name, values in components.layer_stats.items():
        tensors[f"layer/{name}"] = values.detach().double().contiguous().cpu()
    for name, per_layer in components.per_layer.items():
        for layer, values in enumerate(per_layer):
            tensors[f"per_layer/{name}/{layer}"] = values.detach().double().contiguous().cpu()
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "method": components.method,
        "architecture": architecture,
        "layer_widths": json.dumps([list(w) for w in layer_widths]),
        "details": json.dumps(components.details, default=str),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target under a name no other writer uses, then rename: an interrupted run
    # never leaves half a scores file, and two runs never write into the same temporary file.
    fd, staging_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    staging = Path(staging_name)
    try:
        save_file(tensors, str(staging), metadata=metadata)
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def scores_lock(path: str | Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `path` (an exclusive, non-blocking `flock`) for one scoring run.

    A second run for the same path while the first holds it fails at once with one error line
    rather than waiting: it would compute the same scores again (and its `exists` check would then
    refuse to replace them anyway). The lock is released when the process ends, however it ends, so
    a crash leaves no stale lock; the empty, hidden lock file stays (deleting it could let a third
    run lock a different file than the second).
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    handle = open(lock, "a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MucraspError(
                f"{path} is being written by another run (lock {lock} is held); wait for it to finish"
            ) from None
        yield
    finally:
        handle.close()


def load_scores(path: str | Path) -> tuple[ScoreComponents, dict[str, Any]]:
    """The stored components, and the metadata (architecture, layer_widths) to check them against."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MucraspError(f"scores file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise MucraspError(f"{path} is not a scores file ({str(exc).splitlines()[0]})") from None
    if metadata.get("format") != FORMAT:
        raise MucraspError(f"{path} is not a scores file (written by `mucrasp-deploy score`)")
    if metadata.get("version") != VERSION:
        raise MucraspError(f"{path}: scores file version {metadata.get('version')} is not supported")
    widths = [tuple(w) for w in json.loads(metadata["layer_widths"])]
    unit_scores: dict[str, UnitScores] = {}
    for name in sorted({key.split("/")[1] for key in tensors if key.startswith("unit/")}):
        unit_scores[name] = UnitScores(
            [tensors[f"unit/{name}/mlp/{i}"] for i in range(len(widths))],
            [tensors[f"unit/{name}/attn/{i}"] for i in range(len(widths))],
        )
    layer_stats = {key.split("/", 1)[1]: value for key, value in tensors.items() if key.startswith("layer/")}
    per_layer = {
        name: [tensors[f"per_layer/{name}/{i}"] for i in range(len(widths))]
        for name in sorted({key.split("/")[1] for key in tensors if key.startswith("per_layer/")})
    }
    components = ScoreComponents(
        metadata["method"], unit_scores, layer_stats, json.loads(metadata["details"]), per_layer=per_layer
    )
    return components, {"architecture": metadata["architecture"], "layer_widths": widths}


def check_scores_match(
    path: str | Path, stored: dict[str, Any], architecture: str, layer_widths: list[tuple[int, int]]
) -> None:
    if stored["architecture"] != architecture or [tuple(w) for w in stored["layer_widths"]] != [
        tuple(w) for w in layer_widths
    ]:
        raise MucraspError(
            f"{path} was scored on a different model ({stored['architecture']}, widths {stored['layer_widths']}); "
            "score this model again"
        )
