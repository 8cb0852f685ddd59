"""The weight-format catalogue: the one place that says what each quantized format costs and where it runs.

The planner sizes memory and decode reads with `bytes_per_weight`; profiles are checked against
`runs_on`; the exports (`export vllm --weights`, `export onnx --weights`) take their names from here.

What a format quantizes: the decoder's linear projections (q/k/v/o, gate/up/down), the weights the
pruning ratio counts. Embeddings, the output head, norms and the vision tower stay at the 16-bit
(or fp32) dtype: llm-compressor's Qwen2.5-VL recipes ignore `lm_head` and `visual.*`, and an export
that quantizes more than this is smaller than the plan says (the planner's figure is then an upper bound).

Dense formats are the dtypes themselves (`bf16`, `fp16`, `fp32`), named as in `profiles.DTYPE_BYTES`.

Sources for the hardware limits (see also ../shared/DESIGN.md, "Quantized serving"):
- vLLM compressed-tensors INT8 W8A8: CUTLASS scaled_mm, compute capability >= 7.5; on x86 CPU via oneDNN.
- vLLM W4A16 (AWQ/GPTQ/compressed-tensors pack-quantized): Marlin >= 8.0, Exllama/AWQ kernels >= 7.5 on GPU;
  the vLLM x86 CPU backend does not serve it here (weight-only int4 on CPU goes through ONNX Runtime).
- vLLM FP8: W8A8 FP8 needs >= 8.9 (Ada, Hopper); weight-only FP8 via Marlin >= 7.5
  (`is_fp8_marlin_supported`, vLLM 0.30+); no FP8 on the x86 CPU backend.
- ONNX Runtime: `quantize_dynamic` (int8 weights, activations quantized at run time) and
  `MatMulNBitsQuantizer` (4-bit blocks), both with CPU kernels; MatMulNBits also has a CUDA kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from mucrasp.errors import MucraspError

VLLM = "vllm"
ONNX = "onnx"
RUNTIMES = (VLLM, ONNX)


@dataclass(frozen=True)
class WeightFormat:
    """One way to store the decoder's projection weights.

    bits: stored bits per weight, before scales.
    group_size: weights sharing one scale (0: one scale per output channel, amortized to nothing).
    scale_bytes / zero_point_bytes: what each group adds.
    channel_bytes: what each output channel adds (a per-channel scale, and zero point), for formats
      with group_size 0; the memory model spreads it over the layer's input width (`hidden_size`).
    runtime: which export serves it (`vllm` or `onnx`); dense dtypes serve in both.
    min_compute_capability: the lowest NVIDIA compute capability that runs it; None: no GPU limit.
    cpu: whether the x86 CPU backend of that runtime serves it.
    quality_rank: expected quality cost, 0 (lossless) upward; the planner prefers the lowest rank
      that works and prunes only for what is left. Ordering, not a measured loss: 8-bit formats share
      rank 1 (FP8 and INT8 W8A8 both recover ~99% or more of 16-bit accuracy in published evaluations),
      4-bit weight-only formats rank 2. Equal ranks go to the faster format on the profile's hardware
      (`speedup_on`), then to the profile's own order.
    compute_speedup: matmul throughput against 16-bit on a GPU that runs it at full speed
      (int8/fp8 tensor cores are 2x); weight-only formats compute in 16-bit (1x).
    full_speed_compute_capability: below this the format runs weight-only (fp8 via Marlin):
      memory savings stay, compute_speedup does not apply.
    """

    name: str
    bits: int
    runtime: str
    quality_rank: int
    group_size: int = 0
    scale_bytes: float = 0.0
    zero_point_bytes: float = 0.0
    channel_bytes: float = 0.0
    min_compute_capability: float | None = None
    cpu: bool = True
    compute_speedup: float = 1.0
    full_speed_compute_capability: float | None = None
    description: str = ""

    @property
    def quantized(self) -> bool:
        return self.bits < 16

    @property
    def bytes_per_weight(self) -> float:
        """Stored bytes per quantized weight, its share of group scales and zero points included
        (per-channel scales: `bytes_per_weight_at`)."""
        overhead = (self.scale_bytes + self.zero_point_bytes) / self.group_size if self.group_size else 0.0
        return self.bits / 8 + overhead

    def bytes_per_weight_at(self, in_features: int) -> float:
        """As `bytes_per_weight`, plus the per-channel scales of a layer `in_features` wide."""
        return self.bytes_per_weight + self.channel_bytes / in_features

    def runs_on(self, compute_capability: float | None) -> bool:
        """Whether a device runs it: `compute_capability` None means the x86 CPU backend."""
        if compute_capability is None:
            return self.cpu
        return self.min_compute_capability is None or compute_capability >= self.min_compute_capability

    def speedup_on(self, compute_capability: float | None) -> float:
        if compute_capability is None:
            return 1.0  # profiles of CPUs rate their fp32 matmuls; no int8 figure is measured
        full = self.full_speed_compute_capability or self.min_compute_capability or 0.0
        return self.compute_speedup if compute_capability >= full else 1.0


FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        # Dense: the dtypes. bf16 needs Ampere (8.0), which Profile.dtypes already states per profile.
        WeightFormat("fp32", 32, "any", 0, description="dense fp32"),
        WeightFormat("bf16", 16, "any", 0, description="dense bf16"),
        WeightFormat("fp16", 16, "any", 0, description="dense fp16"),
        # vLLM, compressed-tensors checkpoints.
        WeightFormat(
            "fp8",
            8,
            VLLM,
            1,
            channel_bytes=2,
            min_compute_capability=7.5,
            cpu=False,
            compute_speedup=2.0,
            full_speed_compute_capability=8.9,
            description="FP8 E4M3 weights, a bf16 scale per output channel; W8A8 FP8 at >= 8.9, weight-only below",
        ),
        WeightFormat(
            "w8a8",
            8,
            VLLM,
            1,
            channel_bytes=2,
            min_compute_capability=7.5,
            compute_speedup=2.0,
            description="INT8 weights, a bf16 scale per output channel; activations quantized per token at run time",
        ),
        WeightFormat(
            "w4a16",
            4,
            VLLM,
            2,
            group_size=128,
            scale_bytes=2,
            min_compute_capability=7.5,
            cpu=False,
            description="INT4 weights in groups of 128 with a bf16/fp16 scale each (GPTQ/AWQ/Marlin), 16-bit compute",
        ),
        # ONNX Runtime's own quantization.
        WeightFormat(
            "int8",
            8,
            ONNX,
            1,
            channel_bytes=5,
            min_compute_capability=7.5,
            description="quantize_dynamic per channel: INT8 weights, an fp32 scale and int8 zero point per channel",
        ),
        WeightFormat(
            "int4",
            4,
            ONNX,
            2,
            group_size=128,
            scale_bytes=4,
            zero_point_bytes=0.5,
            min_compute_capability=7.5,
            description="MatMulNBits: 4-bit blocks of 128, an fp32 scale and a 4-bit zero point each",
        ),
    )
}
DENSE = ("fp32", "bf16", "fp16")
QUANTIZED = tuple(name for name, f in FORMATS.items() if f.quantized)
# The names each export's --weights takes (fixed by issue 19).
EXPORT_WEIGHTS = {VLLM: ("bf16", "w8a8", "w4a16", "fp8"), ONNX: ("fp32", "fp16", "int8", "int4")}


def get_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise MucraspError(f"unknown weight format {name!r} (known: {', '.join(FORMATS)})") from None


def formats_for_runtime(runtime: str | None) -> tuple[str, ...]:
    """The format names a runtime serves (None: every one)."""
    if runtime is None:
        return tuple(FORMATS)
    if runtime not in RUNTIMES:
        raise MucraspError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    return tuple(name for name, f in FORMATS.items() if f.runtime in (runtime, "any"))


def check_export_weights(runtime: str, name: str) -> str:
    """One clear error for `export <runtime> --weights NAME` with a name that export does not write."""
    allowed = EXPORT_WEIGHTS[runtime]
    if name not in allowed:
        raise MucraspError(f"export {runtime} --weights: {name!r} is not one of {'|'.join(allowed)}")
    return name
