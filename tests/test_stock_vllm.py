"""The stock `vllm` command and `LLM(DIR)` serve per-layer exports, with vLLM's default settings.

On a CPU-torch host the registry's torchvision cannot import and a bare `vllm` would die before
any plugin runs; the `mucrasp-deploy.pth` startup hook (`mucrasp_cpu_torch_hook`) fixes that in
every interpreter of the environment. These tests run what a user runs, in fresh processes that
never import `mucrasp` themselves and with `VLLM_ENABLE_V1_MULTIPROCESSING` unset (vLLM's default:
a separate engine-core process), and compare the greedy tokens with transformers:

- `vllm serve DIR` (the venv's own console script, on loopback) answers a completion;
- `LLM(DIR)` generates;
- `from transformers import Qwen2_5_VLForConditionalGeneration` works.

Two engine starts in all (about a minute each on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import export_helpers as h
import pytest
import torch

from mucrasp.export.vllm_checkpoint import export_vllm

PROMPT = [1, 5, 9, 33, 2, 7, 300, 41]
MAX_TOKENS = 8
HOST = "127.0.0.1"
VLLM = Path(sys.executable).with_name("vllm")  # the console script of this environment


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """The environment a user's fresh shell would give: vLLM's defaults, the startup hook on.

    vLLM's cache folder is a new one, so that vLLM inspects the plugin's model class in its
    `python -m vllm.model_executor.models.registry` subprocess, as on a fresh machine, instead of
    reading an earlier run's answer from `~/.cache/vllm/modelinfos`.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "MUCRASP_NO_CPU_TORCH_HOOK", "PYTHONPATH")
    }
    env.update(VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false", VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"))
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(per-layer Qwen2.5-VL export, the greedy tokens transformers gives for PROMPT)."""
    root = tmp_path_factory.mktemp("stock-vllm")
    model = h.make_pruned_checkpoint("Qwen2_5_VLForConditionalGeneration", root / "pruned", h.per_layer_plan())
    export = export_vllm(root / "pruned", root / "served")
    assert export.architecture == "MucraspQwen2_5_VLForConditionalGeneration"
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_TOKENS,
            min_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=None,
        )
    return export.out, out[0, len(PROMPT) :].tolist()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`vllm serve` exited with {process.returncode}:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"`vllm serve` not ready after {timeout_s:.0f} s:\n{log.read_text()[-6000:]}")


@pytest.mark.timeout(900)
def test_vllm_serve_command_answers_a_completion(exported, tmp_path):
    model_dir, reference = exported
    assert VLLM.is_file(), f"no vllm console script next to {sys.executable}"
    port = _free_port()
    log = tmp_path / "vllm-serve.log"
    args = [
        str(VLLM),
        "serve",
        str(model_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "256",
        "--seed",
        "0",
        "--limit-mm-per-prompt",
        json.dumps({"image": 1}),
    ]
    with log.open("w") as handle:
        process = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=_fresh_env(tmp_path),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(process, f"http://{HOST}:{port}/health", log)
        answer = _post(
            f"http://{HOST}:{port}/v1/completions",
            {
                "model": "tiny",
                "prompt": PROMPT,
                "max_tokens": MAX_TOKENS,
                "temperature": 0.0,
                "ignore_eos": True,
                "return_token_ids": True,
            },
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    choice = answer["choices"][0]
    assert choice["token_ids"] == reference, log.read_text()[-3000:]
    assert answer["usage"]["completion_tokens"] == MAX_TOKENS
    # The plugin's class was inspected in vLLM's subprocess (a fresh cache: nothing to reuse) and cached.
    assert list((tmp_path / "vllm-cache" / "modelinfos").glob("*MucraspQwen2_5_VL*.json"))


LLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    assert "mucrasp" not in sys.modules, "importing vllm imported mucrasp"
    llm = LLM(sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              limit_mm_per_prompt={"image": 1})
    client = type(llm.llm_engine.engine_core).__name__
    params = SamplingParams(temperature=0.0, max_tokens=int(sys.argv[3]), ignore_eos=True)
    output = llm.generate([TokensPrompt(prompt_token_ids=json.loads(sys.argv[2]))], params, use_tqdm=False)[0]
    print("RESULT " + json.dumps({"tokens": list(output.outputs[0].token_ids), "client": client}), flush=True)
""")


@pytest.mark.timeout(900)
def test_llm_with_default_multiprocessing_generates(exported, tmp_path):
    model_dir, reference = exported
    proc = subprocess.run(
        [sys.executable, "-c", LLM_SCRIPT, str(model_dir), json.dumps(PROMPT), str(MAX_TOKENS)],
        cwd=tmp_path,
        env=_fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=840,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"LLM() failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["client"] == "SyncMPClient"  # the engine core ran in its own process (vLLM's default)
    assert result["tokens"] == reference


def test_plain_transformers_import_of_the_vl_classes(tmp_path):
    script = (
        "import sys\n"
        "assert any(type(f).__name__ == 'CpuTorchHook' for f in sys.meta_path), 'the startup hook is not installed'\n"
        "from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration\n"
        "import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl\n"
        "assert 'mucrasp' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
