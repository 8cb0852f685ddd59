"""Device and dtype: the `auto` rules case by case, `--device cuda` without CUDA, a bf16 source giving a
bf16 checkpoint sharded like it, and scores from a model split by a device_map across "cpu" and "disk"."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from calib_helpers import save_processor, write_calibration
from safetensors import safe_open

from mucrasp import devices
from mucrasp.adapters import adapter_for_config
from mucrasp.calibration import CalibrationSource, PivotConfig
from mucrasp.checkpoint import load_pruned, read_safetensors_header, weight_files
from mucrasp.errors import MucraspError
from mucrasp.model_loading import load_model
from mucrasp.pruning import PruneConfig, prune
from mucrasp.scoring.taylor_hooks import taylor_scores
from mucrasp.slicing import mask_model
from mucrasp.tiny_models import build_tiny_model
from mucrasp.units import KeepPlan

CLI = str(Path(sys.executable).parent / "mucrasp-deploy")
CPU = torch.device("cpu")
GIB = 2**30


# ---- auto rules -------------------------------------------------------------------------------------------
@pytest.fixture
def cpu_with(monkeypatch):
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))

    return set_flags


@pytest.mark.parametrize(
    ("flags", "source", "expected"),
    [
        (("avx2", "avx512_bf16"), torch.bfloat16, torch.bfloat16),  # bf16 units: the checkpoint's dtype
        (("avx2", "amx_bf16"), torch.bfloat16, torch.bfloat16),
        (("avx2",), torch.bfloat16, torch.float32),  # AVX2 only and fp32 fits: fp32
        (("avx2",), torch.float16, torch.float32),  # no fp16 units
        (("avx2", "avx512_fp16"), torch.float16, torch.float16),
        (("avx2",), torch.float32, torch.float32),
        (("avx2",), None, torch.float32),  # dtype unknown: fp32
    ],
)
def test_auto_dtype_on_cpu(cpu_with, flags, source, expected):
    cpu_with(*flags)
    assert devices.resolve_dtype("auto", source, CPU, parameter_count=10**6, available_bytes=16 * GIB) == expected


def test_auto_keeps_bf16_on_an_avx2_cpu_when_fp32_would_not_fit(cpu_with):
    cpu_with("avx2")
    seven_b = 8_290_000_000  # Qwen2.5-VL-7B: 33 GB in fp32, 16.6 GB in bf16
    with pytest.warns(devices.DeviceWarning, match="would not fit"):
        chosen = devices.resolve_dtype("auto", torch.bfloat16, CPU, parameter_count=seven_b, available_bytes=23 * GIB)
    assert chosen == torch.bfloat16


def test_auto_dtype_on_cuda(monkeypatch):
    cuda = torch.device("cuda:0")
    monkeypatch.setattr(devices, "gpu_has_bf16", lambda device: True)
    assert devices.resolve_dtype("auto", torch.bfloat16, cuda) == torch.bfloat16
    assert devices.resolve_dtype("auto", torch.float32, cuda) == torch.float32
    monkeypatch.setattr(devices, "gpu_has_bf16", lambda device: False)  # a T4
    assert devices.resolve_dtype("auto", torch.bfloat16, cuda) == torch.float16
    assert devices.resolve_dtype("auto", torch.float16, cuda) == torch.float16


def test_named_dtypes_win_and_bad_names_are_one_error(cpu_with):
    cpu_with("avx2")
    assert devices.resolve_dtype("bf16", torch.float32, CPU) == torch.bfloat16
    assert devices.resolve_dtype("float32", torch.bfloat16, CPU) == torch.float32
    assert devices.resolve_dtype("fp16", None, CPU) == torch.float16
    with pytest.raises(MucraspError, match="unknown dtype \\(got 'int8'"):
        devices.resolve_dtype("int8", None, CPU)


def test_auto_device_and_device_errors():
    assert devices.resolve_device("cpu") == CPU
    assert devices.resolve_device("auto") == (torch.device("cuda:0") if torch.cuda.is_available() else CPU)
    with pytest.raises(MucraspError, match="unknown device \\(got 'tpu'"):
        devices.resolve_device("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(MucraspError, match="no CUDA device is available"):
                devices.resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_error_line(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["LlamaForCausalLM"]
    result = subprocess.run(
        [CLI, "prune", str(model), "--out", str(tmp_path / "p"), "--ratio", "0.3", "--device", "cuda"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines == ["error: --device cuda: no CUDA device is available on this machine (use --device cpu or auto)"]
    assert not (tmp_path / "p").exists()


# ---- dtype kept, sharded like the source ------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_source(tmp_path_factory):
    """A tiny Qwen2.5-VL saved in bf16, in several shards."""
    folder = tmp_path_factory.mktemp("bf16-source")
    model = build_tiny_model("Qwen2_5_VLForConditionalGeneration").to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="600KB")
    save_processor(folder)
    return folder


def _header_dtypes(folder: Path) -> set[str]:
    return {dtype for shard in weight_files(folder) for dtype, _ in read_safetensors_header(shard).values()}


def test_checkpoint_dtype_reads_the_headers(bf16_source, tiny_model_dirs):
    assert devices.checkpoint_dtype(bf16_source) == torch.bfloat16
    assert devices.checkpoint_dtype(tiny_model_dirs["LlamaForCausalLM"]) == torch.float32


def test_bf16_source_gives_bf16_sharded_checkpoint_close_to_the_masked_model(bf16_source, tmp_path):
    assert len(weight_files(bf16_source)) > 1
    report = prune(PruneConfig(model=bf16_source, out=tmp_path / "p", ratio=0.4, method="magnitude", device="cpu"))
    out = report.out
    assert _header_dtypes(out) == {"BF16"}
    assert (out / "model.safetensors.index.json").is_file() and len(weight_files(out)) > 1
    assert report.checkpoint_bytes < sum(f.stat().st_size for f in bf16_source.iterdir())
    manifest = json.loads((out / "pruning.json").read_text())
    assert manifest["dtype"] == "bfloat16"

    pruned = load_pruned(out)
    assert next(pruned.parameters()).dtype == torch.bfloat16
    dense = load_pruned(bf16_source)
    adapter = adapter_for_config(dense.config)
    mask_model(dense, adapter, KeepPlan.from_json(manifest["kept_units"]))
    ids = torch.tensor([[1, 7, 42, 99, 3, 250, 17, 8]])
    with torch.no_grad():
        got, want = pruned(input_ids=ids).logits.float(), dense(input_ids=ids).logits.float()
    # bf16 keeps 8 bits of mantissa: sliced and masked matmuls round differently, within bf16's tolerance
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=2e-2)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_float32_is_written_only_when_asked(bf16_source, tmp_path):
    report = prune(PruneConfig(model=bf16_source, out=tmp_path / "p", ratio=0.3, dtype="float32", device="cpu"))
    assert _header_dtypes(report.out) == {"F32"}


# ---- device_map: cpu + disk offload ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-offload")
    build_tiny_model("LlamaForCausalLM").save_pretrained(folder)
    save_processor(folder, vision=False)
    return folder


def test_scores_with_cpu_and_disk_offload_equal_in_memory_scores(llama_dir, tmp_path):
    def scores(loaded):
        batches = CalibrationSource(write_calibration(tmp_path / "cal", with_images=False), llama_dir).batches(
            loaded.model.config, PivotConfig(), vision=False
        )
        sets = {"a_global": lambda b: b.response_mask, "a_pivot": lambda b: b.pivot_mask}
        return taylor_scores(loaded.model, loaded.adapter, batches, sets)[0]

    in_memory = scores(load_model(llama_dir, dtype=torch.float32, device="cpu"))
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    offloaded = load_model(llama_dir, dtype=torch.float32, device_map=device_map, offload_folder=tmp_path / "off")
    # The disk part really is off the model: its weights are read from disk (the safetensors files) per forward.
    layer = offloaded.adapter.decoder_layers(offloaded.model)[1]
    assert layer.mlp.gate_proj.weight.device.type == "meta"
    assert "disk" in set(offloaded.model.hf_device_map.values())
    split = scores(offloaded)
    for key in ("a_global", "a_pivot"):
        for got, want in zip(split[key].mlp + split[key].attn, in_memory[key].mlp + in_memory[key].attn):
            assert float(want.abs().sum()) > 0
            torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_no_warning_for_a_model_that_fits(llama_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", devices.DeviceWarning)
        loaded = load_model(llama_dir, dtype="auto", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_safetensors_metadata_is_plain_pt(bf16_source, tmp_path):
    report = prune(PruneConfig(model=bf16_source, out=tmp_path / "p", ratio=0.3, device="cpu"))
    with safe_open(str(weight_files(report.out)[0]), "pt") as handle:
        assert (handle.metadata() or {}).get("format") == "pt"


def test_memory_model_turns_checkpointing_on_only_when_activations_do_not_fit():
    from mucrasp.scoring.taylor_hooks import RUNTIME_ALLOWANCE_BYTES, activation_bytes, checkpointing_needed

    model = build_tiny_model("LlamaForCausalLM")
    adapter = adapter_for_config(model.config)
    need = activation_bytes(model, adapter, tokens=4096)
    assert need > activation_bytes(model, adapter, tokens=1024) > 0
    on, why = checkpointing_needed(model, adapter, 4096, available_bytes=need // 2)
    assert on and why.startswith("gradient checkpointing on: the longest sample (4096 tokens)")
    off, why = checkpointing_needed(model, adapter, 4096, available_bytes=need + RUNTIME_ALLOWANCE_BYTES)
    assert not off and "fit" in why
