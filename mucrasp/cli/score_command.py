"""`mucrasp-deploy score`: run a method's calibration pass once and write its scores to a file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mucrasp.cli.app import app, console
from mucrasp.cli.progress import rich_progress
from mucrasp.scoring import get_method
from mucrasp.scoring.options import parse_assignments
from mucrasp.scoring.score_job import ScoreConfig, ScoreReport, score_model


@app.command("score")
def score_command(
    model: Path = typer.Argument(..., help="Model folder (Hugging Face checkpoint with its processor)."),
    calib: Path = typer.Option(None, help="Calibration JSONL (image, prompt, response per line)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scores file to write (safetensors)."),
    method: str = typer.Option("mucrasp", help="Scoring method."),
    max_samples: int = typer.Option(None, help="Use only the first N calibration records."),
    option: list[str] = typer.Option(None, "--set", help="Method option KEY=VALUE (repeatable), e.g. window=16."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Score MODEL's units on calibration data; `prune --scores OUT --ratio R` reuses the result."""
    chosen = get_method(method)
    config = ScoreConfig(
        model=model, out=out, calibration=calib, method=method, max_samples=max_samples, overwrite=overwrite,
        method_options=parse_assignments(chosen.config_class, option or [], chosen.name),
    )
    with rich_progress() as progress:
        report = score_model(config, progress=progress)
    render_score_report(report)


def render_score_report(report: ScoreReport) -> None:
    details = report.components.details
    table = Table(title=f"Scores: {report.out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("method", report.components.method)
    for key, value in details.get("calibration", {}).items():
        table.add_row(f"calibration {key}", str(value))
    for key, value in details.get("memory", {}).items():
        table.add_row(key, str(value))
    console.print(table)
    stats = report.components.layer_stats
    if stats:
        layers = Table(title="Per-layer statistics")
        layers.add_column("layer", justify="right")
        for name in stats:
            layers.add_column(name, justify="right")
        for i in range(len(next(iter(stats.values())))):
            layers.add_row(str(i), *(f"{float(values[i]):.4f}" for values in stats.values()))
        console.print(layers)
