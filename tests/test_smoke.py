"""`smoke`: serve an export for real, measure it, pass or fail, and leave no process behind.

One tiny per-layer Qwen2.5-VL (MuCRASP architecture, through the vLLM plugin) is exported once for
vLLM and once for ONNX, with a spot-check set whose reference answers are the pruned model's own
greedy answers in transformers: an `agreement` score of 1.0 then means the backend reasons exactly as
the reference does. vLLM runs as a real `vllm serve` subprocess (CPU build, about a minute to start).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import export_helpers as h
import psutil
import pytest
from typer.testing import CliRunner

from mucrasp.calibration.records import CalibrationRecord
from mucrasp.cli import app
from mucrasp.errors import MucraspError
from mucrasp.serve import SmokeConfig, Thresholds, load_spot_check, run_smoke, write_spot_check
from mucrasp.serve.spot_check import dense_answers

PROMPTS = ["how many red squares", "describe the image", "what color is the shape"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"pruned", "vllm", "onnx"}: a pruned checkpoint and its two exports, each with the spot-check set."""
    from mucrasp.export.onnx_export import export_onnx
    from mucrasp.export.vllm_checkpoint import export_vllm

    root = tmp_path_factory.mktemp("smoke")
    h.make_pruned_checkpoint("Qwen2_5_VLForConditionalGeneration", root / "pruned", h.per_layer_plan())
    images = []
    for i in range(len(PROMPTS)):
        h.test_image(i).save(root / f"image{i}.png")
        images.append(root / f"image{i}.png")
    records = [
        CalibrationRecord(image, prompt, "-", f"test:{i}") for i, (image, prompt) in enumerate(zip(images, PROMPTS))
    ]
    records = dense_answers(root / "pruned", records, max_new_tokens=MAX_TOKENS)
    served = export_vllm(root / "pruned", root / "served").out
    onnx = export_onnx(root / "pruned", root / "onnx", image_size=h.IMAGE_SIZE).out
    for folder in (served, onnx):
        write_spot_check(folder, records, kind="agreement", source="the pruned model's greedy answers (transformers)")
    return {"pruned": root / "pruned", "vllm": served, "onnx": onnx}


def _config(folder: Path, backend: str, tmp_path: Path, **kwargs) -> SmokeConfig:
    return SmokeConfig(
        folder,
        backend=backend,
        requests=3,
        concurrency=2,
        max_tokens=MAX_TOKENS,
        spot_check_max_tokens=MAX_TOKENS,
        max_model_len=256,
        report=tmp_path / "report.json",
        **kwargs,
    )


def _assert_measured(report) -> None:
    data = json.loads(report.path.read_text())
    assert data == report.data and data["passed"], data["failures"]
    t = data["throughput"]
    assert t["tokens_per_s"] > 0 and t["output_tokens"] == 3 * MAX_TOKENS and t["failed_requests"] == 0
    assert 0 < t["ttft_p50_s"] <= t["ttft_p95_s"] and 0 < t["latency_p50_s"] <= t["latency_p95_s"]
    assert data["memory"]["peak_gb"] > 0.05 and data["memory"]["kind"] == "rss"
    # The reference answers are the model's own (greedy, fp32): every backend must reproduce them.
    assert data["spot_check"]["kind"] == "agreement" and data["spot_check"]["score"] == 1.0
    assert data["spot_check"]["records"] == len(PROMPTS)


def _serving_processes(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(folder) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


# ---- the three backends, end to end ---------------------------------------------------------------
def test_vllm_server_smoke(exports, tmp_path):
    report = run_smoke(
        _config(exports["vllm"], "vllm", tmp_path, thresholds=Thresholds(min_tokens_per_s=0.1, min_spot_check=1.0))
    )
    _assert_measured(report)
    details = report.data["backend_details"]
    assert details["server_pids"] and details["ready_after_s"] > 0
    assert not [
        p for p in details["server_pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not _serving_processes(exports["vllm"])
    assert not (tmp_path / "vllm-server.log").exists()  # kept only when the server fails


def test_onnx_smoke(exports, tmp_path):
    report = run_smoke(_config(exports["onnx"], "onnx", tmp_path, dense=exports["pruned"]))
    _assert_measured(report)
    assert report.data["backend_details"]["providers"] == ["CPUExecutionProvider"]
    assert report.data["backend_details"]["weights"] == "fp32"
    # CoT KL of the graphs against the checkpoint they were traced from (teacher-forced): fp32 rounding only
    assert 0 <= report.data["cot_kl"] < 1e-6


def test_transformers_smoke_with_kl_and_cli_table(exports, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "smoke",
            str(exports["vllm"]),
            "--backend",
            "transformers",
            "--requests",
            "3",
            "--max-tokens",
            str(MAX_TOKENS),
            "--spot-check-max-tokens",
            str(MAX_TOKENS),
            "--dense",
            str(exports["pruned"]),
            "--report",
            str(tmp_path / "report.json"),
            "--min-spot-check",
            "0.9",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "output tokens/s" in result.output and "PASS" in result.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["throughput"]["tokens_per_s"] > 0 and data["spot_check"]["score"] == 1.0
    assert data["cot_kl"] == pytest.approx(0.0, abs=1e-9)  # the "dense" model here is the served one
    # Standalone: no plan to compare with, and no context limit on this backend.
    assert "planned_vs_measured" not in data and data["load"]["max_model_len"] is None


# ---- failure paths ------------------------------------------------------------------------------------
def test_threshold_not_met_exits_1_naming_the_metric(exports, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "smoke",
            str(exports["vllm"]),
            "--backend",
            "transformers",
            "--requests",
            "1",
            "--max-tokens",
            "4",
            "--spot-check-limit",
            "1",
            "--spot-check-max-tokens",
            "4",
            "--min-tokens-per-s",
            "1e9",
            "--report",
            str(tmp_path / "report.json"),
        ],
    )
    assert result.exit_code == 1
    assert "FAIL tokens_per_s" in result.output and "needs >= 1e+09" in result.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] is False and data["failures"][0].startswith("tokens_per_s")


def test_port_in_use_fails_before_any_engine_starts(exports, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(MucraspError, match=f"port {port} on 127.0.0.1 is in use"):
            run_smoke(_config(exports["vllm"], "vllm", tmp_path, port=port))
    assert not _serving_processes(exports["vllm"])


def test_model_that_cannot_load_keeps_the_log_and_leaves_nothing_running(exports, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exports["vllm"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = CliRunner().invoke(
        app,
        [
            "smoke",
            str(broken),
            "--backend",
            "vllm",
            "--max-model-len",
            "256",
            "--report",
            str(tmp_path / "out" / "report.json"),
        ],
    )
    assert result.exit_code != 0
    message = str(result.exception)
    assert "the vLLM server exited with code" in message and "before it was ready" in message
    assert (tmp_path / "out" / "vllm-server.log").is_file()
    assert not _serving_processes(broken)
    with pytest.raises(MucraspError, match="not a valid safetensors file"):
        run_smoke(_config(broken, "transformers", tmp_path))


def test_bad_input(exports, tmp_path):
    with pytest.raises(MucraspError, match="unknown backend"):
        run_smoke(_config(exports["vllm"], "tflite", tmp_path))
    with pytest.raises(MucraspError, match="is an ONNX export"):
        run_smoke(_config(exports["onnx"], "vllm", tmp_path))
    with pytest.raises(MucraspError, match="not an ONNX export"):
        run_smoke(_config(exports["vllm"], "onnx", tmp_path))
    with pytest.raises(MucraspError, match="does not exist"):
        run_smoke(_config(tmp_path / "missing", "transformers", tmp_path))
    with pytest.raises(MucraspError, match="image-size must be at least 1"):
        SmokeConfig(exports["vllm"], backend="transformers", image_size=0).validate()


def test_load_image_is_the_workload_size_when_asked(exports, tmp_path):
    """`--image-size` (the chain passes the workload's) replaces the spot-check image in the load phase, so the
    measured TTFT is at the size the planner predicted for; a text model gets no image at all."""
    from PIL import Image

    from mucrasp.serve.smoke import _load_image

    spot = load_spot_check(exports["vllm"])
    made = _load_image(spot, True, tmp_path, 300)
    assert made.parent == tmp_path  # in the run's scratch folder, which run_smoke removes
    with Image.open(made) as image:
        assert image.size == (300, 300)
    assert _load_image(spot, True, tmp_path) == spot.records[0].image
    assert _load_image(spot, False, tmp_path, 300) is None


def test_spot_check_round_trip_and_its_absence(exports, tmp_path):
    spot = load_spot_check(exports["vllm"])
    assert spot.kind == "agreement" and len(spot.records) == len(PROMPTS)
    assert all(r.image is not None and r.image.is_file() and r.image.parent.name == "spot_check" for r in spot.records)
    assert load_spot_check(tmp_path) is None


# ---- tensor parallelism: the profile's GPU count -----------------------------------------------------
def test_tensor_parallel_size_is_the_profiles_gpu_count(tmp_path):
    from mucrasp.planning import load_profile
    from mucrasp.serve.backends import tensor_parallel_size
    from mucrasp.serve.vllm_server import VllmServer

    two = load_profile("a10g").model_copy(update={"gpu_count": 2})
    assert tensor_parallel_size(SmokeConfig(tmp_path, profile=two)) == 2
    assert tensor_parallel_size(SmokeConfig(tmp_path, profile="a10g")) == 1
    assert tensor_parallel_size(SmokeConfig(tmp_path)) == 1
    assert tensor_parallel_size(SmokeConfig(tmp_path, profile=two, tensor_parallel_size=4)) == 4  # as given
    args = VllmServer(tmp_path, tmp_path / "log", tensor_parallel_size=2).args
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert "--tensor-parallel-size" not in VllmServer(tmp_path, tmp_path / "log").args
    with pytest.raises(MucraspError, match="tensor-parallel-size must be at least 1"):
        SmokeConfig(tmp_path, tensor_parallel_size=0).validate()


def test_model_card_serve_command_names_the_tensor_parallel_size(tmp_path):
    from mucrasp.export.vllm_checkpoint import export_vllm

    h.make_pruned_checkpoint("LlamaForCausalLM", tmp_path / "pruned", h.uniform_plan())
    card = (export_vllm(tmp_path / "pruned", tmp_path / "tp2", tensor_parallel_size=2).out / "README.md").read_text()
    assert "vllm serve ./tp2 --tensor-parallel-size 2" in card and "tensor_parallel_size=2" in card
    card = (export_vllm(tmp_path / "pruned", tmp_path / "tp1").out / "README.md").read_text()
    assert "vllm serve ./tp1\n" in card and "--tensor-parallel-size" not in card


# ---- the dtype vLLM runs an export in on a CPU host --------------------------------------------------
def test_cpu_dtype_is_bf16_only_for_an_int8_export_on_an_amx_host(tmp_path, monkeypatch):
    """vLLM's int8 GEMM on AMX hosts takes bf16 activations only (fp32 ones fail inside the engine), so an
    int8 export is served in bf16 there; anything else stays fp32 on CPU, and --dtype always wins."""
    import mucrasp.serve.backends as backends
    from mucrasp.export.vllm_checkpoint import export_vllm

    h.make_pruned_checkpoint("LlamaForCausalLM", tmp_path / "pruned", h.uniform_plan())
    plain = export_vllm(tmp_path / "pruned", tmp_path / "bf16").out
    int8 = export_vllm(tmp_path / "pruned", tmp_path / "w8a8", weights="w8a8").out
    fp8 = export_vllm(tmp_path / "pruned", tmp_path / "fp8", weights="fp8").out  # 8 bits, not int
    for amx, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(backends, "amx_host", lambda amx=amx: amx)
        assert backends.vllm_dtype(SmokeConfig(int8), gpu=False) == expected
        assert backends.vllm_dtype(SmokeConfig(plain), gpu=False) == "float32"
        assert backends.vllm_dtype(SmokeConfig(fp8), gpu=False) == "float32"
    assert backends.vllm_dtype(SmokeConfig(int8, dtype="float16"), gpu=False) == "float16"
    assert backends.vllm_dtype(SmokeConfig(int8), gpu=True) == "auto"


def test_int8_export_on_a_cpu_without_vnni_or_amx_is_flagged_in_the_log_report_and_card(tmp_path, monkeypatch, caplog):
    """W8A8 on an AVX2-only CPU drifts several times more than on VNNI/AMX: the smoke run says so (a
    warning, the report's backend details, the model card); other formats and other CPUs get no note."""
    import mucrasp.devices as devices
    import mucrasp.serve.backends as backends
    from mucrasp.export.model_card import _smoke_lines

    quant = {"config_groups": {"group_0": {"weights": {"type": "int", "num_bits": 8}}}}
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "config.json").write_text(json.dumps({"quantization_config": quant}))
    (tmp_path / "bf16").mkdir()
    (tmp_path / "bf16" / "config.json").write_text(json.dumps({}))
    for flags, int8_note in (({"avx2", "fma"}, True), ({"avx2", "avx512_vnni"}, False), ({"asimd"}, False)):
        monkeypatch.setattr(devices, "cpu_flags", lambda flags=flags: frozenset(flags))
        caplog.clear()
        note = backends.cpu_int8_accuracy_note(tmp_path / "int8")
        assert (note is not None) == int8_note, flags
        assert (note in caplog.text) if note else "VNNI" not in caplog.text
        assert backends.cpu_int8_accuracy_note(tmp_path / "bf16") is None
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    note = backends.cpu_int8_accuracy_note(tmp_path / "int8")
    assert "no VNNI or AMX" in note and "0.176" in note
    smoke = {
        "passed": True,
        "backend": "vllm",
        "throughput": {"tokens_per_s": 1.0},
        "memory": {"what": "peak RSS", "peak_gb": 1.0},
        "spot_check": {"skipped": "no set"},
        "backend_details": {"cpu_int8_note": note},
    }
    assert f"- note: {note}" in _smoke_lines(smoke)
    assert not any("note:" in line for line in _smoke_lines({**smoke, "backend_details": {"cpu_int8_note": None}}))


def test_int8_widths_vllm_cannot_pack_on_amx_are_one_clear_error(tmp_path, monkeypatch):
    """A merged gate/up of 2 × 1080 rows passes vLLM's kernel check but not its packing: said before any engine
    starts, naming the layer and the fix. Widths in multiples of 16, or a host without AMX, pass."""
    import mucrasp.serve.backends as backends

    quant = {"config_groups": {"group_0": {"weights": {"type": "int", "num_bits": 8}}}}
    config = {"hidden_size": 576, "num_hidden_layers": 3, "intermediate_size": 1536, "quantization_config": quant}
    (tmp_path / "config.json").write_text(json.dumps({**config, "layer_intermediate_sizes": [1536, 1080, 512]}))
    monkeypatch.setattr(backends, "amx_host", lambda: True)
    monkeypatch.setattr(backends, "gpu_available", lambda: False)
    with pytest.raises(MucraspError, match=r"layer 1's MLP width 1080 .* 2160 rows.*--align 16"):
        backends.check_cpu_int8_widths(tmp_path)
    with pytest.raises(MucraspError, match="layer 1's MLP width 1080"):  # the smoke test says it, engine unstarted
        run_smoke(SmokeConfig(tmp_path, backend="vllm", offline=True, report=tmp_path / "r.json"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "layer_intermediate_sizes": [1536, 1088, 512]}))
    backends.check_cpu_int8_widths(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "layer_intermediate_sizes": [1536, 1080, 512]}))
    monkeypatch.setattr(backends, "amx_host", lambda: False)
    backends.check_cpu_int8_widths(tmp_path)
