"""`run_smoke(SmokeConfig) -> SmokeReport`: does this export serve, how fast, in how much memory, and does
it still reason. The report is written atomically (report.json), pass or fail; failing checks name
their metric. Bad input raises MucraspError before anything starts.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mucrasp
from mucrasp.atomic_io import check_writable, write_json_atomic
from mucrasp.errors import MucraspError
from mucrasp.serve.backends import BackendRun, model_config, run_backend, tensor_parallel_size
from mucrasp.serve.config import Planned, SmokeConfig, Thresholds
from mucrasp.serve.requests import ChatRequest
from mucrasp.serve.spot_check import SpotCheckSet, load_spot_check, score_answers
from mucrasp.serve.stats import summarize

GB = 1e9


@dataclass
class Check:
    metric: str
    value: float | None
    limit: float
    op: str  # ">=" or "<="
    passed: bool

    def describe(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.metric} = {shown} (needs {self.op} {self.limit:g})"


@dataclass
class SmokeReport:
    path: Path
    data: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def effective_thresholds(config: SmokeConfig) -> tuple[Thresholds, str | None]:
    """The CLI's thresholds, with the memory limit taken from the profile where the CLI gave none."""
    t = config.thresholds
    if config.profile is None or t.max_memory_gb is not None:
        return t, None
    from mucrasp.planning import load_profile

    profile = load_profile(config.profile)
    limit = profile.memory_gb * profile.gpu_count * profile.gpu_memory_utilization
    return Thresholds(t.min_tokens_per_s, round(limit, 3), t.min_spot_check), profile.name


def _load_image(spot: SpotCheckSet | None, vision: bool, scratch: Path, image_size: int | None = None) -> Path | None:
    """The load phase's image: one of `image_size` pixels a side when asked (the workload's size, which
    sets the vision tower's cost and the image tokens), else the spot-check set's first image. A made
    image goes in `scratch`, which the caller removes after the run."""
    if not vision:
        return None
    if spot is not None and image_size is None:
        image = next((r.image for r in spot.records if r.image is not None), None)
        if image is not None:
            return image
    # A VL server must be measured with images: their encoding is part of the cost of a request.
    from PIL import Image

    side = image_size or 224
    path = Path(scratch) / f"load-{side}.png"
    Image.linear_gradient("L").convert("RGB").resize((side, side)).save(path)
    return path


def _checks(thresholds: Thresholds, throughput: dict, memory_gb: float, spot_score: float | None) -> list[Check]:
    checks = []
    if thresholds.min_tokens_per_s is not None:
        value = throughput["tokens_per_s"]
        checks.append(
            Check("tokens_per_s", value, thresholds.min_tokens_per_s, ">=", value >= thresholds.min_tokens_per_s)
        )
    if thresholds.max_memory_gb is not None:
        checks.append(
            Check("peak_memory_gb", memory_gb, thresholds.max_memory_gb, "<=", memory_gb <= thresholds.max_memory_gb)
        )
    if thresholds.min_spot_check is not None:
        ok = spot_score is not None and spot_score >= thresholds.min_spot_check
        checks.append(Check("spot_check", spot_score, thresholds.min_spot_check, ">=", ok))
    return checks


def model_positions(export_dir: Path) -> int | None:
    """The longest context the model was built for (max_position_embeddings), where its config says."""
    try:
        model = model_config(export_dir)
    except MucraspError:  # an ONNX export: no config.json
        return None
    limit = model.get("text_config", model).get("max_position_embeddings") or model.get("max_position_embeddings")
    return int(limit) if limit else None


def _served_len(config: SmokeConfig, export_dir: Path) -> int:
    positions = model_positions(export_dir)
    return min(config.max_model_len, positions) if positions else config.max_model_len


def planned_vs_measured(
    planned: Planned,
    config: SmokeConfig,
    thresholds: Thresholds,
    throughput: dict,
    memory: dict,
    positions: int | None,
    served_image_size: int | None = None,
) -> dict[str, Any]:
    """The plan's figures next to this run's: tokens/s, memory, context and concurrency."""
    served_len = min(planned.max_model_len, positions) if positions else planned.max_model_len
    context: dict[str, Any] = {"planned": planned.max_model_len, "served": served_len}
    notes = []
    if served_len < planned.max_model_len:
        notes.append(
            f"capped at the model's max_position_embeddings ({positions}): the planned context is longer "
            "than the model supports"
        )
    if config.backend != "vllm":
        notes.append(f"the {config.backend} backend takes no context limit (requests are prompt + max_tokens)")
    if notes:
        context["note"] = "; ".join(notes)
    served_concurrency = min(config.concurrency if config.backend == "vllm" else 1, config.requests)
    concurrency: dict[str, Any] = {"planned": planned.concurrency, "served": served_concurrency}
    if served_concurrency < planned.concurrency:
        concurrency["note"] = (
            f"the {config.backend} backend runs batch 1"
            if config.backend != "vllm"
            else f"only {config.requests} requests were sent"
        )
    return {
        "profile": planned.profile,
        "ratio": planned.ratio,
        "tokens_per_s": {
            "planned": None if planned.tokens_per_s is None else round(planned.tokens_per_s, 1),
            "target": planned.target_tokens_per_s or None,
            "measured": round(throughput["tokens_per_s"], 3),
            "enforced": planned.enforced,
            "note": planned.note,
        },
        "memory_gb": {
            "planned": None if planned.memory_gb is None else round(planned.memory_gb, 4),
            "limit": thresholds.max_memory_gb,
            "measured": memory["peak_gb"],
            "kind": memory["kind"],
        },
        "max_model_len": context,
        "concurrency": concurrency,
        "ttft_s": {
            "planned": None if planned.ttft_s is None else float(f"{planned.ttft_s:.4g}"),  # GPU TTFTs are sub-ms
            "measured_p50": throughput["ttft_p50_s"],
            "image_size": {"planned": planned.image_size, "served": served_image_size},
        },
    }


def run_smoke(config: SmokeConfig) -> SmokeReport:
    config.validate()
    check_writable(config.report_path)  # before any engine starts, not after the whole run
    export_dir = Path(config.export_dir)
    onnx = (export_dir / "manifest.json").is_file() and not (export_dir / "config.json").is_file()
    if config.backend == "onnx" and not onnx:
        raise MucraspError(f"{export_dir} is not an ONNX export (no manifest.json); export it with `export onnx`")
    if config.backend != "onnx" and onnx:
        raise MucraspError(f"{export_dir} is an ONNX export; smoke-test it with --backend onnx")
    vision = _onnx_vision(export_dir) if onnx else "vision_config" in model_config(export_dir)
    thresholds, profile_name = effective_thresholds(config)
    spot = load_spot_check(export_dir, config.data, config.spot_check_limit)

    spot_requests = [ChatRequest(r.prompt, r.image, config.spot_check_max_tokens) for r in spot.records] if spot else []
    with tempfile.TemporaryDirectory(prefix="mucrasp-smoke-") as scratch:
        load_image = _load_image(spot, vision, Path(scratch), config.image_size)
        load_image_side = _image_side(load_image)
        load = [
            ChatRequest(config.prompt, load_image, config.max_tokens, ignore_eos=True) for _ in range(config.requests)
        ]
        run: BackendRun = run_backend(config, load, spot_requests, spot.records if spot else None)

    throughput = summarize(run.load)
    memory_gb = run.peak_memory_bytes / GB
    spot_result: dict[str, Any] = (
        score_answers(spot, run.spot)
        if spot
        else {"skipped": "no spot-check set stored with the export (spot_check.jsonl) and no --data given"}
    )
    spot_score = spot_result.get("score")
    checks = _checks(thresholds, throughput, memory_gb, spot_score)
    failures = [c.describe() for c in checks if not c.passed]
    if throughput["failed_requests"]:
        failures.insert(
            0,
            f"requests: {throughput['failed_requests']} of {throughput['requests']} failed "
            f"({throughput['first_error']})",
        )
    if throughput["output_tokens"] == 0:
        failures.insert(0, "tokens_per_s: no output tokens at all")

    memory = {
        "peak_gb": round(memory_gb, 4),
        "kind": run.memory_kind,
        "what": "peak GPU memory" if run.memory_kind == "gpu" else "peak RSS of the serving process tree",
    }
    data = {
        "format_version": 1,
        "tool": f"mucrasp-deploy {mucrasp.__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {
            "name": platform.node(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or None,
        },
        "export_dir": str(export_dir.resolve()),
        "backend": config.backend + (" (offline)" if config.offline else ""),
        "vision": bool(vision),
        "load": {
            "requests": config.requests,
            "concurrency": config.concurrency if config.backend == "vllm" else 1,
            # as vLLM got it (--max-model-len, capped at the model's positions); the others take none
            "max_model_len": _served_len(config, export_dir) if config.backend == "vllm" else None,
            "tensor_parallel_size": tensor_parallel_size(config) if config.backend == "vllm" else None,
            "max_tokens": config.max_tokens,
            "prompt": config.prompt,
            "image": bool(load_image),
            # as the model saw it: an ONNX vision graph resizes every image to the grid it was traced at
            "image_size": run.details.get("image_size") or load_image_side,
        },
        "throughput": throughput,
        "memory": memory,
        "spot_check": spot_result,
        "cot_kl": run.cot_kl,
        "backend_details": run.details,
        "profile": profile_name,
        "thresholds": thresholds.__dict__,
        "checks": [c.__dict__ for c in checks],
        "passed": not failures,
        "failures": failures,
    }
    if config.planned is not None:
        data["planned_vs_measured"] = planned_vs_measured(
            config.planned,
            config,
            thresholds,
            throughput,
            memory,
            None if onnx else model_positions(export_dir),
            data["load"]["image_size"],
        )
    write_json_atomic(config.report_path, data)
    return SmokeReport(path=config.report_path, data=data, checks=checks, failures=failures)


def _image_side(path: Path | None) -> int | None:
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as image:
        return max(image.size)


def _onnx_vision(export_dir: Path) -> bool:
    from mucrasp.export.onnx_manifest import read_onnx_manifest

    return "vision" in read_onnx_manifest(export_dir)
