"""`mucrasp-deploy smoke DIR --backend vllm|onnx|transformers`: serve an export, measure it, pass or fail."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mucrasp.cli.app import app, console, err_console
from mucrasp.serve.config import SmokeConfig
from mucrasp.validation import field_default as _default

if TYPE_CHECKING:
    from rich.table import Table


def _fmt(value, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def report_table(data: dict) -> Table:
    from rich.table import Table

    t, m, s = data["throughput"], data["memory"], data["spot_check"]
    table = Table(title=f"smoke test: {data['backend']} on {Path(data['export_dir']).name}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    limits = {c["metric"]: (c["op"], c["limit"], c["passed"]) for c in data["checks"]}

    def row(name: str, metric: str | None, value: str) -> None:
        op, limit, ok = limits.get(metric, (None, None, None))
        mark = "" if op is None else f"{'[green]ok[/]' if ok else '[bold red]FAIL[/]'} {op} {limit:g}"
        table.add_row(name, value, mark)

    row("output tokens/s (aggregate)", "tokens_per_s", _fmt(t["tokens_per_s"], digits=4))
    row("decode tokens/s per stream", None, _fmt(t["decode_tokens_per_s_per_stream"], digits=4))
    row("time to first token p50 / p95", None, f"{_fmt(t['ttft_p50_s'], ' s')} / {_fmt(t['ttft_p95_s'], ' s')}")
    planned_ttft = (data.get("planned_vs_measured") or {}).get("ttft_s", {}).get("planned")
    if planned_ttft is not None:
        row("time to first token, planned", None, _fmt(planned_ttft, " s"))
    if data["load"].get("image_size"):
        row("load image (pixels a side)", None, str(data["load"]["image_size"]))
    row("latency p50 / p95", None, f"{_fmt(t['latency_p50_s'], ' s')} / {_fmt(t['latency_p95_s'], ' s')}")
    row("requests (failed)", None, f"{t['requests']} ({t['failed_requests']})")
    row(m["what"], "peak_memory_gb", _fmt(m["peak_gb"], " GB"))
    if "score" in s:
        row(f"spot-check {s['kind']}", "spot_check", f"{s['score']:.3f} ({s['matched']}/{s['records']})")
    else:
        row("spot-check", "spot_check", "skipped")
    if data.get("cot_kl") is not None:
        row("CoT-token KL vs dense (nats)", None, _fmt(data["cot_kl"], digits=4))
    return table


@app.command("smoke")
def smoke_command(
    export_dir: Path = typer.Argument(
        ..., help="An export: `export vllm` folder (vllm, transformers) or `export onnx` folder (onnx)."
    ),
    backend: str = typer.Option(_default(SmokeConfig, "backend"), help="vllm, onnx or transformers."),
    offline: bool = typer.Option(False, help="vllm: use vllm.LLM without a server."),
    requests: int = typer.Option(_default(SmokeConfig, "requests"), help="Load phase: number of requests."),
    concurrency: int = typer.Option(
        _default(SmokeConfig, "concurrency"), help="Load phase: requests in flight (vllm)."
    ),
    max_tokens: int = typer.Option(_default(SmokeConfig, "max_tokens"), help="Load phase: output tokens per request."),
    image_size: int = typer.Option(
        _default(SmokeConfig, "image_size"),
        help="VL exports: the load phase's image, pixels a side (as `plan --image-size`); default: a spot-check image.",
    ),
    spot_check_limit: int = typer.Option(
        _default(SmokeConfig, "spot_check_limit"), help="Spot-check records to ask (0: all)."
    ),
    spot_check_max_tokens: int = typer.Option(
        _default(SmokeConfig, "spot_check_max_tokens"), help="Spot-check: longest answer, in tokens."
    ),
    data: Path = typer.Option(None, help="Spot-check JSONL (image, prompt, response) instead of the export's own."),
    tokenizer: Path = typer.Option(None, help="Tokenizer/processor folder when the export has none."),
    dense: Path = typer.Option(None, help="Dense model: adds CoT-token KL (transformers and onnx backends)."),
    min_tokens_per_s: float = typer.Option(None, help="Fail below this aggregate output tokens/s."),
    max_memory_gb: float = typer.Option(
        None, help="Fail above this peak memory (GB); default with --profile: its memory × utilisation."
    ),
    min_spot_check: float = typer.Option(None, help="Fail below this spot-check score (0-1)."),
    profile: str = typer.Option(
        None, "--profile", help="Hardware profile: gpu_memory_utilization and the memory limit."
    ),
    port: int = typer.Option(None, help="vllm: server port on 127.0.0.1; default: a free one."),
    dtype: str = typer.Option(
        _default(SmokeConfig, "dtype"), help="vllm --dtype; auto: float32 on CPU, the model's own on GPU."
    ),
    max_model_len: int = typer.Option(_default(SmokeConfig, "max_model_len"), help="vllm --max-model-len."),
    tensor_parallel_size: int = typer.Option(
        _default(SmokeConfig, "tensor_parallel_size"),
        help="vllm --tensor-parallel-size; default: the --profile's gpu_count (1 without one).",
    ),
    kv_cache_gb: float = typer.Option(
        _default(SmokeConfig, "kv_cache_gb"), help="vllm on CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE)."
    ),
    report: Path = typer.Option(None, help="Where report.json goes; default: DIR/report.json."),
) -> None:
    """Serve an exported model and measure throughput, latency, peak memory and a reasoning spot-check.

    Exits 1 when a threshold is not met (the failing metric is named), 2 on bad input or a server that
    cannot start.
    """
    from mucrasp.serve import Thresholds, run_smoke
    from mucrasp.validation import validated

    thresholds = validated(
        Thresholds,
        {"min_tokens_per_s": min_tokens_per_s, "max_memory_gb": max_memory_gb, "min_spot_check": min_spot_check},
    )
    config = SmokeConfig(
        export_dir=export_dir,
        backend=backend,
        offline=offline,
        requests=requests,
        concurrency=concurrency,
        max_tokens=max_tokens,
        image_size=image_size,
        spot_check_limit=spot_check_limit or None,
        spot_check_max_tokens=spot_check_max_tokens,
        data=data,
        processor_dir=tokenizer,
        dense=dense,
        profile=profile,
        port=port,
        dtype=dtype,
        max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size,
        kv_cache_gb=kv_cache_gb,
        report=report,
        thresholds=thresholds,
    )
    with console.status(f"smoke test on {backend}: starting, then {requests} requests"):
        result = run_smoke(config)
    console.print(report_table(result.data))
    if "skipped" in result.data["spot_check"]:
        console.print(f"spot-check skipped: {result.data['spot_check']['skipped']}", highlight=False)
    console.print(f"report: {result.path}", highlight=False)
    if not result.passed:
        for failure in result.failures:
            err_console.print(f"[bold red]FAIL[/] {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print("[bold green]PASS[/]")
