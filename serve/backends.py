"""The serving backends behind one call: `run_backend(config, load, spot) -> BackendRun`.

Each runs the same two phases: the load phase (fixed-length requests, for throughput and latency)
and the spot-check phase (greedy answers that stop at end of sequence, for reasoning). Memory is
sampled over both, model loading included: a server that cannot hold its weights fails to serve.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mucrasp.errors import MucraspError
from mucrasp.serve.config import SmokeConfig
from mucrasp.serve.memory import PeakGpu, PeakRss, gpu_available, wait_gone
from mucrasp.serve.requests import ChatRequest, PhaseResult, RequestResult

log = logging.getLogger(__name__)


@dataclass
class BackendRun:
    load: PhaseResult
    spot: list[str]  # spot-check responses, in the order asked
    peak_memory_bytes: int
    memory_kind: str  # "rss" (serving process tree) or "gpu"
    details: dict[str, Any] = field(default_factory=dict)
    cot_kl: float | None = None


def model_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MucraspError(f"{folder} is not a model directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MucraspError(f"{path} is not valid JSON ({exc.msg})") from None


def resolve_processor_dir(config: SmokeConfig) -> Path:
    """Where the tokenizer lives: --tokenizer, the export itself, or (ONNX) the checkpoint it came from."""
    candidates = [config.processor_dir] if config.processor_dir else []
    candidates.append(Path(config.export_dir))
    manifest = Path(config.export_dir) / "manifest.json"
    if manifest.is_file():
        source = json.loads(manifest.read_text()).get("source")
        if source:
            candidates.append(Path(source))
    for folder in candidates:
        if any((Path(folder) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            return Path(folder)
    raise MucraspError(
        f"no tokenizer found for {config.export_dir} (looked in {', '.join(map(str, candidates))}); "
        "pass --tokenizer DIR"
    )


def _timed(fn: Callable[[ChatRequest], RequestResult], requests: Sequence[ChatRequest]) -> PhaseResult:
    start = time.perf_counter()
    results = [fn(r) for r in requests]
    return PhaseResult(results, time.perf_counter() - start)


def _rgb(path: Path | None, size: int | None = None):
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    return image.resize((size, size)) if size and image.size != (size, size) else image


def _prompt_inputs(processor, vision: bool, request: ChatRequest, image_size: int | None = None) -> dict:
    from mucrasp.evaluation.generation import text_prompt_inputs, vision_prompt_inputs

    if vision:
        return vision_prompt_inputs(processor, [_rgb(request.image, image_size)], [request.prompt])
    if request.image is not None:
        raise MucraspError("the spot-check set has images but the model is text-only")
    return text_prompt_inputs(getattr(processor, "tokenizer", processor), [request.prompt])


def _stop_ids(tokenizer, architecture: str) -> list[int]:
    from mucrasp.adapters import get_adapter

    return get_adapter(architecture).stop_token_ids(tokenizer)


# ---- transformers: the reference -------------------------------------------------------------------
def run_transformers(
    config: SmokeConfig, load: Sequence[ChatRequest], spot: Sequence[ChatRequest], spot_records=None
) -> BackendRun:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from mucrasp.calibration.batches import load_processor
    from mucrasp.checkpoint import load_pruned

    cuda = gpu_available()
    device = "cuda" if cuda else "cpu"
    vision = "vision_config" in model_config(config.export_dir)
    with PeakRss() as peak:
        # fp32 on CPU: bf16 matmuls are emulated on most CPUs and would measure the emulation.
        model = _load(lambda: load_pruned(config.export_dir, dtype=None if cuda else torch.float32)).to(device)
        processor = load_processor(resolve_processor_dir(config), vision)
        tokenizer = getattr(processor, "tokenizer", processor)
        stop = _stop_ids(tokenizer, model.config.architectures[0])

        class Clock(LogitsProcessor):
            """Called once per new token, right after the forward pass that produced its logits."""

            def __init__(self):
                self.times: list[float] = []

            def __call__(self, input_ids, scores):
                self.times.append(time.perf_counter())
                return scores

        @torch.no_grad()
        def one(request: ChatRequest) -> RequestResult:
            inputs = {k: v.to(device) for k, v in _prompt_inputs(processor, vision, request).items()}
            clock = Clock()
            start = time.perf_counter()
            out = model.generate(
                **inputs,
                max_new_tokens=request.max_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id or stop[0],
                min_new_tokens=request.max_tokens if request.ignore_eos else None,
                logits_processor=LogitsProcessorList([clock]),
            )
            end = time.perf_counter()
            new = out[0, inputs["input_ids"].shape[1] :]
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            return RequestResult(text, int(new.shape[0]), (clock.times or [end])[0] - start, end - start)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _timed(one, load[:1])  # warm-up: first-call allocations and lazy inits are not serving speed
        load_phase = _timed(one, load)
        spot_texts = [r.text for r in _timed(one, spot).results]
        cot_kl = _cot_kl(model, config, spot_records, vision, device) if config.dense and spot_records else None
    memory = torch.cuda.max_memory_allocated() if cuda else peak.bytes
    return BackendRun(
        load_phase,
        spot_texts,
        memory,
        "gpu" if cuda else "rss",
        {"device": device, "dtype": str(next(model.parameters()).dtype)},
        cot_kl,
    )


def _load(fn):
    try:
        return fn()
    except MucraspError:
        raise
    except Exception as exc:  # a broken folder fails in many ways inside transformers
        raise MucraspError(
            f"the model failed to load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _cot_kl(pruned, config: SmokeConfig, records, vision: bool, device: str, dtype=None) -> float:
    """Mean KL(dense || served) per chain-of-thought token, teacher-forced on the spot-check responses.
    `pruned` is a torch model, or an ONNX export's `OnnxCausalLM` (then the dense model runs in `dtype`)."""
    from mucrasp.calibration import PivotConfig, build_batches, load_processor
    from mucrasp.checkpoint import load_pruned
    from mucrasp.evaluation.metrics import DivergenceTotals, accumulate_divergence

    dense = load_pruned(config.dense, dtype=dtype or next(pruned.parameters()).dtype).to(device)
    processor = load_processor(config.dense, vision)
    totals = DivergenceTotals()
    for batch in build_batches(list(records), processor, dense.config, PivotConfig(), vision):
        batch.inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        accumulate_divergence(dense, pruned, batch, totals)
    return totals.as_metrics()["cot_kl"]


# ---- ONNX Runtime -------------------------------------------------------------------------------------
def onnx_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and gpu_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def run_onnx(
    config: SmokeConfig, load: Sequence[ChatRequest], spot: Sequence[ChatRequest], spot_records=None
) -> BackendRun:
    from mucrasp.calibration.batches import load_processor
    from mucrasp.export.onnx_manifest import read_onnx_manifest
    from mucrasp.export.onnx_runtime import OnnxGenerator

    manifest = read_onnx_manifest(config.export_dir)
    vision = "vision" in manifest
    image_size = None
    if vision:
        grid, patch = manifest["vision"]["grid_thw"], manifest["vision"]["patch_size"]
        image_size = grid[1] * patch if grid else None
    providers = onnx_providers()
    with PeakRss() as peak:
        generator = _load(lambda: OnnxGenerator(config.export_dir, providers=providers))
        processor = load_processor(resolve_processor_dir(config), vision)
        tokenizer = getattr(processor, "tokenizer", processor)
        stop = _stop_ids(tokenizer, manifest["architecture"])
        step = generator.step
        times: list[float] = []

        def timed_step(*args, **kwargs):
            out = step(*args, **kwargs)
            times.append(time.perf_counter())
            return out

        generator.step = timed_step

        def one(request: ChatRequest) -> RequestResult:
            inputs = _prompt_inputs(processor, vision, request, image_size)
            times.clear()
            start = time.perf_counter()
            result = generator.generate(
                inputs["input_ids"].numpy(),
                pixel_values=_np(inputs.get("pixel_values")),
                image_grid_thw=_np(inputs.get("image_grid_thw")),
                max_new_tokens=request.max_tokens,
                eos_token_id=stop,
                stop_at_eos=not request.ignore_eos,
            )
            end = time.perf_counter()
            text = tokenizer.decode(result.tokens, skip_special_tokens=True).strip()
            return RequestResult(text, len(result.tokens), (times or [end])[0] - start, end - start)

        _timed(one, load[:1])
        load_phase = _timed(one, load)
        spot_texts = [r.text for r in _timed(one, spot).results]
    peak_bytes = peak.bytes  # measured before the KL pass, which loads the dense model too: not serving memory
    generator.step = step
    cot_kl = None
    if config.dense and spot_records:
        import torch

        from mucrasp.export.onnx_causal_lm import OnnxCausalLM
        from mucrasp.model_loading import read_model_config

        served = OnnxCausalLM(generator, read_model_config(config.dense)[0])
        cot_kl = _cot_kl(served, config, spot_records, vision, "cpu", dtype=torch.float32)
    details = {"providers": providers, "dtype": manifest["dtype"], "weights": manifest.get("weights", {}).get("format")}
    if image_size:  # the vision graph was traced at one grid: every image is resized to it
        details["image_size"] = image_size
    return BackendRun(load_phase, spot_texts, peak_bytes, "rss", details, cot_kl)


def _np(tensor):
    return None if tensor is None else tensor.numpy()


# ---- vLLM: the OpenAI server, or vllm.LLM offline ---------------------------------------------------------
def vllm_dtype(config: SmokeConfig, gpu: bool) -> str:
    """`--dtype auto`: the model's own on GPU; on CPU float32 (no bf16 kernels assumed), except for an int8
    export on a host with AMX, where vLLM's int8 GEMM (`int8_scaled_mm_with_quant`, chosen for every
    layer whose shape it tiles) takes bf16 or fp16 activations only and fails on fp32 ones."""
    if config.dtype != "auto":
        return config.dtype
    if gpu:
        return "auto"
    return "bfloat16" if _int8_weights(config.export_dir) and amx_host() else "float32"


# vLLM 0.32's AMX int8 GEMM packs a weight only when its output rows are a multiple of this, but picks that
# kernel whenever they are a multiple of 16 (`check_cpu_sgl_kernel`): a merged gate/up of 2 × 1080 rows passes
# the check and fails to pack ("Expected N == BLOCK_N") while the engine loads.
AMX_INT8_BLOCK_N = 32


def check_cpu_int8_widths(export_dir: Path) -> None:
    """Before an engine starts on a CPU host with AMX: an int8 export whose merged gate/up projection vLLM
    would route to its AMX kernel but cannot pack is one clear error naming the layer and the fix."""
    if not (_int8_weights(export_dir) and amx_host()):
        return
    config = model_config(export_dir)
    text = {**config, **config.get("text_config", {})}  # per-layer widths may sit at either level
    hidden = text["hidden_size"]
    widths = text.get("layer_intermediate_sizes") or [text["intermediate_size"]] * text["num_hidden_layers"]
    for layer, width in enumerate(widths):
        rows = 2 * width  # gate and up, one merged matmul
        if hidden % 32 == 0 and rows % 16 == 0 and rows % AMX_INT8_BLOCK_N:
            raise MucraspError(
                f"layer {layer}'s MLP width {width} gives a merged gate/up of {rows} rows, which vLLM's int8 "
                f"kernel on this AMX CPU selects but cannot pack (rows must be a multiple of {AMX_INT8_BLOCK_N}); "
                "prune with --align 16 (MLP widths in multiples of 16), or serve it on a GPU"
            )


# Measured on the tiny W8A8 test model (tests/test_quantized_exports.py): the worst prompt log-prob difference
# from the unquantized model on vLLM's CPU engine, with and without VNNI/AMX.
CPU_INT8_DRIFT_NATS = {"vnni": 0.036, "avx2": 0.176}


def cpu_int8_accuracy_note(export_dir: Path) -> str | None:
    """For an int8 (W8A8) export served on a CPU without VNNI or AMX: a warning that its numbers are this
    CPU's, not the deployment's. Logged, and kept in the report's backend details; None otherwise."""
    from mucrasp.devices import cpu_int8_dot_products

    if not _int8_weights(export_dir) or cpu_int8_dot_products():
        return None
    note = (
        "this CPU has no VNNI or AMX, so vLLM's int8 GEMM runs on AVX2 and is less exact than on the hardware "
        f"W8A8 is meant for (prompt log-probs off by up to {CPU_INT8_DRIFT_NATS['avx2']} nats on the test model, "
        f"against {CPU_INT8_DRIFT_NATS['vnni']} with VNNI): the spot-check and KL here understate the export"
    )
    log.warning(note)
    return note


def check_cpu_int8_export(export_dir: Path) -> str | None:
    """Before an engine starts on a CPU host: widths vLLM's int8 kernel cannot pack are an error; an int8
    export on a CPU without VNNI or AMX gets the accuracy note (returned for the report)."""
    check_cpu_int8_widths(export_dir)
    return cpu_int8_accuracy_note(export_dir)


def amx_host() -> bool:
    import torch

    return bool(torch.cpu._is_amx_tile_supported())


def _int8_weights(export_dir: Path) -> bool:
    """Whether a compressed-tensors export stores int8 weights (w8a8)."""
    quant = model_config(export_dir).get("quantization_config") or {}
    groups = quant.get("config_groups", {}).values()
    return any(
        (g.get("weights") or {}).get("type") == "int" and (g.get("weights") or {}).get("num_bits") == 8 for g in groups
    )


def _gpu_memory_utilization(config: SmokeConfig) -> float | None:
    if config.profile is None:
        return None
    from mucrasp.planning import load_profile

    return load_profile(config.profile).gpu_memory_utilization


def tensor_parallel_size(config: SmokeConfig) -> int:
    """vLLM's --tensor-parallel-size: as given, else the profile's GPU count (the planner split the model
    over that many GPUs), else 1."""
    if config.tensor_parallel_size is not None:
        return config.tensor_parallel_size
    if config.profile is None:
        return 1
    from mucrasp.planning import load_profile

    return load_profile(config.profile).gpu_count


def _max_model_len(config: SmokeConfig) -> int:
    """The requested context, capped at what the model was built for (vLLM refuses longer)."""
    model = model_config(config.export_dir)
    limit = model.get("text_config", model).get("max_position_embeddings") or model.get("max_position_embeddings")
    return min(config.max_model_len, int(limit)) if limit else config.max_model_len


def run_vllm_server(
    config: SmokeConfig, load: Sequence[ChatRequest], spot: Sequence[ChatRequest], spot_records=None
) -> BackendRun:
    from mucrasp.serve.http_load import ServerDied, run_requests
    from mucrasp.serve.vllm_server import VllmServer, failure_reason, reported_allocation

    gpu = gpu_available()
    vision = "vision_config" in model_config(config.export_dir)
    cpu_int8_note = None if gpu else check_cpu_int8_export(config.export_dir)
    # The log goes where the report goes, and stays there only if the server fails.
    log_path = (Path(config.log_dir) if config.log_dir else config.report_path.parent) / "vllm-server.log"
    server = VllmServer(
        config.export_dir,
        log_path,
        config.port,
        dtype=vllm_dtype(config, gpu),
        max_model_len=_max_model_len(config),
        vision=vision,
        gpu=gpu,
        gpu_memory_utilization=_gpu_memory_utilization(config),
        kv_cache_gb=config.kv_cache_gb,
        max_num_seqs=max(config.concurrency, 1),
        startup_timeout_s=config.startup_timeout_s,
        tensor_parallel_size=tensor_parallel_size(config),
    )
    failed = True
    try:
        server.start()
        sampler = PeakGpu(server.process.pid) if gpu else PeakRss(server.process.pid)
        with sampler:
            server.wait_healthy()
            started = time.perf_counter()
            try:
                run_requests(server.base_url, server.model_name, load[:1], 1, config.request_timeout_s, server.alive)
                load_phase = run_requests(
                    server.base_url, server.model_name, load, config.concurrency, config.request_timeout_s, server.alive
                )
                spot_phase = run_requests(
                    server.base_url, server.model_name, spot, config.concurrency, config.request_timeout_s, server.alive
                )
            except ServerDied:
                raise MucraspError(
                    f"the vLLM server died mid-run (exit code {server.process.poll()}): "
                    f"{failure_reason(log_path)} (full log: {log_path})"
                ) from None
        failed = False
        details = {
            "dtype": vllm_dtype(config, gpu),
            "port": server.port,
            "server_pids": sorted(server.pids),
            "ready_after_s": round(server.ready_after_s or 0, 1),
            "requests_s": round(time.perf_counter() - started, 2),
            "cpu_int8_note": cpu_int8_note,
        }
    finally:
        server.stop()
        if not failed:
            details["vllm_reported"] = reported_allocation(log_path)  # for the planner's memory figures
            log_path.unlink(missing_ok=True)
    return BackendRun(load_phase, [r.text for r in spot_phase.results], sampler.bytes, "gpu" if gpu else "rss", details)


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copy2(src, dst)


def run_vllm_offline(
    config: SmokeConfig, load: Sequence[ChatRequest], spot: Sequence[ChatRequest], spot_records=None
) -> BackendRun:
    """vllm.LLM without a server, in a worker process: the engine's memory is measurable and goes away."""
    gpu = gpu_available()
    vision = "vision_config" in model_config(config.export_dir)
    cpu_int8_note = None if gpu else check_cpu_int8_export(config.export_dir)
    with tempfile.TemporaryDirectory(prefix="mucrasp-vllm-offline-") as tmp:
        request = Path(tmp) / "request.json"
        result = Path(tmp) / "result.json"
        log = Path(tmp) / "worker.log"
        request.write_text(
            json.dumps(
                {
                    "model": str(config.export_dir),
                    "dtype": vllm_dtype(config, gpu),
                    "max_model_len": _max_model_len(config),
                    "vision": vision,
                    "gpu": gpu,
                    "gpu_memory_utilization": _gpu_memory_utilization(config),
                    "tensor_parallel_size": tensor_parallel_size(config),
                    "load": [_request_dict(r) for r in load],
                    "spot": [_request_dict(r) for r in spot],
                    "result": str(result),
                }
            )
        )
        env = {
            **os.environ,
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_KVCACHE_SPACE": f"{config.kv_cache_gb:g}",
            "TOKENIZERS_PARALLELISM": "false",
        }
        with log.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "mucrasp.serve.offline_worker", str(request)],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        from mucrasp.serve.vllm_server import stop_session_on_signals

        sampler = PeakGpu(process.pid) if gpu else PeakRss(process.pid)
        with stop_session_on_signals(process):  # a SIGTERM to us must not orphan the worker
            try:
                with sampler:
                    code = process.wait(timeout=config.startup_timeout_s + config.request_timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, 9)
                    process.wait()
                wait_gone({process.pid}, 5.0)
        if code != 0 or not result.is_file():
            from mucrasp.serve.vllm_server import failure_reason

            kept = (Path(config.log_dir) if config.log_dir else config.report_path.parent) / "vllm-offline.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            _copy(log, kept)
            raise MucraspError(f"vLLM (offline) failed with exit code {code}: {failure_reason(log)} (full log: {kept})")
        data = json.loads(result.read_text())
        from mucrasp.serve.vllm_server import reported_allocation

        reported = reported_allocation(log)  # for the planner's memory figures, as the server run
    load_phase = PhaseResult([RequestResult(**r) for r in data["load"]], data["load_wall_s"])
    details = {
        "offline": True,
        "dtype": vllm_dtype(config, gpu),
        "vllm_reported": reported,
        "cpu_int8_note": cpu_int8_note,
    }
    return BackendRun(load_phase, data["spot"], sampler.bytes, "gpu" if gpu else "rss", details)


def _request_dict(request: ChatRequest) -> dict:
    return {
        "prompt": request.prompt,
        "image": str(request.image) if request.image else None,
        "max_tokens": request.max_tokens,
        "ignore_eos": request.ignore_eos,
    }


def run_backend(
    config: SmokeConfig, load: Sequence[ChatRequest], spot: Sequence[ChatRequest], spot_records=None
) -> BackendRun:
    if config.backend == "vllm":
        runner = run_vllm_offline if config.offline else run_vllm_server
    else:
        runner = {"onnx": run_onnx, "transformers": run_transformers}[config.backend]
    return runner(config, load, spot, spot_records)
