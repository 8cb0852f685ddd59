"""The Typer app that every command module registers on."""

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from mucrasp.cli.shared_options import device_option
from mucrasp.deploy import DeployConfig
from mucrasp.planning.workload import Workload
from mucrasp.validation import field_default as _default

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
    profile: str = typer.Option(
        None, "--profile", "-p", help="Run the deployment chain for this profile (name or YAML path)."
    ),
    model: Path = typer.Option(None, "--model", help="Model folder; default: the demo model."),
    target: str = typer.Option(_default(DeployConfig, "target"), help="vllm or onnx."),
    out: Path = typer.Option(None, "--out", "-o", help="Deployment folder; default: ./deploy-PROFILE."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    max_model_len: int = typer.Option(_default(Workload, "max_model_len"), help="Context per sequence, in tokens."),
    concurrency: int = typer.Option(_default(Workload, "concurrency"), help="Sequences in flight."),
    target_tokens_per_s: float = typer.Option(
        _default(Workload, "target_tokens_per_s"), help="Aggregate decode tokens/s to meet; 0: none."
    ),
    dtype: str = typer.Option(
        None,
        help="fp32, fp16 or bf16: the dtype the model is scored, pruned and written in, and the planner sizes "
        "serving for; default: the checkpoint's own (the plan: the profile's best 16-bit dtype).",
    ),
    device: str = device_option(DeployConfig),
    method: str = typer.Option(_default(DeployConfig, "method"), help="Scoring method for the prune step."),
    calib: Path = typer.Option(
        None,
        help="Calibration JSONL; default: the demo model's calibration split, or for --model the dense model's "
        "own answers to bundled prompts (self-calibration).",
    ),
    ratio: float = typer.Option(None, help="Prune at this ratio instead of the planner's choice."),
    weights: str = typer.Option(
        None, help="Export weights (vllm: bf16|w8a8|w4a16|fp8, onnx: fp32|fp16|int8|int4); default: the plan's choice."
    ),
    image_size: int = typer.Option(None, help="One square image per prompt, pixels a side: the plan predicts TTFT."),
    max_seq_len: int = typer.Option(
        None, help="Cut calibration sequences to this many tokens; default: the model's context."
    ),
    enforce_target: bool = typer.Option(
        None,
        "--enforce-target/--no-enforce-target",
        help="Fail the smoke test below --target-tokens-per-s; default: only on a GPU host.",
    ),
    eval_data: Path = typer.Option(None, help="Held-out JSONL: evaluate the pruned model against the dense one."),
    eval_limit: int = typer.Option(None, help="Evaluate on the first N records of --eval-data only."),
    eval_ground_truth: bool = typer.Option(False, help="--eval-data's responses end in true answers: report accuracy."),
    eval_max_new_tokens: int = typer.Option(
        _default(DeployConfig, "eval_max_new_tokens"), help="Eval: longest generated chain of thought."
    ),
    reconstruct: Optional[bool] = typer.Option(
        _default(DeployConfig, "reconstruct"),
        "--reconstruct/--no-reconstruct",
        help="Refit o_proj/down_proj on the calibration set after pruning (see `prune --reconstruct`) "
        "[default: on whenever the chain has calibration data].",
        show_default=False,
    ),
    recover_steps: int = typer.Option(
        _default(DeployConfig, "recover_steps"),
        help="After pruning, distil the dense model into the pruned one for N steps (see `recover`); 0: none.",
    ),
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
    from mucrasp.deploy import run_chain

    workload = Workload.create(
        max_model_len=max_model_len,
        concurrency=concurrency,
        target_tokens_per_s=target_tokens_per_s,
        dtype=dtype,
        image_size=image_size,
    )
    config = DeployConfig(
        profile=profile,
        model=model,
        target=target,
        out=out,
        overwrite=overwrite,
        workload=workload,
        method=method,
        calibration=calib,
        ratio=ratio,
        weights=weights,
        max_seq_len=max_seq_len,
        enforce_target=enforce_target,
        eval_data=eval_data,
        eval_limit=eval_limit,
        eval_ground_truth=eval_ground_truth,
        eval_max_new_tokens=eval_max_new_tokens,
        recover_steps=recover_steps,
        reconstruct=reconstruct,
        device=device,
    )
    with rich_progress() as progress:
        report = run_chain(config, progress=progress)
    for step in report.steps:
        console.print(f"[bold]{step['step']}[/]: {step['status']} - {step['detail']}", highlight=False, soft_wrap=True)
    console.print(f"deployment folder: {report.out}", highlight=False, soft_wrap=True)
    if any(step["status"] == "failed" for step in report.steps):
        raise typer.Exit(1)  # the folder is kept for inspection, but a failed step fails the run
