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
    weights: str = typer.Option(
        "bf16",
        help="bf16 (weights as they are) | w8a8 (int8, CPU and GPU) | w4a16 (int4 weights, groups of 32) | "
        "fp8 (GPUs of compute capability >= 8.9): compressed-tensors checkpoints vLLM serves with no flags.",
    ),
) -> None:
    """Write a checkpoint that `vllm serve OUT` and `LLM(OUT)` load with no flags."""
    from mucrasp.export.vllm_checkpoint import export_vllm

    result = export_vllm(pruned_dir, out, overwrite=overwrite, weights=weights)
    kind = "per-layer widths (served through the mucrasp vLLM plugin)" if result.per_layer else "uniform widths (stock)"
    console.print(f"wrote {result.out}: {result.architecture}, {kind}, {result.weights} weights")
    if result.quantization:
        q = result.quantization
        console.print(
            f"quantized {q['quantized_linears']} decoder projections: weights {q['bytes_before'] / 2**20:.1f} MiB "
            f"-> {q['bytes_after'] / 2**20:.1f} MiB"
        )
    console.print(f"serve it with: vllm serve {result.out}")


@export_app.command("onnx")
def export_onnx_command(
    pruned_dir: Path = typer.Argument(..., help="Pruned checkpoint (written by `mucrasp-deploy prune`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the ONNX graphs and manifest.json."),
    dtype: str = typer.Option("fp32", help="fp32 or fp16."),
    weights: str = typer.Option(
        None,
        help="fp32 | fp16 | int8 | int4: int8 and int4 quantize the decoder's weights with ONNX Runtime's "
        "own tools (dynamic int8; 4-bit MatMulNBits); the vision graph stays fp32. Default: --dtype.",
    ),
    image_size: int = typer.Option(
        None,
        help="VL models whose vision graph takes one fixed size (Qwen3-VL): the square image size in pixels. "
        "Qwen2-VL and Qwen2.5-VL graphs take any size.",
    ),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Export ONNX graphs for ONNX Runtime: decoder with past (and vision encoder + embedding for VL)."""
    from mucrasp.export.onnx_export import ONNX_OPSET, export_onnx

    result = export_onnx(pruned_dir, out, dtype=dtype, overwrite=overwrite, image_size=image_size, weights=weights)
    console.print(
        f"wrote {result.out}: {', '.join(result.graphs)} (opset {ONNX_OPSET}, {result.weights} weights) "
        "and manifest.json"
    )
