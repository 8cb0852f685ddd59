"""The deployment chain: plan → score → prune → export → smoke test, into one folder.

Export and the smoke test do not exist yet; the chain plans and prunes, then records the steps that
remain in report.json. With no model it builds the tiny demo model in a work area of the output.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mucrasp
from mucrasp.atomic_io import atomic_directory, check_output_dir, write_json_atomic
from mucrasp.checkpoint import MANIFEST_NAME
from mucrasp.errors import MucraspError
from mucrasp.planning import Plan, Workload, load_profile, plan_model
from mucrasp.pruning import PruneConfig, prune
from mucrasp.scoring.base import ProgressCallback, _no_progress

TARGETS = ("vllm", "onnx")
DEMO_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
REMAINING = ["score", "export", "smoke"]


@dataclass
class DeployConfig:
    profile: str | Path
    model: Path | None = None  # None: the demo model
    target: str = "vllm"
    out: Path | None = None  # None: ./deploy-<profile>
    overwrite: bool = False
    workload: Workload = field(default_factory=Workload)
    method: str = "magnitude"
    step: float = 0.05
    max_ratio: float = 0.5


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
    with atomic_directory(out, overwrite=config.overwrite) as staging:
        model = config.model
        if model is None:
            from mucrasp.tiny_models import save_tiny_model

            progress("building demo model", 0, 1)
            # The trained demo model is not bundled yet; a tiny random one keeps the chain runnable.
            model = save_tiny_model(DEMO_ARCHITECTURE, staging / ".work" / "demo-model")
            progress("building demo model", 1, 1)
            _step(steps, "model", "done", f"no --model: built the tiny {DEMO_ARCHITECTURE} demo model (random weights)")

        progress("plan", 0, 1)
        plan = plan_model(model, profile, config.workload, config.step, config.max_ratio)
        progress("plan", 1, 1)
        write_json_atomic(staging / "plan.json", plan.to_dict())
        if plan.ratio is None:
            raise MucraspError(plan.message)
        _step(steps, "plan", "done", plan.message)
        _step(steps, "score", "not implemented", "cached scoring does not exist yet; prune scores by magnitude itself")

        if plan.ratio == 0:
            shutil.copytree(model, staging / "model", ignore=shutil.ignore_patterns(".*"))
            write_json_atomic(staging / MANIFEST_NAME, {"ratio": 0.0, "method": None, "note": plan.message})
            _step(steps, "prune", "skipped", "ratio 0: the model was copied unpruned")
        else:
            pruned = prune(PruneConfig(model=Path(model), out=staging / "model", ratio=plan.ratio, method=config.method), progress=progress)
            shutil.copy2(pruned.out / MANIFEST_NAME, staging / MANIFEST_NAME)
            _step(steps, "prune", "done", f"{config.method} at ratio {plan.ratio:g}, achieved {pruned.outcome.ratio_achieved:.3f}")
        for name in ("export", "smoke"):
            _step(steps, name, "not implemented", f"{name} for target {config.target} does not exist yet")
        shutil.rmtree(staging / ".work", ignore_errors=True)

        write_json_atomic(staging / "report.json", _report(config, model, plan, steps))
    return DeployReport(out=out, plan=plan, steps=steps, remaining=list(REMAINING))


def _report(config: DeployConfig, model: Path, plan: Plan, steps: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "format_version": 1,
        "tool": f"mucrasp-deploy {mucrasp.__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": "demo" if config.model is None else str(Path(model).resolve()),
        "profile": plan.profile,
        "target": config.target,
        "ratio": plan.ratio,
        "steps": steps,
        "remaining": REMAINING,
        "complete": False,
    }
