"""What a smoke run does and what it must reach: typed, so the CLI, the chain and the benchmark agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mucrasp.errors import MucraspError

BACKENDS = ("vllm", "onnx", "transformers")
DEFAULT_PROMPT = "Describe what you see, step by step, then give the answer."


@dataclass(frozen=True)
class Thresholds:
    """None: not checked. Memory is GPU memory on GPU hosts and peak RSS of the serving tree on CPU."""

    min_tokens_per_s: float | None = None
    max_memory_gb: float | None = None
    min_spot_check: float | None = None


@dataclass
class SmokeConfig:
    export_dir: Path
    backend: str = "vllm"
    offline: bool = False  # vllm only: vllm.LLM in a worker process instead of an HTTP server
    requests: int = 8  # load phase: this many requests of `max_tokens` output tokens each
    concurrency: int = 4  # in flight at once (vllm); onnx and transformers run batch 1
    max_tokens: int = 32
    spot_check_max_tokens: int = 128
    spot_check_limit: int | None = 16  # records of the held-out set to ask; None: all
    data: Path | None = None  # a spot-check JSONL instead of the one stored with the export
    processor_dir: Path | None = None  # tokenizer/processor, when the export has none (ONNX)
    dense: Path | None = None  # dense model: CoT-token KL where the backend exposes logits
    thresholds: Thresholds = field(default_factory=Thresholds)
    profile: str | Path | None = None  # gpu_memory_utilization and the default memory limit
    port: int | None = None  # None: a free port
    dtype: str = "auto"  # vllm --dtype; auto: float32 on CPU (no bf16 kernels assumed), the model's on GPU
    max_model_len: int = 2048
    kv_cache_gb: float = 1.0  # VLLM_CPU_KVCACHE_SPACE on CPU hosts
    startup_timeout_s: float = 900.0
    request_timeout_s: float = 600.0
    prompt: str = DEFAULT_PROMPT
    report: Path | None = None  # None: <export_dir>/report.json
    log_dir: Path | None = None  # where a failed server's log is kept; None: next to the report

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise MucraspError(f"unknown backend {self.backend!r} (choose from: {', '.join(BACKENDS)})")
        if self.offline and self.backend != "vllm":
            raise MucraspError("--offline applies to the vllm backend only")
        if not Path(self.export_dir).is_dir():
            raise MucraspError(f"export folder {self.export_dir} does not exist")
        for name in ("requests", "concurrency", "max_tokens", "spot_check_max_tokens"):
            if getattr(self, name) < 1:
                raise MucraspError(f"{name.replace('_', '-')} must be at least 1")
        if self.port is not None and not 0 < self.port < 65536:
            raise MucraspError(f"port {self.port} is not a valid TCP port")

    @property
    def report_path(self) -> Path:
        return Path(self.report) if self.report else Path(self.export_dir) / "report.json"
