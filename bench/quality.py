"""Quality benchmark: every scoring method at ratios 0.3 and 0.5, on the demo VLM and on SmolLM2.

    .venv/bin/python bench/quality.py                 # both models, full test splits
    .venv/bin/python bench/quality.py --models demo --demo-items 200
    .venv/bin/python bench/quality.py --models demo --methods mucrasp --ablations --eval-split validation \
        --out bench/results/quality-demo-validation   # choose MuCRASP's defaults here, never on test

Same calibration set, same ratio definition and same slicing for every method. Each method scores
once per model and is fused/allocated at each ratio ("score once, prune many"). Metrics come from
`mucrasp.evaluation` against the dense model's own greedy traces on the test split (never used for
calibration or tuning; accuracy is against the true answers: the demo scenes', and on SmolLM2 those
of the word problems with a numeric answer); `--eval-split validation` measures on a validation split instead (SmolLM2:
the second half of its calibration traces), which is where ablations decide the method's defaults.
Treatments (`--treatments`): `oneshot` (prune only), `reconstruct` (prune, then refit o_proj and
down_proj layer by layer on the same calibration set, `mucrasp.reconstruction`; `--ridges` sweeps its
ridge and `--shrink-toward` what it shrinks toward, both to be chosen on a validation split) and
`recover` (reconstruct, then distil the dense model into the pruned one for `--recover-steps` steps on
the same calibration traces, `mucrasp.recovery.distil`, the loop `mucrasp-deploy recover` runs; only
for `--recover-methods`, all at the same step budget). Layouts are each method's default: llm-pruner
uses its reference allocation (`ratio-per-layer-skip-ends`), wanda-sp `ratio-per-layer`, mucrasp
`global-bounded`, the others the global knapsack; the table's layout column says which.
`--layouts` adds `method[layout]` rows on the same scores (allocation against ranking),
`--layer-deviations` sweeps the global-bounded layout's λ, `--only-layouts` leaves out the rows of each
method's own layout, `--ablations LABELS` only the named MuCRASP ablations.
Writes bench/results/quality.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import mucrasp  # noqa: F401  (CPU-torch workarounds first)
from mucrasp.allocation import LAYOUTS
from mucrasp.atomic_io import write_figure_atomic, write_json_atomic, write_text_atomic
from mucrasp.calibration.batches import CalibrationSource, load_processor
from mucrasp.calibration.pivots import PivotConfig
from mucrasp.calibration.records import load_records
from mucrasp.demo.bundled import bundled_demo_model, ensure_demo_data
from mucrasp.demo.word_problems import true_answers_of
from mucrasp.evaluation.evaluate import EvalConfig, compare, dense_reference
from mucrasp.model_loading import load_model
from mucrasp.models.smollm2 import ensure_smollm2_checkpoint
from mucrasp.pruning import prune_in_memory
from mucrasp.reconstruction import ReconstructionSettings
from mucrasp.recovery import RecoverySettings, distil
from mucrasp.scoring import ScoringContext, available_methods, get_method
from mucrasp.scoring.mucrasp_method import PAPER_STYLE

RESULTS = Path(__file__).parent / "results"
METHOD_ORDER = ["mucrasp", "taylor", "llm-pruner", "wanda-sp", "flap", "magnitude", "random"]
# MuCRASP with one ingredient changed from its defaults (the paper's fusion, no protection), to see
# what each contributes (--ablations). "paper" adds the paper's whole protection P(L) (PAPER_STYLE).
ABLATIONS = {
    "mucrasp[paper]": dict(PAPER_STYLE),
    "mucrasp[pivot-only]": {"gamma_base": 1.0, "rho": 0.0},
    "mucrasp[global-only]": {"gamma_base": 0.0},
    "mucrasp[+sens]": {"alpha": PAPER_STYLE["alpha"]},
    "mucrasp[+cmds]": {"beta": PAPER_STYLE["beta"]},
    "mucrasp[+omega]": {k: PAPER_STYLE[k] for k in ("omega_early", "omega_attention")},
    "mucrasp[depth=0]": {"depth_balance": 0.0},
    "mucrasp[depth=0.25]": {"depth_balance": 0.25},
    "mucrasp[depth=0.5]": {"depth_balance": 0.5},
    "mucrasp[depth=0.75]": {"depth_balance": 0.75},
    "mucrasp[depth=1]": {"depth_balance": 1.0},
    "mucrasp[refit=0.5]": {"refit_discount": 0.5},
    "mucrasp[refit=1]": {"refit_discount": 1.0},
    "mucrasp[W=4]": {"window": 4},
    "mucrasp[W=16]": {"window": 16},
}
# Options read while scoring; the others only change fusion and can reuse one scoring pass.
SCORING_TIME_OPTIONS = {"window", "markers", "fallback_interval", "gradient_checkpointing", "refit_discount"}


def model_setups(names: list[str], args) -> list[dict]:
    setups = []
    if "demo" in names:
        if args.recover_on == "recovery":
            raise SystemExit("--recover-on recovery: only smollm has a recovery pool of its own traces")
        data = ensure_demo_data(Path("build/data/demo"), ("calibration", args.eval_split))
        setups.append(
            dict(
                name="demo-vlm",
                model=bundled_demo_model(),
                calibration=data["calibration"],
                test=data[args.eval_split],
                limit=args.demo_items,
                ground_truth=True,
                max_new_tokens=64,
            )
        )
    if "smollm" in names:
        model = ensure_smollm2_checkpoint()
        traces = Path(args.smollm_traces)
        if args.eval_split == "test" and not (traces / "test.jsonl").is_file():
            from mucrasp.demo.text_traces import write_text_traces

            write_text_traces(model, traces)
        evaluation = traces / "test.jsonl"
        if args.eval_split == "validation":
            evaluation = smollm_validation_split(traces / "calibration.jsonl", args.calib_samples)
        recovery = None
        if args.recover_on == "recovery":
            recovery = traces / "recovery.jsonl"
            if not recovery.is_file():
                from mucrasp.demo.text_traces import write_recovery_traces

                write_recovery_traces(model, traces)
        setups.append(
            dict(
                name="smollm2-135m",
                model=model,
                calibration=traces / "calibration.jsonl",
                test=evaluation,
                limit=args.smollm_items or None,
                ground_truth=True,  # the word problems' true answers (scored where the answer is a number)
                true_answers=true_answers_of,
                max_new_tokens=96,
                recovery=recovery,
            )
        )
    return setups


def smollm_validation_split(calibration: Path, calib_samples: int | None) -> Path:
    """SmolLM2 has no validation split of its own: hold out the second half of its calibration traces.

    Scoring reads only the first `calib_samples` records, so the held-out half never calibrates, and
    the test split stays untouched by tuning.
    """
    lines = [line for line in calibration.read_text(encoding="utf-8").splitlines() if line.strip()]
    held_out = len(lines) // 2
    if calib_samples is None or calib_samples > held_out:
        raise SystemExit(
            f"--eval-split validation on smollm needs --calib-samples <= {held_out} "
            "(the validation items are the second half of the calibration traces)"
        )
    path = calibration.with_name("validation.jsonl")
    write_text_atomic(path, "\n".join(lines[held_out:]) + "\n")
    return path


def rounded_to_bf16(model):
    """A copy of `model` with every parameter rounded to bf16 (kept in its own dtype): the noise floor."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.to(torch.bfloat16))
    return rounded


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def variants(
    methods: list[str],
    ablations: str,
    layouts: list[str] = (),
    deviations: list[float] = (),
    own_layout: bool = True,
) -> list[tuple[str, str, dict, str | None, dict]]:
    """(label, method, options, layout, allocation settings) for every row family of the table; layout
    None is the method's own.

    Each of `layouts` that is not a method's own default adds a `method[layout]` row family, which
    reuses that method's scores: it separates what the scores contribute from what the allocation does.
    `deviations` sweeps the global-bounded layout's layer_deviation (one `method[global-bounded,λ=D]`
    family each), for every method whose rows use that layout. `own_layout` False leaves out the rows
    of each method's own layout (when an earlier run already has them)."""

    def bounded_rows(label: str, method: str, options: dict, layout: str | None) -> list[tuple]:
        if (layout or get_method(method).default_layout) != "global-bounded" or not deviations:
            return [(label, method, options, layout, {})]
        stem = label if layout is None else method
        return [
            (f"{stem}[global-bounded,λ={d:g}]", method, options, layout, {"layer_deviation": d}) for d in deviations
        ]

    rows = [row for m in methods for row in bounded_rows(m, m, {}, None)] if own_layout else []
    for m in methods:
        for layout in layouts:
            if layout != get_method(m).default_layout:
                rows += bounded_rows(f"{m}[{layout}]", m, {}, layout)
    chosen = ABLATIONS if ablations == "all" else {k: ABLATIONS[k] for k in ablations.split(",") if k}
    rows += [(label, "mucrasp", options, None, {}) for label, options in chosen.items()]
    return rows


@dataclass(frozen=True)
class Treatment:
    """What happens to a pruned model before it is measured: reconstruction (or not), then recovery (or not)."""

    label: str
    reconstruction: ReconstructionSettings | None = None
    recovery: RecoverySettings | None = None


def treatments(
    names: list[str],
    ridges: list[float],
    recovery: RecoverySettings | None = None,
    shrink_toward: list[str] = (ReconstructionSettings().shrink_toward,),
) -> list[Treatment]:
    """One Treatment per name (and per ridge × shrink target for `reconstruct`); `recover` reconstructs
    with the first of each."""
    out: list[Treatment] = []
    for name in names:
        if name == "oneshot":
            out.append(Treatment("oneshot"))
        elif name == "reconstruct":
            for ridge in ridges:
                for toward in shrink_toward:
                    swept = [f"ridge={ridge:g}"] * (len(ridges) > 1) + [f"toward={toward}"] * (len(shrink_toward) > 1)
                    label = "reconstruct" + (f"[{','.join(swept)}]" if swept else "")
                    out.append(Treatment(label, ReconstructionSettings(ridge=ridge, shrink_toward=toward)))
        elif name == "recover":
            first = ReconstructionSettings(ridge=ridges[0], shrink_toward=shrink_toward[0])
            out.append(Treatment("recover", first, recovery or RecoverySettings()))
        else:
            raise SystemExit(f"unknown treatment {name!r}: oneshot, reconstruct, recover")
    return out


def run_model(
    setup: dict,
    methods: list[tuple[str, str, dict, str | None, dict]],
    ratios: list[float],
    on_row=lambda rows: None,
    treatment_list: list[Treatment] = (Treatment("oneshot"),),
    recover_methods: set[str] | None = None,
    noise_floor: bool = False,
) -> list[dict]:
    """All rows for one model; `on_row` sees the rows so far after each one (for partial results).

    `noise_floor` adds a `dense[bf16 weights]` row: the unpruned model with its weights rounded to
    bf16, which is how far the metrics move for a change no deployment would call a loss.

    The `recover` treatment runs only for methods in `recover_methods` (None: every method)."""
    loaded = load_model(setup["model"])
    dense, adapter = loaded.model, loaded.adapter
    vision = adapter.is_vision_language
    processor = load_processor(setup["model"], vision)
    config = EvalConfig(
        pruned=setup["model"],
        dense=setup["model"],
        data=setup["test"],
        limit=setup["limit"],
        ground_truth=setup["ground_truth"],
        max_new_tokens=setup["max_new_tokens"],
    )
    started = time.perf_counter()
    reference = dense_reference(dense, processor, load_records(setup["test"], setup["limit"]), vision, config)
    if "true_answers" in setup:  # the test file's responses are the dense traces, not true answers
        reference.truths = setup["true_answers"]([r.prompt for r in reference.records])
    log(
        f"{setup['name']}: dense traces for {len(reference.records)} evaluation items in "
        f"{time.perf_counter() - started:.0f}s"
    )
    dense_row = {
        "model": setup["name"],
        "method": "dense",
        "treatment": "dense",
        "ratio": 0.0,
        **compare(dense, dense, processor, reference, vision, config),
    }
    rows = [dense_row]
    if noise_floor:
        rounded = rounded_to_bf16(dense)
        rows.append(
            {
                **dense_row,
                "method": "dense[bf16 weights]",
                **compare(dense, rounded, processor, reference, vision, config),
            }
        )
        del rounded
    on_row(rows)
    calibration = CalibrationSource(Path(setup["calibration"]), Path(setup["model"]), setup["calib_samples"])
    scored: dict[tuple, tuple] = {}
    recovery_batches = None
    for label, method, options, layout, allocation in methods:
        scoring_options = {k: v for k, v in options.items() if k in SCORING_TIME_OPTIONS}
        key = (method, tuple(sorted(scoring_options.items())))
        if key not in scored:
            started = time.perf_counter()
            context = ScoringContext(ratio=ratios[0], calibration=calibration, options=scoring_options)
            scored[key] = (get_method(method).components(dense, adapter, context), time.perf_counter() - started)
        components, score_seconds = scored[key]
        for ratio in ratios:
            for treatment in treatment_list:
                if treatment.recovery is not None and recover_methods is not None and label not in recover_methods:
                    continue
                pruned = copy.deepcopy(dense)
                started = time.perf_counter()
                outcome = prune_in_memory(
                    pruned,
                    adapter,
                    ratio,
                    method=method,
                    layout=layout,
                    calibration=calibration,
                    scores=components,
                    method_options=options,
                    reconstruct=treatment.reconstruction or False,
                    **allocation,
                )
                prune_seconds = time.perf_counter() - started
                recovered = {}
                if treatment.recovery is not None:
                    if recovery_batches is None:
                        # Distil on the calibration traces (the reconstruction set), or on the recovery pool.
                        source = calibration
                        if setup.get("recovery") is not None:
                            source = CalibrationSource(Path(setup["recovery"]), Path(setup["model"]))
                        recovery_batches = source.batches(dense.config, PivotConfig(), vision)
                    started = time.perf_counter()
                    result = distil(pruned, dense, recovery_batches, treatment.recovery, adapter=adapter)
                    recovered = {
                        "recover_steps": treatment.recovery.steps,
                        "recover_traces": f"{Path(setup.get('recovery') or calibration.path).name} "
                        f"({len(recovery_batches)})",
                        "recover_seconds": round(time.perf_counter() - started, 1),
                        "recover_loss_first": round(result.losses[0], 4),
                        "recover_loss_last": round(result.losses[-1], 4),
                    }
                    log(
                        f"{label} {ratio}: {len(result.losses)} distillation steps, {result.seconds_per_step:.1f}s/step"
                    )
                metrics = compare(dense, pruned, processor, reference, vision, config)
                rows.append(
                    {
                        "model": setup["name"],
                        "method": label,
                        "treatment": treatment.label,
                        "ratio": ratio,
                        "layout": outcome.layout,
                        "ratio_achieved": round(outcome.ratio_achieved, 4),
                        "widths": outcome.plan.widths(),  # kept MLP channels and KV groups per layer
                        "score_seconds": round(score_seconds, 1),
                        "prune_seconds": round(prune_seconds, 1),
                        **recovered,
                        **metrics,
                    }
                )
                log(
                    f"{setup['name']} {label} {treatment.label} {ratio}: "
                    + ", ".join(
                        f"{k}={rows[-1][k]:.4f}"
                        for k in ("accuracy", "agreement", "cot_kl", "pivot_kl")
                        if k in rows[-1]
                    )
                )
                on_row(rows)
                del pruned
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| model | method | treatment | layout | ratio | accuracy | agreement | agreement, answered (n) "
        "| CoT KL | pivot KL | perplexity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "–"
        answered = (
            f"{r['agreement_answered']:.3f} ({r['answered_items']})" if r.get("agreement_answered") is not None else "–"
        )
        lines.append(
            f"| {r['model']} | {r['method']} | {r.get('treatment', 'oneshot')} | {r.get('layout', '–')} | "
            f"{r['ratio']:.1f} | {acc} | {r['agreement']:.3f} | {answered} | "
            f"{r['cot_kl']:.4f} | {r['pivot_kl']:.4f} | {r['perplexity']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row_axes, model in zip(axes, models):
        quality_key = "accuracy" if any("accuracy" in r for r in rows if r["model"] == model) else "agreement"
        dense = next(r for r in rows if r["model"] == model and r["method"] == "dense")
        treatment_names = sorted({r.get("treatment", "oneshot") for r in rows if r["method"] != "dense"})
        lines = [(m, t) for m in METHOD_ORDER for t in treatment_names]  # ablation rows stay out of the plot
        for method, treatment in lines:
            points = sorted(
                ((r["ratio"], i), r)
                for i, r in enumerate(rows)
                if r["model"] == model and r["method"] == method and r.get("treatment", "oneshot") == treatment
            )
            if not points:
                continue
            ratios = [0.0] + [p[0][0] for p in points]
            colour = f"C{METHOD_ORDER.index(method)}"
            dashes = "-" if treatment == "oneshot" else ("--" if treatment == "reconstruct" else ":")
            style = dict(
                marker="o",
                color=colour,
                linestyle=dashes,
                linewidth=2.5 if method == "mucrasp" else 1.2,
                label=f"{method} ({treatment})",
            )
            row_axes[0].plot(ratios, [dense[quality_key]] + [p[1][quality_key] for p in points], **style)
            row_axes[1].plot(ratios, [0.0] + [p[1]["cot_kl"] for p in points], **style)
        floor = next((r for r in rows if r["model"] == model and r["method"] == "dense[bf16 weights]"), None)
        if floor is not None:  # what rounding alone does, for scale
            for ax, key in zip(row_axes, (quality_key, "cot_kl")):
                ax.axhline(floor[key], color="grey", linestyle="-.", linewidth=1, label="dense, bf16 weights")
        row_axes[0].set(title=f"{model}: {quality_key} (greedy CoT)", xlabel="pruning ratio", ylabel=quality_key)
        row_axes[1].set(title=f"{model}: KL(dense || pruned) per CoT token", xlabel="pruning ratio", ylabel="nats")
        row_axes[1].set_yscale("symlog", linthresh=1e-4)  # log-like, but the dense point (0) stays on the axis
        row_axes[0].legend(fontsize=8)
        for ax in row_axes:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure_atomic(path, fig, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,smollm")
    parser.add_argument("--methods", default=",".join(METHOD_ORDER))
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--demo-items", type=int, default=500)
    parser.add_argument("--smollm-items", type=int, default=96, help="the first N of the 192 test prompts (0: all)")
    parser.add_argument(
        "--calib-samples", type=int, default=None, help="use the first N calibration records (default: all 128)"
    )
    parser.add_argument(
        "--noise-floor",
        action="store_true",
        help="add a dense[bf16 weights] row: how far the metrics move when only rounding changes",
    )
    parser.add_argument(
        "--ablations",
        nargs="?",
        const="all",
        default="",
        help="add MuCRASP ablation rows (fusion, protection, depth profile, window): all, or a comma list of labels",
    )
    parser.add_argument(
        "--eval-split",
        default="test",
        choices=["test", "validation"],
        help="where to measure: validation (demo VLM: its own split; SmolLM2: the second half "
        "of its calibration traces, needs --calib-samples) is for choosing defaults",
    )
    parser.add_argument(
        "--treatments", default="oneshot,reconstruct", help="oneshot, reconstruct, recover (comma list)"
    )
    parser.add_argument(
        "--recover-methods",
        default="mucrasp,taylor,wanda-sp",
        help="methods that get the recover treatment (comma list; all at the same step budget)",
    )
    parser.add_argument(
        "--recover-on",
        default="calibration",
        choices=["calibration", "recovery"],
        help="traces to distil on: the calibration set (also the reconstruction set), or SmolLM2's recovery "
        "pool of 256 other prompts (disjoint from calibration and test)",
    )
    parser.add_argument("--recover-steps", type=int, default=RecoverySettings().steps)
    parser.add_argument("--recover-lr", type=float, default=RecoverySettings().lr)
    parser.add_argument("--recover-batch-size", type=int, default=RecoverySettings().batch_size)
    parser.add_argument(
        "--ridges",
        default=str(ReconstructionSettings().ridge),
        help="reconstruction ridge(s), relative to mean diag(XᵀX); sweep on a validation split only",
    )
    parser.add_argument(
        "--shrink-toward",
        default=ReconstructionSettings().shrink_toward,
        help="what the reconstruction ridge shrinks toward: zero, pruned (comma list to sweep; validation only)",
    )
    parser.add_argument(
        "--layouts",
        default="",
        help=f"extra allocation layouts per method, as method[layout] rows on the same scores ({', '.join(LAYOUTS)})",
    )
    parser.add_argument(
        "--layer-deviations",
        default="",
        help="sweep the global-bounded layout's layer_deviation (comma list; validation only), one row family each",
    )
    parser.add_argument(
        "--only-layouts",
        action="store_true",
        help="measure only the --layouts rows, not each method's own layout (an earlier run has those)",
    )
    parser.add_argument("--smollm-traces", default="build/data/smollm", help="folder with SmolLM2's trace files")
    parser.add_argument("--out", default=str(RESULTS / "quality"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:
        parser.error(f"unknown methods: {unknown}")
    if args.ablations not in ("", "all"):
        unknown_ablations = sorted(set(args.ablations.split(",")) - set(ABLATIONS) - {""})
        if unknown_ablations:
            parser.error(f"unknown ablations: {unknown_ablations} (choose from {', '.join(ABLATIONS)})")
    layouts = [x for x in args.layouts.split(",") if x]
    unknown_layouts = sorted(set(layouts) - set(LAYOUTS))
    if unknown_layouts:
        parser.error(f"unknown layouts: {unknown_layouts} (choose from {', '.join(LAYOUTS)})")
    ratios = [float(r) for r in args.ratios.split(",")]
    started = time.perf_counter()
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    command = " ".join(sys.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.md")
    rows: list[dict] = []
    for setup in model_setups(args.models.split(","), args):
        setup["calib_samples"] = args.calib_samples
        done = list(rows)
        # An interrupted run still leaves every finished row behind, in a file marked partial.
        rows = done + run_model(
            setup,
            variants(
                methods,
                args.ablations,
                layouts,
                [float(d) for d in args.layer_deviations.split(",") if d],
                own_layout=not args.only_layouts,
            ),
            ratios,
            on_row=lambda model_rows: write_text_atomic(
                partial, markdown(done + model_rows, f"PARTIAL: rows so far of `{command}`, {machine}.")
            ),
            treatment_list=treatments(
                [t for t in args.treatments.split(",") if t],
                [float(r) for r in args.ridges.split(",")],
                RecoverySettings(steps=args.recover_steps, lr=args.recover_lr, batch_size=args.recover_batch_size),
                [t for t in args.shrink_toward.split(",") if t],
            ),
            recover_methods={m for m in args.recover_methods.split(",") if m},
            noise_floor=args.noise_floor,
        )
    header = f"Measured {time.strftime('%Y-%m-%d')} on {machine} in {time.perf_counter() - started:.0f}s (`{command}`)."
    write_json_atomic(out.with_name(out.name + ".json"), {"header": header, "rows": rows})
    write_text_atomic(out.with_name(out.name + ".md"), markdown(rows, header))
    plot(rows, out.with_name(out.name + ".png"))
    partial.unlink(missing_ok=True)
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
