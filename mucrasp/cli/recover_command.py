"""`mucrasp-deploy recover`: distil the dense model back into a pruned checkpoint (`mucrasp.recovery.recover`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mucrasp.cli.app import app, console
from mucrasp.cli.progress import rich_progress
from mucrasp.cli.shared_options import device_option
from mucrasp.recovery import RecoverConfig
from mucrasp.validation import field_default as _default


@app.command("recover")
def recover_command(
    pruned: Path = typer.Argument(..., help="Pruned checkpoint folder (from `prune` or the chain's model/)."),
    dense: Path = typer.Option(..., "--dense", help="The dense model it was pruned from: the teacher."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the recovered pruned checkpoint."),
    calib: Path = typer.Option(
        None,
        help="Calibration JSONL (the dense model's traces); default: its answers to the bundled recovery prompts, "
        "one per training sample (steps x batch size, up to 256).",
    ),
    steps: int = typer.Option(_default(RecoverConfig, "steps"), help="Optimizer steps."),
    lr: float = typer.Option(_default(RecoverConfig, "lr"), help="AdamW learning rate."),
    temperature: float = typer.Option(_default(RecoverConfig, "temperature"), help="Distillation temperature T."),
    lora: int = typer.Option(
        _default(RecoverConfig, "lora_rank"),
        "--lora",
        help="LoRA rank on every decoder projection, merged back at the end; 0: full-parameter training.",
    ),
    lora_alpha: float = typer.Option(_default(RecoverConfig, "lora_alpha"), help="LoRA alpha (scale alpha/rank)."),
    batch_size: int = typer.Option(_default(RecoverConfig, "batch_size"), help="Calibration samples per step."),
    seed: int = typer.Option(_default(RecoverConfig, "seed"), help="Seed of the data order and the LoRA init."),
    checkpoint_every: int = typer.Option(
        _default(RecoverConfig, "checkpoint_every"), help="Steps between resumable checkpoints."
    ),
    max_seq_len: int = typer.Option(
        None, help="Cut calibration sequences to this many tokens; default: the model's context."
    ),
    device: str = device_option(RecoverConfig),
    dtype: str = typer.Option(
        _default(RecoverConfig, "dtype"), help="The dense teacher's dtype (the student trains in fp32)."
    ),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Distil DENSE into PRUNED (KL on response-token logits) and write a pruned checkpoint with the same widths.

    An interrupted run resumes: run the same command again and it continues from its last checkpoint.
    """
    from mucrasp.recovery import recover

    config = RecoverConfig(
        pruned=pruned,
        dense=dense,
        out=out,
        calibration=calib,
        steps=steps,
        lr=lr,
        temperature=temperature,
        lora_rank=lora,
        lora_alpha=lora_alpha,
        batch_size=batch_size,
        seed=seed,
        checkpoint_every=checkpoint_every,
        max_seq_len=max_seq_len,
        device=device,
        dtype=dtype,
        overwrite=overwrite,
    )
    with rich_progress(field="loss") as (progress, set_field):
        report = recover(
            config, progress=progress, on_loss=lambda step, loss: set_field("distilling", f"loss {loss:.4f}")
        )
    r = report.result
    resumed = f", resumed at step {r.resumed_from}" if r.resumed_from else ""
    console.print(
        f"wrote {report.out}: {len(r.losses)} steps{resumed}, distillation loss {r.losses[0]:.4f} -> "
        f"{r.losses[-1]:.4f}, {r.seconds_per_step:.2f} s/step, on {report.calibration}",
        highlight=False,
        soft_wrap=True,
    )
