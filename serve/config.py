"""What a smoke run does and what it must reach: typed, so the CLI, the chain and the benchmark agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from mucrasp.errors import MucraspError

if TYPE_CHECKING:
    from mucrasp.planning.profiles import Profile

BACKENDS = ("vllm", "onnx", "transformers")
DEFAULT_PROMPT = "Describe what you see, step by step, then give the answer."


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class Thresholds:
    """None: not checked. Memory is GPU memory on GPU hosts and peak RSS of the serving tree on CPU.

    A pydantic dataclass (positional arguments work): `min_spot_check` is a score within [0, 1].
    Build it with `mucrasp.validation.validated` for a one-line error naming the field.
    """

    min_tokens_per_s: Optional[float] = Field(None, ge=0)
    max_memory_gb: Optional[float] = Field(None, gt=0)
    min_spot_check: Optional[float] = Field(None, ge=0, le=1)


@dataclass(frozen=True)
class Planned:
    """What the deployment plan asked of this export, shown in the report next to what was measured.

    The chain fills it from its plan (`mucrasp.deploy`); a standalone `smoke` run has none.
    `tokens_per_s` is the planner's roofline estimate on the profile's hardware, `target_tokens_per_s`
    the workload's target (0: none); `enforced` says whether the target is a pass/fail threshold of
    this run, and `note` why not when it is not.
    """

    profile: str
    ratio: float | None
    max_model_len: int
    concurrency: int
    target_tokens_per_s: float
    tokens_per_s: float | None  # the planner's estimate at the chosen ratio
    memory_gb: float | None  # the planner's total at the chosen ratio (weights + KV + activations + reserve)
    budget_gb: float | None  # the profile's memory × GPUs × utilisation
    enforced: bool = False
    ttft_s: float | None = None  # the planner's time to first token (vision tower + prefill) on the profile
    image_size: int | None = None  # the workload's image, pixels a side, that ttft_s was predicted for
    note: str = ""


@dataclass
class SmokeConfig:
    export_dir: Path
    backend: str = "vllm"
    offline: bool = False  # vllm only: vllm.LLM in a worker process instead of an HTTP server
    requests: int = 8  # load phase: this many requests of `max_tokens` output tokens each
    concurrency: int = 4  # in flight at once (vllm); onnx and transformers run batch 1
    max_tokens: int = 32
    # VL exports: the load phase's image, this many pixels a side (the workload's, so its TTFT is measured
    # at the size the planner predicted for); None: the spot-check set's first image
    image_size: int | None = None
    spot_check_max_tokens: int = 128
    spot_check_limit: int | None = 16  # records of the held-out set to ask; None: all
    data: Path | None = None  # a spot-check JSONL instead of the one stored with the export
    processor_dir: Path | None = None  # tokenizer/processor, when the export has none (ONNX)
    dense: Path | None = None  # dense model: CoT-token KL where the backend exposes logits
    thresholds: Thresholds = field(default_factory=Thresholds)
    # gpu_memory_utilization and the default memory limit: a name, a YAML path, or a loaded Profile
    # (the deployment chain passes the one it loaded; `load_profile` returns a Profile as is).
    profile: "str | Path | Profile | None" = None
    port: int | None = None  # None: a free port
    dtype: str = "auto"  # vllm --dtype; auto: float32 on CPU (no bf16 kernels assumed), the model's on GPU
    max_model_len: int = 2048
    # vllm --tensor-parallel-size; None: the profile's gpu_count (1 without a profile)
    tensor_parallel_size: int | None = None
    kv_cache_gb: float = 1.0  # VLLM_CPU_KVCACHE_SPACE on CPU hosts
    startup_timeout_s: float = 900.0
    request_timeout_s: float = 600.0
    prompt: str = DEFAULT_PROMPT
    report: Path | None = None  # None: <export_dir>/report.json
    log_dir: Path | None = None  # where a failed server's log is kept; None: next to the report
    planned: Planned | None = None  # the chain's plan: reported next to the measured figures

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
        if self.image_size is not None and self.image_size < 1:
            raise MucraspError("image-size must be at least 1 pixel")
        if self.tensor_parallel_size is not None and self.tensor_parallel_size < 1:
            raise MucraspError("tensor-parallel-size must be at least 1")
        if self.port is not None and not 0 < self.port < 65536:
            raise MucraspError(f"port {self.port} is not a valid TCP port")

    @property
    def report_path(self) -> Path:
        return Path(self.report) if self.report else Path(self.export_dir) / "report.json"
