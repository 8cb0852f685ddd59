"""The model card (README.md) written next to an exported checkpoint."""

from __future__ import annotations

from typing import Any


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1e6:,.2f}M ({n:,})" if n >= 1e5 else f"{n:,}"


# What `mucrasp-deploy eval` reports, in the order a reader wants it.
EVAL_METRICS = {
    "accuracy": "accuracy (pruned)",
    "dense_accuracy": "accuracy (dense)",
    "agreement": "answer agreement with the dense model",
    "cot_kl": "CoT-token KL(dense || pruned), nats",
    "pivot_kl": "pivot-window KL, nats",
    "perplexity": "perplexity of the dense traces",
    "items": "items",
}


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _num(value: Any) -> str:
    """A measurement or estimate: whole numbers from 1000 up, else four significant digits."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _quality_lines(quality: Any, smoke: dict[str, Any] | None = None) -> list[str]:
    if not quality:
        spot = (smoke or {}).get("spot_check", {})
        if "score" in spot:
            return [
                "Not evaluated with `mucrasp-deploy eval`; the smoke test's spot-check below "
                f"({spot['kind']} {spot['score']:.3f} on {spot['records']} items) is the only quality figure.",
            ]
        return [
            "Not measured yet. Run `mucrasp-deploy eval PRUNED --dense DENSE --data FILE --json eval.json` "
            "(or the deployment chain with `--eval-data FILE`) to measure it.",
        ]
    if isinstance(quality, dict) and any(k in quality for k in EVAL_METRICS):
        lines = []
        if quality.get("data"):
            lines += [f"`mucrasp-deploy eval` against the dense model on `{quality['data']}`:", ""]
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| {label} | {_value(quality[k])} |" for k, label in EVAL_METRICS.items() if k in quality]
        return lines
    if isinstance(quality, dict):
        return [f"- {key}: {value}" for key, value in quality.items()]
    return [str(quality)]


def _smoke_lines(smoke: dict[str, Any] | None) -> list[str]:
    """The smoke test's figures, with the plan's next to them when the chain ran it."""
    if not smoke:
        return ["Not run yet: `mucrasp-deploy smoke DIR --backend vllm|onnx|transformers`."]
    t, m, spot = smoke["throughput"], smoke["memory"], smoke["spot_check"]
    host = smoke.get("host", {})
    lines = [
        f"{'Passed' if smoke.get('passed') else 'FAILED'} on {smoke['backend']} "
        f"({host.get('machine', '?')}, {host.get('cpus', '?')} CPUs, {smoke.get('created', '')}).",
        "",
    ]
    pvm = smoke.get("planned_vs_measured")
    if pvm:
        tps, mem, ctx, conc = pvm["tokens_per_s"], pvm["memory_gb"], pvm["max_model_len"], pvm["concurrency"]
        target = f"target {tps['target']:g}" if tps.get("target") else "no target"
        if not tps.get("target"):
            target_note = ""
        elif tps.get("enforced"):
            target_note = "the tokens/s target was a pass/fail threshold of this run"
        else:
            target_note = f"the tokens/s target was not a threshold of this run: {tps.get('note') or 'not enforced'}"
        lines += [
            f"| | planned ({pvm['profile']}) | measured |",
            "|---|---:|---:|",
            f"| output tokens/s | {_num(tps['planned'])} ({target}) | {t['tokens_per_s']:.1f} |",
            f"| memory (GB) | {_num(mem['planned'])} (limit {_num(mem['limit'])}) | {m['peak_gb']:.2f} ({m['kind']}) |",
            f"| context (tokens) | {ctx['planned']} | {ctx['served']} |",
            f"| concurrency | {conc['planned']} | {conc['served']} |",
        ]
        notes = [n for n in (target_note, ctx.get("note"), conc.get("note")) if n]
        lines += ["", *(f"- {n}" for n in notes)] if notes else []
    else:
        lines += [
            f"- output tokens/s: {t['tokens_per_s']:.1f}",
            f"- {m['what']}: {m['peak_gb']:.2f} GB",
        ]
    lines += [
        "",
        f"- time to first token p50: {_num(t.get('ttft_p50_s'))} s; latency p50: {_num(t.get('latency_p50_s'))} s",
        f"- spot-check: {spot['kind']} {spot['score']:.3f} ({spot['matched']}/{spot['records']})"
        if "score" in spot
        else f"- spot-check: skipped ({spot.get('skipped', 'no set')})",
    ]
    note = (smoke.get("backend_details") or {}).get("cpu_int8_note")
    if note:
        lines.append(f"- note: {note}")
    for failure in smoke.get("failures", []):
        lines.append(f"- FAILED: {failure}")
    return lines


def build_model_card(
    manifest: dict[str, Any],
    architecture: str,
    widths: list[tuple[int, int]],
    widths_before: list[tuple[int, int]] | None,
    per_layer: bool,
    serve_notes: list[str],
    quality: Any = None,
    title: str = "MuCRASP-pruned model",
    smoke: dict[str, Any] | None = None,
) -> str:
    """`quality`: an eval report (`mucrasp-deploy eval --json`), a dict or text; `smoke`: a smoke report
    (smoke.json). Both None: the card says what to run to measure them."""
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
        f"| Target ratio | {manifest.get('ratio', 'unknown')} "
        f"(of {manifest.get('ratio_definition', 'the prunable decoder parameters')}) |",
        f"| Ratio achieved | {manifest.get('ratio_achieved', 'unknown')} |",
        f"| Layout | {manifest.get('layout', 'unknown')} "
        f"({'per-layer widths' if per_layer else 'uniform widths, stock checkpoint'}) |",
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
    lines += ["", "## Serving", "", *serve_notes, "", "## Measured quality", "", *_quality_lines(quality, smoke)]
    lines += ["", "## Smoke test", "", *_smoke_lines(smoke), ""]
    return "\n".join(lines)
