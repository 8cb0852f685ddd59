"""`mucrasp-deploy export vllm|onnx`: a pruned checkpoint out as something a runtime serves."""

from __future__ import annotations

from pathlib import Path

import typer

from mucrasp.cli.app import app, console

export_app = typer.Typer(help="Export a pruned checkpoint for vLLM or ONNX Runtime.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("vllm")
def export_vllm_command(
    pruned_dir: Path = typer.Argument(..., help="Pruned checkpoint (written by `mucrasp-deploy prune`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the vLLM checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Write a checkpoint that `vllm serve OUT` and `LLM(OUT)` load with no flags."""
    from mucrasp.export.vllm_checkpoint import export_vllm

    result = export_vllm(pruned_dir, out, overwrite=overwrite)
    kind = "per-layer widths (served through the mucrasp vLLM plugin)" if result.per_layer else "uniform widths (stock)"
    console.print(f"wrote {result.out}: {result.architecture}, {kind}")
    console.print(f"serve it with: vllm serve {result.out}")


@export_app.command("onnx")
def export_onnx_command(
    pruned_dir: Path = typer.Argument(..., help="Pruned checkpoint (written by `mucrasp-deploy prune`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the ONNX graphs and manifest.json."),
    dtype: str = typer.Option("fp32", help="fp32 or fp16."),
    image_size: int = typer.Option(
        None,
        help="VL models whose vision graph takes one fixed size (Qwen3-VL): the square image size in pixels. "
        "Qwen2-VL and Qwen2.5-VL graphs take any size.",
    ),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Export ONNX graphs for ONNX Runtime: decoder with past (and vision encoder + embedding for VL)."""
    from mucrasp.export.onnx_export import ONNX_OPSET, export_onnx

    result = export_onnx(pruned_dir, out, dtype=dtype, overwrite=overwrite, image_size=image_size)
    console.print(f"wrote {result.out}: {', '.join(result.graphs)} (opset {ONNX_OPSET}, {dtype}) and manifest.json")
