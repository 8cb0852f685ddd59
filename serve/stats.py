"""Throughput and latency figures of one load phase."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mucrasp.serve.requests import PhaseResult


def _pct(values: list[float], q: float) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return round(float(np.percentile(values, q)), 4) if values else None


def summarize(phase: PhaseResult) -> dict[str, Any]:
    ok = [r for r in phase.results if r.error is None]
    tokens = sum(r.output_tokens for r in ok)
    # Decode speed of one stream: tokens after the first over the time after the first, pooled over
    # requests (a mean of ratios would let one request whose chunks arrived together dominate).
    timed = [r for r in ok if r.output_tokens > 1 and not math.isnan(r.latency_s)]
    decode_time = sum(r.latency_s - r.ttft_s for r in timed)
    latencies = [r.latency_s for r in ok]
    return {
        "requests": len(phase.results),
        "failed_requests": len(phase.results) - len(ok),
        "first_error": next((r.error for r in phase.results if r.error), None),
        "output_tokens": tokens,
        "wall_s": round(phase.wall_s, 4),
        "tokens_per_s": round(tokens / phase.wall_s, 3) if phase.wall_s > 0 else 0.0,
        "ttft_p50_s": _pct([r.ttft_s for r in ok], 50),
        "ttft_p95_s": _pct([r.ttft_s for r in ok], 95),
        "latency_p50_s": _pct(latencies, 50),
        "latency_p95_s": _pct(latencies, 95),
        "latency_mean_s": round(float(np.nanmean(latencies)), 4)
        if ok and not all(map(math.isnan, latencies))
        else None,
        "decode_tokens_per_s_per_stream": round(sum(r.output_tokens - 1 for r in timed) / decode_time, 3)
        if decode_time > 0
        else None,
    }
