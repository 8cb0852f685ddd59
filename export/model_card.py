"""The model card (README.md) written next to an exported checkpoint."""

from __future__ import annotations

from typing import Any


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1e6:,.2f}M ({n:,})" if n >= 1e5 else f"{n:,}"


def _quality_lines(quality: Any) -> list[str]:
    if not quality:
        return ["Not measured yet. Run the serving smoke test (`mucrasp-deploy smoke`) to measure it."]
    if isinstance(quality, dict):
        return [f"- {key}: {value}" for key, value in quality.items()]
    return [str(quality)]


def build_model_card(
    manifest: dict[str, Any],
    architecture: str,
    widths: list[tuple[int, int]],
    widths_before: list[tuple[int, int]] | None,
    per_layer: bool,
    serve_notes: list[str],
    quality: Any = None,
    title: str = "MuCRASP-pruned model",
) -> str:
    params = manifest.get("parameters", {})
    before, after = params.get("before", {}), params.get("after", {})
    lines = [
        f"# {title}",
        "",
        "Structurally pruned with mucrasp-deploy: a smaller dense model, not a masked one.",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{manifest.get('base_model', 'unknown')}` |",
        f"| Architecture | `{architecture}` |",
        f"| Method | {manifest.get('method', 'unknown')} |",
        f"| Target ratio | {manifest.get('ratio', 'unknown')} (of {manifest.get('ratio_definition', 'the prunable decoder parameters')}) |",
        f"| Ratio achieved | {manifest.get('ratio_achieved', 'unknown')} |",
        f"| Layout | {manifest.get('layout', 'unknown')} ({'per-layer widths' if per_layer else 'uniform widths, stock checkpoint'}) |",
        f"| Parameters (total) | {_fmt_params(before.get('total'))} -> {_fmt_params(after.get('total'))} |",
        f"| Parameters (prunable) | {_fmt_params(before.get('prunable'))} -> {_fmt_params(after.get('prunable'))} |",
        f"| Tool | {manifest.get('tool', 'mucrasp-deploy')} |",
        "",
        "## Per-layer widths",
        "",
        "| layer | MLP channels | KV heads |",
        "|---:|---:|---:|",
    ]
    for i, (mlp, kv) in enumerate(widths):
        if widths_before and i < len(widths_before):
            mlp_b, kv_b = widths_before[i]
            lines.append(f"| {i} | {mlp} / {mlp_b} | {kv} / {kv_b} |")
        else:
            lines.append(f"| {i} | {mlp} | {kv} |")
    lines += ["", "## Serving", "", *serve_notes, "", "## Measured quality", "", *_quality_lines(quality), ""]
    return "\n".join(lines)
