"""`mucrasp-deploy eval`: a pruned model, or an ONNX export of it, against its dense original on held-out data."""

from __future__ import annotations

from pathlib import Path

import typer

from mucrasp.cli.app import app, console
from mucrasp.cli.progress import rich_progress
from mucrasp.cli.shared_options import device_option, dtype_option
from mucrasp.evaluation.evaluate import EvalConfig
from mucrasp.validation import field_default as _default


@app.command("eval")
def eval_command(
    pruned: Path = typer.Argument(
        ...,
        help="Pruned (or recovered) checkpoint folder, or an `export onnx` folder (fp32 to int4; run in ONNX Runtime).",
    ),
    dense: Path = typer.Option(..., "--dense", help="The dense model it was pruned from."),
    data: Path = typer.Option(..., "--data", help="Held-out records (calibration JSONL format)."),
    limit: int = typer.Option(_default(EvalConfig, "limit"), help="Use only the first N records."),
    ground_truth: bool = typer.Option(
        _default(EvalConfig, "ground_truth"), help="The data's responses end in true answers: report accuracy."
    ),
    max_new_tokens: int = typer.Option(
        _default(EvalConfig, "max_new_tokens"), help="Longest generated chain of thought."
    ),
    out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
    overwrite: bool = typer.Option(_default(EvalConfig, "overwrite"), help="Replace the --json file if it exists."),
    device: str = device_option(EvalConfig),
    dtype: str = dtype_option(EvalConfig),
) -> None:
    """Accuracy, CoT KL (all tokens and pivot windows), perplexity and agreement with the dense model."""
    from rich.table import Table

    from mucrasp.evaluation.evaluate import check_report_path, evaluate

    config = EvalConfig(
        pruned=pruned,
        dense=dense,
        data=data,
        limit=limit,
        ground_truth=ground_truth,
        max_new_tokens=max_new_tokens,
        out=out,
        overwrite=overwrite,
        device=device,
        dtype=dtype,
    )
    check_report_path(config.out, config.overwrite)
    with rich_progress() as progress:
        report = evaluate(config, progress)
    table = Table(title=f"{pruned} against {dense}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "runtime",
        "weights",
        "items",
        "accuracy",
        "dense_accuracy",
        "agreement",
        "answered_items",
        "agreement_answered",
        "traces_reproduced",
        "shared_prefix_tokens",
        "next_token_match",
        "cot_kl",
        "pivot_kl",
        "perplexity",
    ):
        if key in report:
            value = report[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
