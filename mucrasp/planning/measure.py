"""Measure this machine into a Profile: memory, copy bandwidth and matmul throughput, in seconds."""

from __future__ import annotations

import os
import time

import torch

from mucrasp.planning.profiles import Profile
from mucrasp.planning.weight_formats import FORMATS, QUANTIZED


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(device: torch.device, mbytes: int = 64, repeats: int = 5) -> float:
    """Bytes per second of a device-to-device copy (each copy reads and writes the buffer)."""
    src = torch.empty(mbytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _best_time(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * 4 / seconds


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = _best_time(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def total_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def compute_capability(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # an x86 CPU host
    major, minor = torch.cuda.get_device_capability(device)
    return float(f"{major}.{minor}")


def weight_formats(capability: float | None) -> list[str]:
    """Every quantized format of the catalogue this device runs (its runtime permitting)."""
    return [name for name in QUANTIZED if FORMATS[name].runs_on(capability)]


def measure_profile(name: str = "local") -> Profile:
    device = _device()
    cuda = device.type == "cuda"
    # GPUs are rated at 16-bit; CPUs run fp32 matmuls fastest, so each is timed in its serving dtype.
    dtype, n = (torch.bfloat16, 4096) if cuda else (torch.float32, 768)
    dtypes = ["fp32", "fp16"] + (["bf16"] if not cuda or torch.cuda.is_bf16_supported() else [])
    memory = total_memory_bytes(device)
    label = torch.cuda.get_device_name(device) if cuda else f"CPU, {os.cpu_count()} cores"
    return Profile(
        name=name,
        description=f"measured on {label} with torch {torch.__version__}",
        memory_gb=round(memory / 1e9, 3),
        memory_bandwidth_gbps=round(copy_bandwidth(device, mbytes=256 if cuda else 64) / 1e9, 3),
        dense_tflops=round(matmul_flops(device, dtype, n) / 1e12, 4),
        dtypes=dtypes,
        gpu_count=1,
        # A CPU server shares memory with the OS; a GPU holds the CUDA context.
        runtime_reserve_gb=round(min(2.0, memory / 1e9 * 0.1), 3) if not cuda else 1.0,
        gpu_memory_utilization=0.9,
        shared_memory=not cuda,
        compute_capability=compute_capability(device),
        weight_formats=weight_formats(compute_capability(device)),
    )
