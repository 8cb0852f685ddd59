"""The deployment chain: plan → score (cached) → prune → export → smoke test, into one folder.

The chain is a list of steps over one `DeployContext`: each step reads what earlier steps put there
and adds its own result (and a line in the report), so a new step (recover, quantize) is one
function plus one line in `BUILD_STEPS` or `CHECK_STEPS`.

- `BUILD_STEPS` fill a staging folder that replaces the deployment folder in one rename
  (`atomic_directory`): the model, its manifest, its export and the plan appear together or not at
  all.
- `CHECK_STEPS` then run in the deployment folder itself (the smoke test at the plan's context,
  concurrency and target, an optional eval, the model card with their figures, the report), so every
  path they record is the final one and each file is written once; `report.json` is written last
  and says `complete: true` when every step passed. A folder without report.json is incomplete;
  Ctrl-C during these steps removes it.

With no model it uses the bundled demo VLM and its calibration split; a model given without a
calibration file writes its own (`self_calibration_step`: the dense model's answers to bundled
prompts, with a disjoint spot-check set), and no method is ever swapped for another. Scores are cached by content
(see `mucrasp.scoring.score_cache`), so a second deployment of the same model at another ratio or
for another profile skips the gradient pass. The profile is loaded once and the model at most once
for scoring and pruning together.

The export goes to `<deploy>/export` and is smoke-tested there (`mucrasp.serve.run_smoke`) on the
target's own runtime; $MUCRASP_SMOKE_BACKEND (or `DeployConfig.smoke_backend`) picks another, e.g.
`transformers` for a fast check without a server.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field

import mucrasp
from mucrasp.allocation import Ratio
from mucrasp.calibration.self_calibration import SelfCalibrationConfig
from mucrasp.devices import DeviceSpec
from mucrasp.errors import MucraspError
from mucrasp.planning.profiles import Profile
from mucrasp.planning.workload import Workload
from mucrasp.validation import JobConfig

if TYPE_CHECKING:
    from mucrasp.planning.planner import Plan
    from mucrasp.serve.config import Planned

TARGETS = ("vllm", "onnx")
SMOKE_BACKEND_ENV = "MUCRASP_SMOKE_BACKEND"
SPOT_CHECK_RECORDS = 16
NOT_ENFORCED = "--no-enforce-target was given"
MANIFEST_NAME = "pruning.json"  # as mucrasp.checkpoint writes it (not imported: it loads torch)


class DeployConfig(JobConfig):
    profile: str | Path | Profile  # a name, a YAML path or a loaded profile
    model: Path | None = None  # None: the demo model
    target: Literal["vllm", "onnx"] = "vllm"
    out: Path | None = None  # None: ./deploy-<profile>
    overwrite: bool = False
    workload: Workload = Field(default_factory=Workload)
    method: str = "mucrasp"
    calibration: Path | None = None  # None: the demo's calibration split for the demo model
    ratio: Ratio | None = None  # None: the planner's choice; a number overrides it (the plan is still written)
    # The export's weight format (mucrasp.planning.weight_formats); None: the plan's choice among the target's.
    weights: str | None = None
    step: float = 0.05
    max_ratio: float = 0.5
    cache_dir: Path | None = None  # scores and demo data; None: $MUCRASP_CACHE_DIR or ~/.cache/mucrasp
    smoke_backend: str | None = None  # None: $MUCRASP_SMOKE_BACKEND, else the target's runtime
    smoke_requests: int = Field(8, ge=1)
    max_seq_len: int | None = Field(None, ge=1)  # calibration sequences are cut to this; None: the model's context
    # The workload's target tokens/s as a smoke-test threshold. None: only on a GPU host (the plan's
    # figure is for the profile's GPU; a CPU host measures something else), True/False: always/never.
    enforce_target: bool | None = None
    # A held-out set for `mucrasp-deploy eval` after the smoke test (eval.json); None: no eval step.
    eval_data: Path | None = None
    eval_limit: int | None = Field(None, ge=1)
    eval_ground_truth: bool = False  # the set's responses end in true answers: report accuracy
    eval_max_new_tokens: int = Field(96, ge=1)
    # Distil the dense model into the pruned one for this many steps after pruning (mucrasp.recovery); 0: none.
    recover_steps: int = Field(0, ge=0)
    # Refit o_proj/down_proj on the calibration set after slicing (mucrasp.reconstruction). None: whenever the
    # chain has calibration data (--calib, or the self-calibration a data-driven method makes).
    reconstruct: bool | None = None
    # No --calib for a --model: sizes of the set the dense model writes itself (calibration.self_calibration).
    self_calibration: SelfCalibrationConfig = Field(default_factory=SelfCalibrationConfig)
    # Where scoring, pruning and eval run (mucrasp.devices). The dtype is `workload.dtype`, with one meaning:
    # the dtype the model runs in and is written in, and the one the planner sizes serving for; None: the
    # checkpoint's own dtype for the model (auto), the profile's best 16-bit dtype for the plan.
    device: DeviceSpec = "auto"


def _no_progress(description: str, done: int, total: int) -> None:
    return None


@dataclass
class DeployContext:
    """Everything the steps share. `folder` is where steps write: the staging folder while building,
    the deployment folder (`out`) once it is in place."""

    config: DeployConfig
    out: Path
    profile: Profile
    cache_dir: Path
    model_dir: Path
    calibration: Path | None
    progress: Callable[[str, int, int], None] = _no_progress
    staging: Path | None = None
    plan: Plan | None = None
    ratio: float | None = None
    weights: str | None = None  # the export's --weights; None: the export's dense default
    loaded: Any = None  # the dense model, loaded once for scoring and pruning (pruning slices it)
    method: str | None = None  # the method that scored
    spot_check: Path | None = None  # held-out prompts with the dense model's answers (self-calibration)
    self_calibration: dict[str, Any] | None = None  # what self-calibration made, for report.json
    scores: Path | None = None
    spot_note: str = ""
    smoke: dict[str, Any] | None = None
    exported: Any = None  # the vLLM export (its `card` writes README.md after the smoke test)
    eval_report: dict[str, Any] | None = None
    steps: list[dict[str, str]] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.staging if self.staging is not None else self.out

    def record(self, name: str, status: str, detail: str) -> None:
        self.steps.append({"step": name, "status": status, "detail": detail})

    @property
    def run_dtype(self) -> str:
        """The --dtype the chain's model runs in (`DeployConfig.device`'s comment says why this one)."""
        return self.config.workload.dtype or "auto"

    def load_dense(self) -> Any:
        if self.loaded is None:
            from mucrasp.model_loading import load_model

            self.progress("loading model", 0, 1)
            self.loaded = load_model(self.model_dir, dtype=self.run_dtype, device=self.config.device)
            self.progress("loading model", 1, 1)
        return self.loaded


@dataclass
class DeployReport:
    out: Path
    plan: Plan
    steps: list[dict[str, str]]
    smoke: dict[str, Any] | None = None  # the smoke test's report; None when it could not run


def plan_step(ctx: DeployContext) -> None:
    from mucrasp.atomic_io import write_json_atomic
    from mucrasp.planning.planner import plan_model

    c = ctx.config
    if c.weights is not None:  # before any work: a name the target's export does not write is bad input
        from mucrasp.planning.weight_formats import check_export_weights

        check_export_weights(c.target, c.weights)
    ctx.progress("plan", 0, 1)
    ctx.plan = plan_model(ctx.model_dir, ctx.profile, c.workload, c.step, c.max_ratio, c.weights, runtime=c.target)
    ctx.progress("plan", 1, 1)
    write_json_atomic(ctx.folder / "plan.json", ctx.plan.to_dict())
    ctx.ratio = c.ratio if c.ratio is not None else ctx.plan.ratio
    # A dense plan keeps the export's own dtype (the ONNX export writes fp32, not the plan's bf16).
    ctx.weights = c.weights or (ctx.plan.weights if ctx.plan.quantized else None)
    if ctx.ratio is None:
        raise MucraspError(ctx.plan.message)
    ctx.record(
        "plan",
        "done",
        ctx.plan.message if c.ratio is None else f"{ctx.plan.message}; --ratio {ctx.ratio:g} overrides it",
    )


def self_calibration_step(ctx: DeployContext) -> None:
    """No --calib for a model of the user's, and scoring or recovery needs data: the dense model answers the
    bundled prompts itself (calibration and a disjoint spot-check set), cached by the model's content."""
    from mucrasp.scoring import get_method

    c = ctx.config
    needed = ctx.ratio != 0 and (get_method(c.method).needs_calibration or c.recover_steps > 0 or bool(c.reconstruct))
    if ctx.calibration is not None or not needed:
        return
    from mucrasp.calibration.self_calibration import self_calibrate

    made = self_calibrate(ctx.model_dir, ctx.cache_dir, c.self_calibration, load=ctx.load_dense, progress=ctx.progress)
    ctx.calibration, ctx.spot_check, ctx.self_calibration = made.calibration, made.spot_check, made.info
    ctx.record("calibration", "cached" if made.cached else "done", made.describe())


def score_step(ctx: DeployContext) -> None:
    """Score once per (model, calibration, method, options, version); later runs reuse the cached file."""
    from mucrasp.scoring import get_method
    from mucrasp.scoring.options import resolved_options
    from mucrasp.scoring.score_cache import cached_scores_path
    from mucrasp.scoring.score_job import ScoreConfig, score_model

    if ctx.ratio == 0:
        ctx.record("score", "skipped", "ratio 0: nothing to prune")
        return
    method = get_method(ctx.config.method)
    # No fallback: a method that needs data and got no --calib was given the self-calibration set.
    ctx.method = method.name
    options = resolved_options(method.config_class, {}, method.name)
    extra = {"max_seq_len": ctx.config.max_seq_len, "dtype": ctx.run_dtype}  # bf16 and fp32 scores differ
    path = cached_scores_path(ctx.cache_dir, ctx.model_dir, ctx.calibration, method.name, options, extra)
    ctx.scores = path
    if path.is_file():
        ctx.record("score", "cached", f"{method.name} scores reused from {path}")
        return
    score_model(
        ScoreConfig(
            model=ctx.model_dir,
            out=path,
            calibration=ctx.calibration,
            method=method.name,
            max_seq_len=ctx.config.max_seq_len,
            device=ctx.config.device,
            dtype=ctx.run_dtype,
        ),
        progress=ctx.progress,
        loaded=ctx.load_dense(),
    )
    ctx.record("score", "done", f"{method.name} scores written to {path}")


def prune_step(ctx: DeployContext) -> None:
    """Prune into `<folder>/model` (its manifest written once, there); `<folder>/pruning.json` is a link to it."""
    import shutil

    from mucrasp.atomic_io import write_json_atomic

    model_dir = ctx.folder / "model"
    if ctx.ratio == 0:
        shutil.copytree(ctx.model_dir, model_dir, ignore=shutil.ignore_patterns(".*", MANIFEST_NAME))
        write_json_atomic(model_dir / MANIFEST_NAME, {"ratio": 0.0, "method": None, "note": ctx.plan.message})
        ctx.record("prune", "skipped", "ratio 0: the model was copied unpruned")
    else:
        from mucrasp.pruning import PruneConfig, prune_loaded
        from mucrasp.scoring.scores_file import load_scores
        from mucrasp.serve.backends import AMX_INT8_BLOCK_N

        # vLLM's int8 GEMM on AMX CPUs packs a merged gate/up only in rows of 32 (check_cpu_int8_widths): MLP
        # widths in 16s keep a w8a8 export servable there, and cost a GPU nothing.
        int8_vllm = ctx.weights == "w8a8" and ctx.config.target == "vllm"
        config = PruneConfig(
            **({"align": AMX_INT8_BLOCK_N // 2} if int8_vllm else {}),
            model=ctx.model_dir,
            out=model_dir,
            ratio=ctx.ratio,
            method=ctx.method,
            scores=ctx.scores,
            calibration=ctx.calibration,  # the scores come from the cache: only reconstruction reads it
            reconstruct=ctx.config.reconstruct,
            max_seq_len=ctx.config.max_seq_len,
            tp=ctx.profile.gpu_count,  # kept KV groups divide by the --tensor-parallel-size the smoke test uses
            device=ctx.config.device,
            dtype=ctx.run_dtype,
        )
        scores, stored = load_scores(ctx.scores) if ctx.scores is not None else (None, None)
        pruned = prune_loaded(config, ctx.load_dense(), ctx.progress, scores=scores, stored=stored)
        ctx.loaded = None  # sliced in place: no longer the dense model
        ctx.record(
            "prune", "done", f"{ctx.method} at ratio {ctx.ratio:g}, achieved {pruned.outcome.ratio_achieved:.3f}"
        )
    _link(model_dir / MANIFEST_NAME, ctx.folder / MANIFEST_NAME)


def recover_step(ctx: DeployContext) -> None:
    """`--recover-steps N`: distil the dense model into the pruned one (mucrasp.recovery) on the user's
    --calib traces, or with none on self-calibration's recovery prompts (fresh traces, not the pruning set's);
    the recovered checkpoint (same widths, pruning.json with a `recovery` entry) replaces model/."""
    import shutil

    c = ctx.config
    if not c.recover_steps:
        return
    if ctx.ratio == 0:
        ctx.record("recover", "skipped", "ratio 0: nothing was pruned")
        return
    from mucrasp.recovery import RecoverConfig, recover

    model_dir, recovered = ctx.folder / "model", ctx.folder / "model.recovered"
    report = recover(
        RecoverConfig(
            pruned=model_dir,
            dense=ctx.model_dir,
            out=recovered,
            calibration=None if ctx.self_calibration is not None else ctx.calibration,
            trace_max_new_tokens=c.self_calibration.max_new_tokens,
            steps=c.recover_steps,
            max_seq_len=c.max_seq_len,
            cache_dir=ctx.cache_dir,
        ),
        progress=ctx.progress,
    )
    (ctx.folder / MANIFEST_NAME).unlink()
    shutil.rmtree(model_dir)
    os.replace(recovered, model_dir)
    _link(model_dir / MANIFEST_NAME, ctx.folder / MANIFEST_NAME)
    r = report.result
    ctx.record(
        "recover",
        "done",
        f"{len(r.losses)} distillation steps on {r.samples} traces, loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f} "
        f"({r.seconds_per_step:.2f} s/step)",
    )


def _link(source: Path, link: Path) -> None:
    """The deployment folder's pruning.json is the model's own file (a hard link), not a copy."""
    try:
        os.link(source, link)
    except OSError:  # a filesystem without hard links
        link.symlink_to(os.path.relpath(source, link.parent))


def export_step(ctx: DeployContext) -> None:
    model_dir, export_dir = ctx.folder / "model", ctx.folder / "export"
    ctx.progress("export", 0, 1)
    if ctx.config.target == "vllm":
        from mucrasp.export.vllm_checkpoint import export_vllm

        # No README.md yet: the card step writes it once, with the smoke test's (and eval's) figures.
        exported = export_vllm(
            model_dir,
            export_dir,
            write_card=False,
            weights=ctx.weights or "bf16",
            tensor_parallel_size=ctx.profile.gpu_count,
        )
        ctx.exported = exported
        ctx.record("export", "done", f"vLLM checkpoint ({exported.architecture}) in export/")
    else:
        from mucrasp.export.onnx_export import export_onnx, nearest_image_size

        # the vision graph is traced at one grid: the workload's image size, so its images are served as planned
        image_size = nearest_image_size(model_dir, ctx.config.workload.image_size)
        exported = export_onnx(model_dir, export_dir, weights=ctx.weights, image_size=image_size)
        ctx.record("export", "done", f"ONNX graphs ({', '.join(exported.graphs)}) in export/")
    ctx.progress("export", 1, 1)


def spot_check_step(ctx: DeployContext) -> None:
    """The demo: its held-out test split (exact answers). Others: the dense model's answers to calibration prompts."""
    from mucrasp.calibration.records import load_records
    from mucrasp.serve import write_spot_check

    export_dir = ctx.folder / "export"
    if ctx.config.model is None:
        from mucrasp.demo.bundled import ensure_demo_data

        test = ensure_demo_data(ctx.cache_dir / "demo-data")["test"]
        write_spot_check(export_dir, load_records(test, SPOT_CHECK_RECORDS), "accuracy", f"demo test split {test}")
        ctx.spot_note = "demo test split"
        return
    if ctx.spot_check is not None:  # self-calibration's held-out prompts, already answered by the dense model
        write_spot_check(export_dir, load_records(ctx.spot_check), "agreement", f"self-calibration {ctx.spot_check}")
        ctx.spot_note = "agreement with the dense model on held-out self-calibration prompts"
        return
    if ctx.calibration is None:
        ctx.spot_note = "no calibration prompts to ask"
        return
    from mucrasp.serve.spot_check import dense_answers

    try:
        records = dense_answers(ctx.model_dir, load_records(ctx.calibration, SPOT_CHECK_RECORDS))
    except MucraspError as exc:
        ctx.spot_note = f"no spot-check: {exc}"
        return
    write_spot_check(export_dir, records, "agreement", f"dense answers to calibration prompts of {ctx.calibration}")
    ctx.spot_note = "agreement with the dense model on calibration prompts (not held out)"


def _planned(ctx: DeployContext) -> Planned:
    """The plan's figures for the ratio actually pruned at, and whether its target is checked here."""
    from mucrasp.serve.config import Planned
    from mucrasp.serve.memory import gpu_available

    w, c = ctx.config.workload, ctx.config
    weights = ctx.weights or ctx.plan.dtype  # the row of the format exported (dense: the plan's dtype)
    row = next((r for r in ctx.plan.rows if abs(r.ratio - ctx.ratio) < 1e-9 and r.weights == weights), None)
    enforced = bool(w.target_tokens_per_s) and (c.enforce_target if c.enforce_target is not None else gpu_available())
    note = ""
    if w.target_tokens_per_s and not enforced:
        note = (
            NOT_ENFORCED
            if c.enforce_target is False
            else f"measured on a host without a GPU; the target is the planner's figure for {ctx.profile.name} "
            "(--enforce-target checks it here anyway)"
        )
    return Planned(
        profile=ctx.profile.name,
        ratio=ctx.ratio,
        max_model_len=w.max_model_len,
        concurrency=w.concurrency,
        target_tokens_per_s=w.target_tokens_per_s,
        tokens_per_s=row.decode_tokens_per_s if row else None,
        memory_gb=row.total_gb if row else None,
        budget_gb=ctx.profile.budget_bytes / 1e9,
        enforced=enforced,
        note=note,
        ttft_s=row.ttft_s if row else None,
        image_size=w.image_size,
    )


def smoke_step(ctx: DeployContext) -> None:
    """Smoke-test the export where it now lies, at the plan's context and concurrency, its target tokens/s
    a threshold (see `DeployConfig.enforce_target`); smoke.json is written once, by run_smoke."""
    from mucrasp.serve import SmokeConfig, Thresholds, run_smoke

    folder, c, w = ctx.folder, ctx.config, ctx.config.workload
    backend = c.smoke_backend or os.environ.get(SMOKE_BACKEND_ENV) or c.target
    # transformers cannot run ONNX graphs: it checks the checkpoint the graphs were traced from.
    smoke_dir = folder / "model" if (backend, c.target) == ("transformers", "onnx") else folder / "export"
    spot_data = folder / "export" / "spot_check.jsonl"
    planned = _planned(ctx)
    ctx.progress("smoke", 0, 1)
    try:
        result = run_smoke(
            SmokeConfig(
                smoke_dir,
                backend=backend,
                # at least one request per planned sequence, so all of them are in flight at once
                requests=max(c.smoke_requests, w.concurrency),
                concurrency=w.concurrency,
                max_model_len=w.max_model_len,
                image_size=w.image_size,
                thresholds=Thresholds(min_tokens_per_s=w.target_tokens_per_s if planned.enforced else None),
                processor_dir=folder / "model",
                profile=ctx.profile,
                report=folder / "smoke.json",
                log_dir=folder,
                data=spot_data if spot_data.is_file() else None,
                planned=planned,
            )
        )
    except MucraspError as exc:
        ctx.record("smoke", "failed", f"{backend}: {exc}")
        return
    ctx.progress("smoke", 1, 1)
    ctx.smoke = result.data
    ctx.record("smoke", "passed" if result.passed else "failed", smoke_summary(result.data, backend, ctx.spot_note))


def smoke_summary(data: dict[str, Any], backend: str, spot_note: str = "") -> str:
    """One line: measured, with the plan's figure next to each."""
    m, spot = data["memory"], data["spot_check"]
    p = data.get("planned_vs_measured") or {}
    tps, mem = p.get("tokens_per_s", {}), p.get("memory_gb", {})
    ctx_len, conc = p.get("max_model_len", {}), p.get("concurrency", {})

    def planned(value: Any, unit: str = "") -> str:
        if value is None:
            return "-"
        return f"{value:,.0f}{unit}" if value >= 1000 else f"{value:.4g}{unit}"

    target = ""
    if tps.get("target"):
        why = "--no-enforce-target" if tps["note"] == NOT_ENFORCED else "no GPU here"
        target = f", target {tps['target']:g} {'checked' if tps['enforced'] else f'not checked ({why})'}"
    parts = [
        f"{backend}: {data['throughput']['tokens_per_s']:.1f} tokens/s (planned {planned(tps.get('planned'))}{target})",
        f"{m['peak_gb']:.2f} GB {m['kind']} (planned {planned(mem.get('planned'), ' GB')}, "
        f"limit {planned(mem.get('limit'), ' GB')})",
    ]
    if ctx_len:
        capped = " (capped at the model's positions)" if ctx_len["served"] < ctx_len["planned"] else ""
        parts.append(f"context {ctx_len['served']} of planned {ctx_len['planned']}{capped}")
        parts.append(f"concurrency {conc['served']} of planned {conc['planned']}")
    ttft = p.get("ttft_s") or {}
    if ttft.get("measured_p50") is not None:
        sizes = ttft.get("image_size", {})
        at = f" at {sizes['served']} px" if sizes.get("served") else ""
        assumed = "" if sizes.get("planned") or not sizes.get("served") else ", for no image: plan with --image-size"
        plan_ttft = planned(ttft.get("planned"), " s")
        parts.append(f"TTFT p50 {ttft['measured_p50']:.3g} s{at} (planned {plan_ttft}{assumed})")
    spot_text = f"spot-check {spot['kind']} {spot['score']:.2f}" if "score" in spot else "no spot-check"
    parts.append(f"{spot_text} ({spot_note})" if spot_note else spot_text)
    summary = ", ".join(parts)
    if data["failures"]:
        summary += "; FAILED " + "; ".join(data["failures"])
    return summary


def eval_step(ctx: DeployContext) -> None:
    """With `eval_data`: the pruned model against the dense one (`mucrasp-deploy eval`), into eval.json."""
    c = ctx.config
    if c.eval_data is None:
        return
    from mucrasp.evaluation.evaluate import EvalConfig, evaluate

    ctx.progress("eval", 0, 1)
    try:
        ctx.eval_report = evaluate(
            EvalConfig(
                pruned=ctx.folder / "model",
                dense=ctx.model_dir,
                data=c.eval_data,
                limit=c.eval_limit,
                ground_truth=c.eval_ground_truth,
                max_new_tokens=c.eval_max_new_tokens,
                out=ctx.folder / "eval.json",
                device=c.device,
                dtype=ctx.run_dtype,
            ),
            ctx.progress,
        )
    except MucraspError as exc:
        ctx.record("eval", "failed", str(exc))
        return
    ctx.progress("eval", 1, 1)
    r = ctx.eval_report
    shown = ", ".join(f"{k} {r[k]:.3f}" for k in ("accuracy", "dense_accuracy", "agreement", "cot_kl") if k in r)
    ctx.record("eval", "done", f"{shown} on {r['items']} items of {c.eval_data} (eval.json)")


def card_step(ctx: DeployContext) -> None:
    """The vLLM export's model card, written once, with the smoke test's and the eval's figures."""
    from mucrasp.atomic_io import write_text_atomic

    if ctx.exported is None or ctx.exported.card is None:
        ctx.record("card", "skipped", "the ONNX export has no model card; see smoke.json and report.json")
        return
    write_text_atomic(ctx.folder / "export" / "README.md", ctx.exported.card(ctx.eval_report, ctx.smoke))
    measured = " and ".join(n for n, v in (("smoke", ctx.smoke), ("eval", ctx.eval_report)) if v) or "no"
    ctx.record("card", "done", f"export/README.md with {measured} results")


def report_step(ctx: DeployContext) -> None:
    from mucrasp.atomic_io import write_json_atomic

    write_json_atomic(
        ctx.folder / "report.json",
        {
            "format_version": 1,
            "tool": f"mucrasp-deploy {mucrasp.__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": "demo" if ctx.config.model is None else str(ctx.model_dir.resolve()),
            "profile": ctx.plan.profile,
            "target": ctx.config.target,
            "ratio": ctx.ratio,
            "planned_ratio": ctx.plan.ratio,
            "steps": ctx.steps,
            "planned_vs_measured": (ctx.smoke or {}).get("planned_vs_measured"),
            "smoke": ctx.smoke,
            "eval": ctx.eval_report,
            "self_calibration": ctx.self_calibration,
            "complete": bool(ctx.smoke and ctx.smoke["passed"]) and all(s["status"] != "failed" for s in ctx.steps),
        },
    )


Step = Callable[[DeployContext], None]
#: Run in the staging folder; it becomes the deployment folder when they are done.
BUILD_STEPS: list[Step] = [
    plan_step,
    self_calibration_step,
    score_step,
    prune_step,
    recover_step,
    export_step,
    spot_check_step,
]
#: Run in the deployment folder.
CHECK_STEPS: list[Step] = [smoke_step, eval_step, card_step, report_step]


def run_chain(config: DeployConfig, progress: Callable[[str, int, int], None] = _no_progress) -> DeployReport:
    from mucrasp.atomic_io import atomic_directory, check_output_dir
    from mucrasp.planning.profiles import load_profile
    from mucrasp.scoring import get_method
    from mucrasp.scoring.score_cache import default_cache_dir

    profile = load_profile(config.profile)
    get_method(config.method)  # a bad name fails before anything is read
    out = Path(config.out or f"deploy-{profile.name}")
    if config.eval_data is not None and not Path(config.eval_data).is_file():
        raise MucraspError(f"eval data {config.eval_data} does not exist")
    check_output_dir(out, config.overwrite, inputs=(config.model, config.calibration, config.eval_data))
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    ctx = DeployContext(config, out, profile, cache_dir, *_model_and_calibration(config, cache_dir), progress=progress)
    if config.model is None:
        source = f"--calib {config.calibration}" if config.calibration else "its calibration split"
        ctx.record("model", "done", f"no --model: the bundled demo VLM ({ctx.model_dir}), calibrated on {source}")
    with atomic_directory(out, overwrite=config.overwrite) as staging:
        ctx.staging = staging
        for step in BUILD_STEPS:
            step(ctx)
    ctx.staging = None
    try:
        for step in CHECK_STEPS:
            step(ctx)
    except KeyboardInterrupt:
        # Ctrl-C before report.json: the deployment is incomplete, so it is removed (the CLI then
        # says nothing was written); a failed step, by contrast, keeps the folder for inspection.
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise
    return DeployReport(out=out, plan=ctx.plan, steps=ctx.steps, smoke=ctx.smoke)


def _model_and_calibration(config: DeployConfig, cache_dir: Path) -> tuple[Path, Path | None]:
    if config.model is not None:
        return Path(config.model), config.calibration
    from mucrasp.demo.bundled import bundled_demo_model, ensure_demo_data

    calibration = config.calibration or ensure_demo_data(cache_dir / "demo-data")["calibration"]
    return bundled_demo_model(), calibration
