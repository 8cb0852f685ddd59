"""`mucrasp-deploy score`: run a method's calibration pass once and write its scores to a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mucrasp.cli.app import app, console
from mucrasp.cli.progress import rich_progress
from mucrasp.cli.shared_options import device_option, dtype_option
from mucrasp.scoring.score_job import ScoreConfig
from mucrasp.validation import field_default as _default

if TYPE_CHECKING:
    from mucrasp.scoring.score_job import ScoreReport


@app.command("score")
def score_command(
    model: Path = typer.Argument(..., help="Model folder (Hugging Face checkpoint with its processor)."),
    calib: Path = typer.Option(None, help="Calibration JSONL (image, prompt, response per line)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scores file to write (safetensors)."),
    method: str = typer.Option(_default(ScoreConfig, "method"), help="Scoring method."),
    max_samples: int = typer.Option(
        _default(ScoreConfig, "max_samples"), help="Use only the first N calibration records."
    ),
    max_seq_len: int = typer.Option(
        _default(ScoreConfig, "max_seq_len"),
        help="Cut calibration sequences to this many tokens; default: the model's context.",
    ),
    option: list[str] = typer.Option(None, "--set", help="Method option KEY=VALUE (repeatable), e.g. window=16."),
    overwrite: bool = typer.Option(_default(ScoreConfig, "overwrite"), help="Replace OUT if it exists."),
    device: str = device_option(ScoreConfig),
    dtype: str = dtype_option(ScoreConfig),
    device_map: str = typer.Option(
        _default(ScoreConfig, "device_map"),
        help="accelerate device map (auto, balanced, sequential): spread or offload.",
    ),
    offload_folder: Path = typer.Option(
        _default(ScoreConfig, "offload_folder"), help="Folder for the part of --device-map offloaded to disk."
    ),
) -> None:
    """Score MODEL's units on calibration data; `prune --scores OUT --ratio R` reuses the result.

    One run at a time writes OUT: a second `score` for the same OUT while the first runs stops at once
    with one error line (it holds the hidden lock file .OUT.lock beside OUT).
    """
    from mucrasp.scoring import get_method
    from mucrasp.scoring.options import parse_assignments
    from mucrasp.scoring.score_job import check_score_inputs, score_model

    config = ScoreConfig(
        model=model,
        out=out,
        calibration=calib,
        method=method,
        max_samples=max_samples,
        max_seq_len=max_seq_len,
        overwrite=overwrite,
        device=device,
        dtype=dtype,
        device_map=device_map,
        offload_folder=offload_folder,
    )
    chosen = get_method(config.method)
    config = config.model_copy(
        update={"method_options": parse_assignments(chosen.config_class, option or [], chosen.name)}
    )
    check_score_inputs(config)
    with rich_progress() as progress:
        report = score_model(config, progress=progress)
    render_score_report(report)


def render_score_report(report: ScoreReport) -> None:
    from rich.table import Table

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
