"""The Typer app that every command module registers on."""

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="mucrasp-deploy",
    help="Reasoning-aware structured pruning (MuCRASP) and deployment of vision-language models.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    profile: str = typer.Option(None, "--profile", "-p", help="Run the deployment chain for this profile (name or YAML path)."),
    model: Path = typer.Option(None, "--model", help="Model folder; default: the demo model."),
    target: str = typer.Option("vllm", help="vllm or onnx."),
    out: Path = typer.Option(None, "--out", "-o", help="Deployment folder; default: ./deploy-PROFILE."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    max_model_len: int = typer.Option(4096, help="Context per sequence, in tokens."),
    concurrency: int = typer.Option(1, help="Sequences in flight."),
    target_tokens_per_s: float = typer.Option(0.0, help="Aggregate decode tokens/s to meet; 0: none."),
    dtype: str = typer.Option(None, help="fp32, fp16 or bf16; default: the profile's best 16-bit dtype."),
    method: str = typer.Option("mucrasp", help="Scoring method for the prune step."),
    calib: Path = typer.Option(None, help="Calibration JSONL; default for the demo model: its calibration split."),
    ratio: float = typer.Option(None, help="Prune at this ratio instead of the planner's choice."),
) -> None:
    """Prune, export and smoke-test models for deployment.

    With --profile and no command: plan, prune and write a deployment folder for that hardware.
    """
    if ctx.invoked_subcommand is not None:
        return
    if profile is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()
    # Imported here: these import this module for `app` and `console`.
    from mucrasp.cli.progress import rich_progress
    from mucrasp.deploy import DeployConfig, run_chain
    from mucrasp.planning import Workload

    workload = Workload.create(
        max_model_len=max_model_len, concurrency=concurrency, target_tokens_per_s=target_tokens_per_s, dtype=dtype
    )
    config = DeployConfig(profile=profile, model=model, target=target, out=out, overwrite=overwrite, workload=workload,
                          method=method, calibration=calib, ratio=ratio)
    with rich_progress() as progress:
        report = run_chain(config, progress=progress)
    for step in report.steps:
        console.print(f"[bold]{step['step']}[/]: {step['status']} - {step['detail']}", highlight=False, soft_wrap=True)
    remaining = f"; still to come: {', '.join(report.remaining)}" if report.remaining else ""
    console.print(f"deployment folder: {report.out}{remaining}", highlight=False, soft_wrap=True)
    if any(step["status"] == "failed" for step in report.steps):
        raise typer.Exit(1)  # the folder is kept for inspection, but a failed step fails the run
