"""Peak memory of whatever serves: RSS of a process tree on CPU, device memory on GPU.

RSS is sampled in a thread because nothing else sees a tree's peak: `ru_maxrss` covers one process
(and its waited-for children only after they exit), and vLLM's engine lives in a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import psutil


def tree_rss_bytes(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakRss:
    """`with PeakRss(pid) as peak: ...; peak.bytes` — the largest tree RSS seen while inside."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05):
        self.pid = pid or os.getpid()
        self.interval_s = interval_s
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bytes = max(self.bytes, tree_rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self.bytes = tree_rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.bytes, tree_rss_bytes(self.pid))


def gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def gpu_used_bytes(pids: set[int] | None = None) -> int | None:
    """Device memory held by `pids` (or by every process) per nvidia-smi; None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    total = 0
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip().isdigit() and (pids is None or int(pid) in pids):
            total += int(float(used.strip() or 0)) * 2**20
    return total


class PeakGpu:
    """Peak nvidia-smi memory of a process tree, sampled like PeakRss (coarser: nvidia-smi is slow)."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid = pid
        self.interval_s = interval_s
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self) -> set[int]:
        try:
            root = psutil.Process(self.pid)
            return {self.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bytes = max(self.bytes, gpu_used_bytes(self._pids()) or 0)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakGpu":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """The pids still alive after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    alive = {p for p in pids if psutil.pid_exists(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {p for p in alive if _running(p)}
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
