"""Which device and dtype a model runs in: `--device auto|cpu|cuda|cuda:N`, `--dtype auto|bfloat16|float16|float32`.

One meaning everywhere (score, prune, eval, the chain and the commands of later issues): the dtype
the model's weights are held and run in. Scores always accumulate in fp32/fp64 whatever it is.

`auto` rules:
- device: the first CUDA device when torch sees one, else the CPU;
- dtype: the checkpoint's own dtype, unless the device has no fast path for it:
  - CUDA: bf16 on a GPU without bf16 (T4) becomes fp16; fp16 and fp32 are kept;
  - CPU: fp32 is always fast; bf16 is fast with `avx512_bf16` or `amx_bf16` (oneDNN uses them), fp16
    with `avx512_fp16` or `amx_fp16`. Without them (an AVX2-only CPU) auto picks fp32, unless the
    weights in fp32 would not fit in the memory available, in which case the checkpoint's dtype is
    kept (slow, emulated, but it runs) and a warning says so.

Torch is imported inside the functions, so CLI option parsing stays cheap.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BeforeValidator

from mucrasp.errors import MucraspError

if TYPE_CHECKING:
    import torch

# The names --dtype accepts, and the planner's short names (fp32/fp16/bf16) as aliases of the same dtypes.
DTYPE_ALIASES = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
SHORT_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# What auto may leave for a fp32 copy of the weights: the rest is the runtime and the activations.
FP32_FIT_SHARE = 0.8


class DeviceWarning(UserWarning):
    """A device/dtype choice the user should know about (printed as one `warning:` line by the CLI)."""


def _normalize_dtype_name(value: object) -> object:
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.")
        if key not in DTYPE_ALIASES:
            raise ValueError(f"unknown dtype (got {value!r}; known: auto, bfloat16, float16, float32)")
        return DTYPE_ALIASES[key]
    return value


def _check_device_spec(value: str) -> str:
    spec = value.strip().lower()
    if spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit()):
        return spec
    raise ValueError(f"unknown device (got {value!r}; known: auto, cpu, cuda, cuda:N)")


#: A pydantic field type for `--dtype`: one of auto/bfloat16/float16/float32 (aliases bf16, fp16, fp32 accepted).
DtypeSpec = Annotated[Literal["auto", "bfloat16", "float16", "float32"], BeforeValidator(_normalize_dtype_name)]
#: A pydantic field type for `--device`: auto, cpu, cuda or cuda:N.
DeviceSpec = Annotated[str, AfterValidator(_check_device_spec)]


def torch_dtype(name: str) -> "torch.dtype":
    """bfloat16/float16/float32 (or an alias) -> the torch dtype."""
    import torch

    return getattr(torch, str(_normalize_dtype_name(name)))


def resolve_device(spec: str = "auto") -> "torch.device":
    """The torch device for `--device SPEC` (auto, cpu, cuda, cuda:N); one MucraspError if CUDA is asked for
    and absent, or the index does not exist."""
    import torch

    try:
        spec = _check_device_spec(spec)
    except ValueError as exc:
        raise MucraspError(str(exc)) from None
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MucraspError(f"--device {spec}: no CUDA device is available on this machine (use --device cpu or auto)")
    index = int(spec[5:]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise MucraspError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(f"cuda:{index}")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_int8_dot_products() -> bool:
    """Whether this CPU multiplies int8 in hardware that accumulates in int32 (VNNI or AMX).

    An AVX2-only x86 CPU has no such instruction: oneDNN's int8 GEMM there passes the products through
    int16 pairs, which can saturate, and vLLM's W8A8 results drift further from the unquantized model
    (measured 0.176 nats of prompt log-prob against 0.036 with VNNI, tests/test_quantized_exports.py).
    Non-x86 CPUs (no `avx2` flag) are not judged here.
    """
    flags = cpu_flags()
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) or "avx2" not in flags


def gpu_has_bf16(device: "torch.device") -> bool:
    """Whether the GPU computes in bf16 natively (compute capability 8.0 and up; a T4 does not)."""
    import torch

    return torch.cuda.get_device_capability(device)[0] >= 8


def has_fast_path(dtype: "torch.dtype", device: "torch.device") -> bool:
    """Whether `device` computes in `dtype` natively (not by emulating it in fp32)."""
    import torch

    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or (dtype == torch.bfloat16 and gpu_has_bf16(device))
    flags = cpu_flags()
    if dtype == torch.bfloat16:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    if dtype == torch.float16:
        return bool(flags & {"avx512_fp16", "amx_fp16"})
    return False


def available_memory_bytes(device: "torch.device") -> int | None:
    """Free memory on `device` (CUDA: the allocator's free bytes; CPU: MemAvailable), None when unknown."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resolve_dtype(
    spec: str,
    checkpoint_dtype: "torch.dtype | None",
    device: "torch.device",
    parameter_count: int | None = None,
    available_bytes: int | None = None,
) -> "torch.dtype":
    """The dtype to run in for `--dtype SPEC` (see the module docstring for `auto`).

    `checkpoint_dtype`: the weights' dtype on disk (`checkpoint_dtype(path)`), None if unknown (then fp32).
    `parameter_count` and `available_bytes` (default: measured) decide whether a fp32 fallback fits.
    """
    import torch

    try:
        name = _normalize_dtype_name(spec)
    except ValueError as exc:
        raise MucraspError(str(exc)) from None
    if name != "auto":
        return torch_dtype(name)
    source = checkpoint_dtype if checkpoint_dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32
    if has_fast_path(source, device):
        return source
    if device.type == "cuda":
        return torch.float16  # a bf16 checkpoint on a GPU without bf16 (T4): same size, native
    if parameter_count is not None:
        free = available_bytes if available_bytes is not None else available_memory_bytes(device)
        if free is not None and 4 * parameter_count > FP32_FIT_SHARE * free:
            warnings.warn(
                f"this CPU has no {SHORT_NAMES[str(source).removeprefix('torch.')]} units, but the weights in fp32 "
                f"({4 * parameter_count / 2**30:.1f} GiB) would not fit in the {free / 2**30:.1f} GiB available: "
                f"running in {str(source).removeprefix('torch.')} (slower; pass --dtype float32 to insist)",
                DeviceWarning,
                stacklevel=2,
            )
            return source
    return torch.float32


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def _floating_numels(path: Path) -> dict[str, int]:
    """Elements per floating safetensors dtype over a checkpoint's shards (headers only)."""
    from mucrasp.checkpoint import read_safetensors_header, weight_files

    totals: dict[str, int] = {}
    try:
        shards = weight_files(path)
    except MucraspError:
        shards = []
    for shard in shards:
        for dtype, shape in read_safetensors_header(shard).values():
            if dtype in _SAFETENSORS_DTYPES:
                totals[dtype] = totals.get(dtype, 0) + math.prod(shape)
    return totals


def checkpoint_dtype(path: str | Path) -> "torch.dtype | None":
    """The floating dtype most of a checkpoint's weights are stored in (from the safetensors headers, no
    tensor data read), else the config's `dtype`/`torch_dtype`; None when neither says."""
    import torch

    from mucrasp.checkpoint import read_json_file

    path = Path(path)
    totals = _floating_numels(path)
    if totals:
        return getattr(torch, _SAFETENSORS_DTYPES[max(totals, key=totals.get)])
    config = read_json_file(path / "config.json") if (path / "config.json").is_file() else {}
    named = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    if isinstance(named, str) and named.removeprefix("torch.") in ("bfloat16", "float16", "float32"):
        return getattr(torch, named.removeprefix("torch."))
    return None


def resolve_for_checkpoint(
    path: str | Path, device_spec: str = "auto", dtype_spec: str = "auto"
) -> "tuple[torch.device, torch.dtype]":
    """`--device` and `--dtype` for the checkpoint in `path`: the device, then the dtype (auto: see above)."""
    device = resolve_device(device_spec)
    count = sum(_floating_numels(Path(path)).values()) or None
    return device, resolve_dtype(dtype_spec, checkpoint_dtype(path), device, parameter_count=count)


def dtype_name(dtype: "torch.dtype") -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


__all__ = [
    "DeviceSpec",
    "DeviceWarning",
    "DtypeSpec",
    "available_memory_bytes",
    "checkpoint_dtype",
    "cpu_flags",
    "dtype_name",
    "has_fast_path",
    "resolve_device",
    "resolve_for_checkpoint",
    "resolve_dtype",
    "torch_dtype",
]
