"""Concurrent streaming chat requests against an OpenAI-compatible server.

Streaming is what makes time to first token observable from outside: the first SSE chunk leaves
the server when the first token does. `stream_options.include_usage` gives the exact token count,
which counting chunks would not (a chunk may carry several tokens, or none).
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import httpx

from mucrasp.errors import MucraspError
from mucrasp.serve.requests import ChatRequest, PhaseResult, RequestResult


class ServerDied(MucraspError):
    """The server stopped answering because its process is gone."""


def _image_url(path: Path) -> str:
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    mime = "jpeg" if suffix in ("jpg", "jpeg") else suffix
    return f"data:image/{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def chat_payload(model: str, request: ChatRequest) -> dict:
    content: list[dict] | str = request.prompt
    if request.image is not None:
        content = [
            {"type": "image_url", "image_url": {"url": _image_url(request.image)}},
            {"type": "text", "text": request.prompt},
        ]
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": request.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.ignore_eos:
        payload["ignore_eos"] = True  # vLLM's extension: a fixed output length makes runs comparable
    return payload


def _one(client: httpx.Client, url: str, model: str, request: ChatRequest) -> RequestResult:
    start = time.perf_counter()
    first = last = None
    pieces: list[str] = []
    tokens = 0
    with client.stream("POST", url, json=chat_payload(model, request)) as response:
        if response.status_code != 200:
            body = response.read().decode(errors="replace")
            return RequestResult("", 0, 0.0, time.perf_counter() - start, f"HTTP {response.status_code}: {body[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens", tokens)
            for choice in chunk.get("choices") or []:
                now = time.perf_counter()
                first = first or now
                last = now
                pieces.append((choice.get("delta") or {}).get("content") or "")
    end = time.perf_counter()
    first, last = first or end, last or end
    return RequestResult("".join(pieces), tokens, first - start, last - start)


def run_requests(
    base_url: str,
    model: str,
    requests: Sequence[ChatRequest],
    concurrency: int,
    timeout_s: float,
    server_alive: Callable[[], bool],
) -> PhaseResult:
    """Send every request, `concurrency` at a time; a dead server raises ServerDied at once."""
    url = f"{base_url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def send(client: httpx.Client, request: ChatRequest) -> RequestResult:
        try:
            return _one(client, url, model, request)
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            if not server_alive():
                raise ServerDied("the vLLM server died mid-run") from None
            return RequestResult("", 0, 0.0, 0.0, f"{type(exc).__name__}: {exc}")

    with httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:
        start = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=concurrency)
        try:
            results = list(pool.map(lambda r: send(client, r), requests))
        finally:
            # map() queued every request up front; on a dead server or a signal (SystemExit) the queued
            # ones must not run out one by one before we can stop, so they are cancelled.
            pool.shutdown(wait=True, cancel_futures=True)
        wall = time.perf_counter() - start
    return PhaseResult(results, wall)
