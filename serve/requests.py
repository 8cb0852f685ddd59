"""One request and what came back: the common currency of every backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChatRequest:
    prompt: str
    image: Path | None = None
    max_tokens: int = 32
    ignore_eos: bool = False  # the load phase: every request produces exactly max_tokens


@dataclass
class RequestResult:
    text: str
    output_tokens: int
    ttft_s: float  # request sent -> first output token
    latency_s: float  # request sent -> last output token
    error: str | None = None


@dataclass
class PhaseResult:
    results: list[RequestResult]
    wall_s: float  # first request sent -> last response done
