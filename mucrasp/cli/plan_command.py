"""`mucrasp-deploy plan`: pick a weight format and a pruning ratio for a model, a hardware profile and a workload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mucrasp.cli.app import app, console
from mucrasp.errors import MucraspError
from mucrasp.planning.workload import Workload
from mucrasp.validation import field_default as _default

if TYPE_CHECKING:
    from mucrasp.planning import Plan


@app.command("plan")
def plan_command(
    model: Path = typer.Argument(..., help="Model folder; only its config.json is read."),
    profile: str = typer.Option(
        None, "--profile", "-p", help="Profile name (see `profile list`) or path to a YAML file."
    ),
    all_profiles: bool = typer.Option(False, "--all-profiles", help="One row per known profile, for sizing hardware."),
    max_model_len: int = typer.Option(
        _default(Workload, "max_model_len"), help="Context per sequence (prompt + output), in tokens."
    ),
    concurrency: int = typer.Option(_default(Workload, "concurrency"), help="Sequences in flight."),
    target_tokens_per_s: float = typer.Option(
        _default(Workload, "target_tokens_per_s"), help="Aggregate decode tokens/s to meet; 0: none."
    ),
    dtype: str = typer.Option(None, help="fp32, fp16 or bf16; default: the profile's best 16-bit dtype."),
    weights: str = typer.Option(
        None, help="Fix the weight format (the dtype, or one the profile lists); default: the planner weighs them all."
    ),
    runtime: str = typer.Option(None, help="Weigh only the formats vllm or onnx serves; default: every one."),
    image_size: int = typer.Option(None, help="One square image per prompt, pixels a side: its tokens and TTFT."),
    image_tokens: int = typer.Option(None, help="One image per prompt of this many tokens (instead of --image-size)."),
    prompt_tokens: int = typer.Option(None, help="Text tokens of one prompt, for TTFT; default: half the context."),
    step: float = typer.Option(0.05, help="Ratio grid step."),
    max_ratio: float = typer.Option(0.5, help="Largest ratio considered."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    plot: Path = typer.Option(None, "--plot", help="Draw memory and throughput against ratio into this PNG."),
    overwrite: bool = typer.Option(False, help="Replace the --plot file if it exists."),
) -> None:
    """Choose the weight format and pruning ratio that fit PROFILE's memory and meet the decode target.

    Quantize first, prune only for what is left: the smallest ratio that works, in the format of least
    expected quality cost at that ratio."""
    from mucrasp.planning import Plan, plan_all_profiles, plan_model

    if plot is not None and plot.exists() and not overwrite:
        raise MucraspError(f"{plot} already exists (pass --overwrite to replace it)")
    workload = Workload.create(
        max_model_len=max_model_len,
        concurrency=concurrency,
        target_tokens_per_s=target_tokens_per_s,
        dtype=dtype,
        image_size=image_size,
        image_tokens=image_tokens,
        prompt_tokens=prompt_tokens,
    )
    if all_profiles:
        plans = plan_all_profiles(model, workload, step, max_ratio, weights, runtime)
        if as_json:
            typer.echo(json.dumps([p.to_dict() if isinstance(p, Plan) else {"error": str(p)} for p in plans], indent=2))
        else:
            render_profiles(plans)
        return
    if profile is None:
        raise MucraspError("plan needs --profile NAME|PATH (or --all-profiles)")
    plan = plan_model(model, profile, workload, step, max_ratio, weights, runtime)
    if plot is not None:
        from mucrasp.planning.plot import plot_plan

        plot_plan(plan, plot)
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        render_plan(plan)
        if plot is not None:
            console.print(f"plot written to {plot}")
    if plan.ratio is None:
        raise typer.Exit(1)


def shown_rows(plan: Plan) -> list:
    """Both levers without every pair: each format unpruned, and every ratio of the chosen format
    (or, when nothing works, of the last format weighed, the smallest)."""
    lead = plan.weights or plan.formats[-1]
    return [r for r in plan.rows if r.ratio == 0 or r.weights == lead]


def render_plan(plan: Plan) -> None:
    from rich.table import Table

    w = plan.workload
    image = f", {plan.image_tokens} image tokens a prompt" if plan.image_tokens else ""
    table = Table(
        title=(
            f"{plan.model} on {plan.profile} ({plan.dtype}, context {w['max_model_len']}, "
            f"concurrency {w['concurrency']}{image})"
        )
    )
    for column in (
        "weights",
        "ratio",
        "weights GB",
        "KV GB",
        "total GB",
        "budget GB",
        "decode tok/s",
        "prefill tok/s",
        "TTFT s",
        "fits",
        "meets",
    ):
        table.add_column(column, justify="left" if column == "weights" else "right")
    for row in shown_rows(plan):
        style = "bold green" if row is plan.chosen else None
        table.add_row(
            row.weights,
            f"{row.ratio:.2f}",
            f"{row.weights_gb:.2f}",
            f"{row.kv_gb:.2f}",
            f"{row.total_gb:.2f}",
            f"{row.budget_gb:.2f}",
            f"{row.decode_tokens_per_s:,.1f}",
            f"{row.prefill_tokens_per_s:,.0f}",
            f"{row.ttft_s:.3g}",
            "yes" if row.fits else "[red]no[/]",
            "yes" if row.meets else "[red]no[/]",
            style=style,
        )
    table.caption = (
        f"target {w['target_tokens_per_s']:g} tok/s; formats weighed: {', '.join(plan.formats)} "
        f"(--json lists every pair); " + "; ".join(plan.assumptions[:2])
    )
    console.print(table)
    console.print(("[green]" if plan.ratio is not None else "[red]") + plan.message, highlight=False)


def render_profiles(plans: list[Plan | MucraspError]) -> None:
    from rich.table import Table

    from mucrasp.planning import Plan

    table = Table(title="Weight format and smallest working ratio per profile")
    for column in ("profile", "weights", "ratio", "total GB", "budget GB", "decode tok/s", "TTFT s", "status"):
        table.add_column(
            column, justify="left" if column in ("profile", "status") else "right", no_wrap=column == "profile"
        )
    for plan in plans:
        if not isinstance(plan, Plan):
            table.add_row("", "", "", "", "", "", "", f"[red]{plan}[/]")
            continue
        row = plan.chosen or plan.rows[-1]
        if plan.ratio is None:
            status = "[red]" + plan.message.split(": ", 1)[-1] + "[/]"
        else:
            levers = ([plan.weights] if plan.quantized else []) + ([f"prune {plan.ratio:g}"] if plan.ratio else [])
            status = " + ".join(levers) or "fits"
        table.add_row(
            plan.profile,
            "-" if plan.weights is None else plan.weights,
            "-" if plan.ratio is None else f"{plan.ratio:.2f}",
            f"{row.total_gb:.2f}",
            f"{row.budget_gb:.2f}",
            f"{row.decode_tokens_per_s:,.1f}",
            f"{row.ttft_s:.3g}",
            status,
        )
    console.print(table)
