"""The deployment chain: plan → score (cached) → prune → export → smoke test, into one folder.

With no model it uses the bundled demo VLM and its calibration split. Scores are cached by content
(see `mucrasp.scoring.score_cache`), so a second deployment of the same model at another ratio or
for another profile skips the gradient pass. Steps that do not exist yet are recorded as remaining
in report.json.

The export goes to `<deploy>/export` and is smoke-tested there (`mucrasp.serve.run_smoke`) on the
target's own runtime; $MUCRASP_SMOKE_BACKEND (or `DeployConfig.smoke_backend`) picks another, e.g.
`transformers` for a fast check without a server.
"""

from __future__ import annotations

import datetime as _dt
import json
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
REMAINING: list[str] = []
SMOKE_BACKEND_ENV = "MUCRASP_SMOKE_BACKEND"
SPOT_CHECK_RECORDS = 16


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
    smoke_backend: str | None = None  # None: $MUCRASP_SMOKE_BACKEND, else the target's runtime
    smoke_requests: int = 8


@dataclass
class DeployReport:
    out: Path
    plan: Plan
    steps: list[dict[str, str]]
    remaining: list[str]
    smoke: dict[str, Any] | None = None  # the smoke test's report; None when it could not run


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
        smoke = _export_and_smoke(config, staging, model, calibration, cache_dir, steps, progress)
        report = _report(config, model, plan, ratio, steps)
        report["smoke"] = smoke
        report["complete"] = bool(smoke and smoke["passed"])
        write_json_atomic(staging / "report.json", report)
    return DeployReport(out=out, plan=plan, steps=steps, remaining=list(REMAINING), smoke=smoke)


def _export_and_smoke(config: DeployConfig, staging: Path, dense: Path, calibration: Path | None, cache_dir: Path,
                      steps: list[dict[str, str]], progress) -> dict[str, Any] | None:
    """Export `<staging>/model` for the target, store a spot-check set with it, and smoke-test it there."""
    import os

    from mucrasp.serve import SmokeConfig, run_smoke, write_spot_check

    model_dir = staging / "model"
    if not (model_dir / MANIFEST_NAME).is_file():  # ratio 0: the copied model has no manifest of its own
        shutil.copy2(staging / MANIFEST_NAME, model_dir / MANIFEST_NAME)
    progress("export", 0, 1)
    if config.target == "vllm":
        from mucrasp.export.vllm_checkpoint import export_vllm

        exported = export_vllm(model_dir, staging / "export")
        _step(steps, "export", "done", f"vLLM checkpoint ({exported.architecture}) in export/")
    else:
        from mucrasp.export.onnx_export import export_onnx

        exported = export_onnx(model_dir, staging / "export")
        _step(steps, "export", "done", f"ONNX graphs ({', '.join(exported.graphs)}) in export/")
    progress("export", 1, 1)
    spot_note = _store_spot_check(config, staging / "export", dense, calibration, cache_dir, write_spot_check)
    backend = config.smoke_backend or os.environ.get(SMOKE_BACKEND_ENV) or config.target
    # transformers cannot run ONNX graphs: it checks the checkpoint the graphs were traced from.
    smoke_dir = model_dir if (backend, config.target) == ("transformers", "onnx") else staging / "export"
    spot_data = staging / "export" / "spot_check.jsonl"
    progress("smoke", 0, 1)
    try:
        result = run_smoke(SmokeConfig(smoke_dir, backend=backend, requests=config.smoke_requests,
                                       processor_dir=model_dir, profile=config.profile, report=staging / "smoke.json",
                                       log_dir=staging, data=spot_data if spot_data.is_file() else None))
    except MucraspError as exc:
        _step(steps, "smoke", "failed", f"{backend}: {str(exc).replace(str(staging), str(config_out(staging)))}")
        return None
    progress("smoke", 1, 1)
    # The report was written in the staging folder; name the paths where they will be.
    data = json.loads(json.dumps(result.data).replace(str(staging.resolve()), str(config_out(staging).resolve())))
    write_json_atomic(staging / "smoke.json", data)
    t, m = result.data["throughput"], result.data["memory"]
    spot = result.data["spot_check"]
    spot_text = f"spot-check {spot['kind']} {spot['score']:.2f}" if "score" in spot else "no spot-check"
    summary = f"{backend}: {t['tokens_per_s']:.1f} tokens/s, {m['peak_gb']:.2f} GB {m['kind']}, {spot_text} ({spot_note})"
    if result.failures:
        summary += "; FAILED " + "; ".join(result.failures)
    _step(steps, "smoke", "passed" if result.passed else "failed", summary)
    return data


def config_out(staging: Path) -> Path:
    """The deployment folder a staging folder becomes (see atomic_directory: `.<name>.partial-XXXX`)."""
    return staging.parent / staging.name[1:].rsplit(".partial-", 1)[0]


def _store_spot_check(config: DeployConfig, export_dir: Path, dense: Path, calibration: Path | None, cache_dir: Path,
                      write_spot_check) -> str:
    """The demo: its held-out test split (exact answers). Others: the dense model's answers to calibration prompts."""
    from mucrasp.calibration.records import load_records

    if config.model is None:
        from mucrasp.demo.bundled import ensure_demo_data

        test = ensure_demo_data(cache_dir / "demo-data")["test"]
        write_spot_check(export_dir, load_records(test, SPOT_CHECK_RECORDS), "accuracy", f"demo test split {test}")
        return "demo test split"
    if calibration is None:
        return "no calibration prompts to ask"
    from mucrasp.serve.spot_check import dense_answers

    try:
        records = dense_answers(dense, load_records(calibration, SPOT_CHECK_RECORDS))
    except MucraspError as exc:
        return f"no spot-check: {exc}"
    write_spot_check(export_dir, records, "agreement", f"dense answers to calibration prompts of {calibration}")
    return "agreement with the dense model on calibration prompts (not held out)"


def _model_and_calibration(config: DeployConfig, cache_dir: Path, steps: list[dict[str, str]]) -> tuple[Path, Path | None]:
    if config.model is not None:
        return Path(config.model), config.calibration
    from mucrasp.demo.bundled import bundled_demo_model, ensure_demo_data

    model = bundled_demo_model()
    calibration = config.calibration or ensure_demo_data(cache_dir / "demo-data")["calibration"]
    source = f"--calib {config.calibration}" if config.calibration else "its calibration split"
    _step(steps, "model", "done", f"no --model: the bundled demo VLM ({model}), calibrated on {source}")
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
