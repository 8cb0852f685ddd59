"""`mucrasp-deploy plan`: pick a pruning ratio for a model, a hardware profile and a workload."""

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
    step: float = typer.Option(0.05, help="Ratio grid step."),
    max_ratio: float = typer.Option(0.5, help="Largest ratio considered."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    plot: Path = typer.Option(None, "--plot", help="Draw memory and throughput against ratio into this PNG."),
    overwrite: bool = typer.Option(False, help="Replace the --plot file if it exists."),
) -> None:
    """Choose the smallest pruning ratio that fits PROFILE's memory and meets the decode target."""
    from mucrasp.planning import Plan, plan_all_profiles, plan_model

    if plot is not None and plot.exists() and not overwrite:
        raise MucraspError(f"{plot} already exists (pass --overwrite to replace it)")
    workload = Workload.create(
        max_model_len=max_model_len, concurrency=concurrency, target_tokens_per_s=target_tokens_per_s, dtype=dtype
    )
    if all_profiles:
        plans = plan_all_profiles(model, workload, step, max_ratio)
        if as_json:
            typer.echo(json.dumps([p.to_dict() if isinstance(p, Plan) else {"error": str(p)} for p in plans], indent=2))
        else:
            render_profiles(plans)
        return
    if profile is None:
        raise MucraspError("plan needs --profile NAME|PATH (or --all-profiles)")
    plan = plan_model(model, profile, workload, step, max_ratio)
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


def render_plan(plan: Plan) -> None:
    from rich.table import Table

    w = plan.workload
    table = Table(
        title=(
            f"{plan.model} on {plan.profile} ({plan.dtype}, context {w['max_model_len']}, "
            f"concurrency {w['concurrency']})"
        )
    )
    for column in (
        "ratio",
        "weights GB",
        "KV GB",
        "total GB",
        "budget GB",
        "decode tok/s",
        "prefill tok/s",
        "fits",
        "meets",
    ):
        table.add_column(column, justify="right")
    for row in plan.rows:
        style = "bold green" if row.ratio == plan.ratio else None
        table.add_row(
            f"{row.ratio:.2f}",
            f"{row.weights_gb:.2f}",
            f"{row.kv_gb:.2f}",
            f"{row.total_gb:.2f}",
            f"{row.budget_gb:.2f}",
            f"{row.decode_tokens_per_s:,.1f}",
            f"{row.prefill_tokens_per_s:,.0f}",
            "yes" if row.fits else "[red]no[/]",
            "yes" if row.meets else "[red]no[/]",
            style=style,
        )
    table.caption = f"target {w['target_tokens_per_s']:g} tok/s; " + "; ".join(plan.assumptions[:2])
    console.print(table)
    console.print(("[green]" if plan.ratio is not None else "[red]") + plan.message, highlight=False)


def render_profiles(plans: list[Plan | MucraspError]) -> None:
    from rich.table import Table

    from mucrasp.planning import Plan

    table = Table(title="Smallest working ratio per profile")
    for column in ("profile", "ratio", "total GB", "budget GB", "decode tok/s", "status"):
        table.add_column(
            column, justify="left" if column in ("profile", "status") else "right", no_wrap=column == "profile"
        )
    for plan in plans:
        if not isinstance(plan, Plan):
            table.add_row("", "", "", "", "", f"[red]{plan}[/]")
            continue
        row = plan.chosen or plan.rows[-1]
        status = (
            "fits"
            if plan.ratio == 0
            else (f"prune {plan.ratio:g}" if plan.ratio else "[red]" + plan.message.split(": ", 1)[-1] + "[/]")
        )
        table.add_row(
            plan.profile,
            "-" if plan.ratio is None else f"{plan.ratio:.2f}",
            f"{row.total_gb:.2f}",
            f"{row.budget_gb:.2f}",
            f"{row.decode_tokens_per_s:,.1f}",
            status,
        )
    console.print(table)
