"""The deployment chain: plan → score (cached) → prune → export → smoke test, into one folder.

With no model it uses the bundled demo VLM and its calibration split. Scores are cached by content
(see `mucrasp.scoring.score_cache`), so a second deployment of the same model at another ratio or
for another profile skips the gradient pass. Steps that do not exist yet are recorded as remaining
in report.json.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mucrasp
from mucrasp.allocation import AllocationConfig
from mucrasp.atomic_io import atomic_directory, check_output_dir, write_json_atomic
from mucrasp.checkpoint import MANIFEST_NAME
from mucrasp.errors import MucraspError
from mucrasp.planning import Plan, Workload, load_profile, plan_model
from mucrasp.pruning import PruneConfig, prune
from mucrasp.scoring import get_method
from mucrasp.scoring.base import ProgressCallback, _no_progress
from mucrasp.scoring.score_cache import cached_scores_path, default_cache_dir
from mucrasp.scoring.score_job import ScoreConfig, score_model

TARGETS = ("vllm", "onnx")
REMAINING = ["export", "smoke"]


@dataclass
class DeployConfig:
    profile: str | Path
    model: Path | None = None  # None: the demo model
    target: str = "vllm"
    out: Path | None = None  # None: ./deploy-<profile>
    overwrite: bool = False
    workload: Workload = field(default_factory=Workload)
    method: str = "mucrasp"
    calibration: Path | None = None  # None: the demo's calibration split for the demo model
    ratio: float | None = None  # None: the planner's choice; a number overrides it (the plan is still written)
    step: float = 0.05
    max_ratio: float = 0.5
    cache_dir: Path | None = None  # scores and demo data; None: $MUCRASP_CACHE_DIR or ~/.cache/mucrasp


@dataclass
class DeployReport:
    out: Path
    plan: Plan
    steps: list[dict[str, str]]
    remaining: list[str]


def _step(steps: list[dict[str, str]], name: str, status: str, detail: str) -> None:
    steps.append({"step": name, "status": status, "detail": detail})


def run_chain(config: DeployConfig, progress: ProgressCallback = _no_progress) -> DeployReport:
    if config.target not in TARGETS:
        raise MucraspError(f"unknown target {config.target!r} (choose from: {', '.join(TARGETS)})")
    profile = load_profile(config.profile)
    out = Path(config.out or f"deploy-{profile.name}")
    check_output_dir(out, config.overwrite)
    steps: list[dict[str, str]] = []
    if config.ratio is not None:
        AllocationConfig(ratio=config.ratio).validate()
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    model, calibration = _model_and_calibration(config, cache_dir, steps)
    with atomic_directory(out, overwrite=config.overwrite) as staging:
        progress("plan", 0, 1)
        plan = plan_model(model, profile, config.workload, config.step, config.max_ratio)
        progress("plan", 1, 1)
        write_json_atomic(staging / "plan.json", plan.to_dict())
        ratio = config.ratio if config.ratio is not None else plan.ratio
        if ratio is None:
            raise MucraspError(plan.message)
        _step(steps, "plan", "done", plan.message if config.ratio is None else f"{plan.message}; --ratio {ratio:g} overrides it")

        if ratio == 0:
            shutil.copytree(model, staging / "model", ignore=shutil.ignore_patterns(".*"))
            write_json_atomic(staging / MANIFEST_NAME, {"ratio": 0.0, "method": None, "note": plan.message})
            _step(steps, "score", "skipped", "ratio 0: nothing to prune")
            _step(steps, "prune", "skipped", "ratio 0: the model was copied unpruned")
        else:
            method, scores = _scores(config, model, calibration, cache_dir, steps, progress)
            pruned = prune(PruneConfig(model=Path(model), out=staging / "model", ratio=ratio, method=method,
                                       scores=scores, calibration=calibration if scores is None else None), progress=progress)
            shutil.copy2(pruned.out / MANIFEST_NAME, staging / MANIFEST_NAME)
            _step(steps, "prune", "done", f"{method} at ratio {ratio:g}, achieved {pruned.outcome.ratio_achieved:.3f}")
        for name in REMAINING:
            _step(steps, name, "not implemented", f"{name} for target {config.target} does not exist yet")
        write_json_atomic(staging / "report.json", _report(config, model, plan, ratio, steps))
    return DeployReport(out=out, plan=plan, steps=steps, remaining=list(REMAINING))


def _model_and_calibration(config: DeployConfig, cache_dir: Path, steps: list[dict[str, str]]) -> tuple[Path, Path | None]:
    if config.model is not None:
        return Path(config.model), config.calibration
    from mucrasp.demo.bundled import bundled_demo_model, ensure_demo_data

    model = bundled_demo_model()
    calibration = config.calibration or ensure_demo_data(cache_dir / "demo-data")["calibration"]
    _step(steps, "model", "done", f"no --model: the bundled demo VLM ({model}) with its calibration split")
    return model, calibration


def _scores(config: DeployConfig, model: Path, calibration: Path | None, cache_dir: Path, steps, progress) -> tuple[str, Path | None]:
    """Score once per (model, calibration, method); later runs reuse the cached file."""
    method = config.method
    if get_method(method).needs_calibration and calibration is None:
        _step(steps, "score", "fallback", f"{method} needs --calib; scored by magnitude instead")
        return "magnitude", None
    path = cached_scores_path(cache_dir, model, calibration, method, {})
    if path.is_file():
        _step(steps, "score", "cached", f"{method} scores reused from {path}")
        return method, path
    score_model(ScoreConfig(model=model, out=path, calibration=calibration, method=method), progress=progress)
    _step(steps, "score", "done", f"{method} scores written to {path}")
    return method, path


def _report(config: DeployConfig, model: Path, plan: Plan, ratio: float, steps: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "format_version": 1,
        "tool": f"mucrasp-deploy {mucrasp.__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": "demo" if config.model is None else str(Path(model).resolve()),
        "profile": plan.profile,
        "target": config.target,
        "ratio": ratio,
        "planned_ratio": plan.ratio,
        "steps": steps,
        "remaining": REMAINING,
        "complete": False,
    }
