"""`mucrasp-deploy prune`: options in, `mucrasp.pruning.prune` out, a summary table back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from mucrasp.allocation import LAYOUTS, AllocationSettings
from mucrasp.cli.app import app, console
from mucrasp.cli.progress import rich_progress
from mucrasp.cli.shared_options import device_option, dtype_option
from mucrasp.pruning import PruneConfig
from mucrasp.validation import field_default as _default

if TYPE_CHECKING:
    from mucrasp.pruning import PruneReport


@app.command("prune")
def prune_command(
    model: Path = typer.Argument(..., help="Model folder (Hugging Face checkpoint)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the pruned checkpoint."),
    ratio: float = typer.Option(0.3, help="Fraction of the decoder's attention+MLP parameters to remove, in [0, 0.9]."),
    method: str = typer.Option(None, help="Scoring method (default: the --scores file's, else magnitude)."),
    layout: str = typer.Option(
        None,
        help=f"One of {', '.join(LAYOUTS)} (uniform: a stock checkpoint); default: the method's.",
    ),
    align: int = typer.Option(
        _default(AllocationSettings, "align"), help="Kept MLP channels per layer are a multiple of this power of two."
    ),
    tp: int = typer.Option(
        _default(AllocationSettings, "tp"), help="Kept KV groups per layer divide by this tensor-parallel size."
    ),
    min_mlp_fraction: float = typer.Option(
        _default(AllocationSettings, "min_mlp_fraction"),
        help="Each layer keeps at least this share of its MLP channels.",
    ),
    min_kv_groups: int = typer.Option(
        _default(AllocationSettings, "min_kv_groups"), help="Each layer keeps at least this many GQA groups."
    ),
    layer_deviation: float = typer.Option(
        _default(AllocationSettings, "layer_deviation"),
        help="global-bounded layout: each layer prunes within ratio ± this share of its parameters.",
    ),
    calib: Path = typer.Option(None, help="Calibration JSONL, for methods that need data."),
    scores: Path = typer.Option(
        None, help="Scores file from `mucrasp-deploy score`: reuse it instead of scoring again."
    ),
    option: list[str] = typer.Option(None, "--set", help="Method option KEY=VALUE (repeatable), e.g. gamma_base=0.3."),
    max_seq_len: int = typer.Option(
        None, help="Cut calibration sequences to this many tokens; default: the model's context."
    ),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    device: str = device_option(PruneConfig),
    dtype: str = dtype_option(PruneConfig),
    reconstruct: Optional[bool] = typer.Option(
        _default(PruneConfig, "reconstruct"),
        "--reconstruct/--no-reconstruct",
        help="Refit o_proj/down_proj layer by layer on --calib so each layer's output matches the dense one "
        "[default: on whenever --calib is given].",
        show_default=False,
    ),
) -> None:
    """Prune MODEL into a smaller dense checkpoint."""
    from mucrasp.pruning import prune

    config = PruneConfig(
        model=model,
        out=out,
        ratio=ratio,
        method=method,
        layout=layout,
        align=align,
        tp=tp,
        min_mlp_fraction=min_mlp_fraction,
        min_kv_groups=min_kv_groups,
        layer_deviation=layer_deviation,
        calibration=calib,
        scores=scores,
        overwrite=overwrite,
        max_seq_len=max_seq_len,
        method_options=method_options(method, scores, option or []),
        device=device,
        dtype=dtype,
        reconstruct=reconstruct,
    )
    with rich_progress() as progress:
        report = prune(config, progress=progress)
    render_prune_report(report)


def method_options(method: str | None, scores: Path | None, assignments: list[str]) -> dict:
    """Typed options for the method that will run (named, or the one the scores file holds)."""
    if not assignments:
        return {}
    from mucrasp.scoring import get_method
    from mucrasp.scoring.options import parse_assignments
    from mucrasp.scoring.scores_file import load_scores

    if method is None and scores is not None:
        method = load_scores(scores)[0].method
    chosen = get_method(method or "magnitude")
    return parse_assignments(chosen.config_class, assignments, chosen.name)


def _fmt(n: int) -> str:
    return f"{n / 1e6:,.2f}M" if n >= 1e5 else f"{n:,}"


def render_prune_report(report: PruneReport) -> None:
    from rich.table import Table

    outcome = report.outcome
    params = Table(title=f"Pruned checkpoint: {report.out}")
    for column in ("parameters", "before", "after", "removed"):
        params.add_column(column, justify="right" if column != "parameters" else "left")
    for name in ("total", "decoder", "prunable"):
        before, after = getattr(outcome.before, name), getattr(outcome.after, name)
        params.add_row(name, _fmt(before), _fmt(after), f"{1 - after / before:.1%}")
    params.caption = (
        f"ratio achieved {outcome.ratio_achieved:.3f} of prunable parameters, layout {outcome.layout}, "
        f"files {report.checkpoint_bytes / 2**20:,.1f} MiB"
    )
    console.print(params)

    layers = Table(title="Per-layer widths")
    for column in ("layer", "MLP channels", "KV groups"):
        layers.add_column(column, justify="right")
    for i, ((mlp_before, groups_before), after) in enumerate(zip(outcome.widths_before, outcome.plan.widths())):
        layers.add_row(str(i), f"{after['mlp_channels']} / {mlp_before}", f"{after['kv_groups']} / {groups_before}")
    console.print(layers)
