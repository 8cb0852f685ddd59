"""The memory and throughput models against hand-computed figures, and the planner's choices."""

from __future__ import annotations

import json

import pytest
from conftest import ARCHITECTURES  # every registered family
from typer.testing import CliRunner

from mucrasp.adapters import adapter_for_config
from mucrasp.checkpoint import record_widths
from mucrasp.cli import app
from mucrasp.errors import MucraspError
from mucrasp.params import count_parameters
from mucrasp.planning import Workload, load_profile, plan_for_config, plan_model
from mucrasp.planning.memory_model import estimate_memory
from mucrasp.planning.model_shape import model_shape
from mucrasp.planning.planner import ratio_grid
from mucrasp.planning.throughput_model import estimate_throughput
from mucrasp.pruning import prune_in_memory
from mucrasp.published_configs import qwen25_vl_7b_config
from mucrasp.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def qwen7b():
    config = qwen25_vl_7b_config()
    return config, adapter_for_config(config)


@pytest.fixture(scope="module")
def qwen7b_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen7b-config")
    qwen25_vl_7b_config().save_pretrained(path)
    return path


# Hand-computed from the config (bf16, 2 bytes a parameter):
# vision: patch 3*2*14*14*1280 = 1,505,280; block 2*1280 + (1280*3840+3840) + (1280*1280+1280)
#   + 2*(1280*3420+3420) + (3420*1280+1280) = 19,702,200, x32 = 630,470,400;
#   merger 1280 + (5120*5120+5120) + (5120*3584+3584) = 44,574,464  -> 676,550,144
# text: embeddings and untied lm_head 152064*3584 = 544,997,376 each;
#   layer: q 3584*3584+3584, k and v 3584*512+512 each, o 3584*3584, MLP 3*3584*18944, norms 2*3584
#   = 233,057,792, x28 = 6,525,618,176; final norm 3584  -> 7,615,616,512
# KV: 28 layers * 4 heads * 128 * 2 (K, V) * 2 bytes = 57,344 bytes a token.
VISION = 676_550_144
TEXT = 544_997_376 * 2 + 6_525_618_176 + 3584
KV_PER_TOKEN = 57_344


def test_memory_model_matches_hand_computed_7b(qwen7b):
    config, adapter = qwen7b
    shape = model_shape(config, adapter)
    workload = Workload(max_model_len=8192, concurrency=8)
    memory = estimate_memory(shape, 0.0, workload, load_profile("a10g"), "bf16")
    assert memory.vision_bytes == pytest.approx(VISION * 2, rel=0.01)
    assert memory.weights_bytes == pytest.approx((VISION + TEXT) * 2, rel=0.01)
    assert memory.kv_bytes == pytest.approx(KV_PER_TOKEN * 8192 * 8, rel=0.01)
    assert shape.total_params(0) == pytest.approx(8.29e9, rel=0.01)  # the published size
    # Ratio 0.5 removes half of the projections (all but norms), and half the KV heads.
    half = estimate_memory(shape, 0.5, workload, load_profile("a10g"), "bf16")
    projections = 28 * (233_057_792 - 2 * 3584)
    assert half.weights_bytes == pytest.approx((VISION + TEXT - projections / 2) * 2, rel=0.01)
    assert half.kv_bytes == pytest.approx(memory.kv_bytes / 2, rel=0.01)


def test_throughput_model_matches_roofline(qwen7b):
    config, adapter = qwen7b
    shape = model_shape(config, adapter)
    workload = Workload(max_model_len=8192, concurrency=8)
    speed = estimate_throughput(shape, 0.0, workload, load_profile("a10g"), "bf16")
    # Decode reads the decoder and lm_head (not embeddings, not vision) and every KV cache, per step.
    step_bytes = (TEXT - 544_997_376) * 2 + KV_PER_TOKEN * 8192 * 8
    assert speed.decode_bound == "memory"
    assert speed.decode_tokens_per_s == pytest.approx(8 / (step_bytes / 600e9), rel=0.01)
    faster = estimate_throughput(shape, 0.3, workload, load_profile("a10g"), "bf16")
    assert faster.decode_tokens_per_s > speed.decode_tokens_per_s
    assert faster.prefill_tokens_per_s > speed.prefill_tokens_per_s


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_config_counts_equal_the_built_model(architecture):
    model = build_tiny_model(architecture)
    adapter = adapter_for_config(model.config)
    counts = count_parameters(model, adapter)
    shape = model_shape(model.config, adapter)
    assert (shape.total_params(0), shape.prunable_params) == (counts.total, counts.prunable)
    # A per-layer pruned config is read through its recorded widths.
    outcome = prune_in_memory(model, adapter, 0.3, layout="global")
    record_widths(model, adapter, outcome.plan)
    pruned = model_shape(model.config, adapter)
    assert (pruned.total_params(0), pruned.prunable_params) == (outcome.after.total, outcome.after.prunable)


def _ratio(qwen7b, profile, weights=None, **workload):
    config, adapter = qwen7b
    return plan_for_config(config, adapter, load_profile(profile), Workload(**workload), weights=weights)


def test_larger_context_needs_larger_ratio(qwen7b):
    # The pruning lever alone (bf16 fixed); tests/test_planner_formats.py weighs the formats too.
    ratios = [_ratio(qwen7b, "a10g", "bf16", max_model_len=n, concurrency=8).ratio for n in (2048, 8192, 16384)]
    assert None not in ratios
    assert ratios == sorted(ratios) and ratios[-1] > ratios[0]


def test_no_pruning_when_the_model_fits(qwen7b):
    plan = _ratio(qwen7b, "h100-80g", max_model_len=4096, concurrency=1)
    assert plan.ratio == 0 and "no pruning needed" in plan.message
    assert plan.chosen.fits and plan.chosen.budget_gb - plan.chosen.total_gb > 10


def test_nothing_fits_reports_the_shortfall(qwen7b):
    plan = _ratio(qwen7b, "jetson-orin-nano-8g", max_model_len=32768, concurrency=1)
    assert plan.ratio is None
    assert plan.shortfall["memory_gb"] > 0
    assert "short by" in plan.message and "GB of memory" in plan.message
    assert "h100-80g" in plan.fitting_profiles and "jetson-orin-nano-8g" not in plan.fitting_profiles


def test_throughput_target_drives_the_ratio(qwen7b):
    base = _ratio(qwen7b, "h100-80g", "bf16", max_model_len=4096, concurrency=1)
    target = base.rows[0].decode_tokens_per_s * 1.2
    plan = _ratio(qwen7b, "h100-80g", "bf16", max_model_len=4096, concurrency=1, target_tokens_per_s=target)
    assert plan.ratio and plan.ratio > 0 and plan.chosen.decode_tokens_per_s >= target
    hopeless = _ratio(qwen7b, "h100-80g", max_model_len=4096, concurrency=1, target_tokens_per_s=1e6)
    assert hopeless.ratio is None and hopeless.shortfall["tokens_per_s"] > 0 and "memory_gb" not in hopeless.shortfall


def test_dtype_and_grid_checks(qwen7b):
    assert _ratio(qwen7b, "t4", max_model_len=1024).dtype == "fp16"
    with pytest.raises(MucraspError, match="does not support dtype bf16"):
        _ratio(qwen7b, "t4", dtype="bf16")
    with pytest.raises(MucraspError, match="'max_model_len'"):
        Workload.create(max_model_len=0)
    assert ratio_grid(0.05, 0.5) == [round(i * 0.05, 2) for i in range(11)]
    with pytest.raises(MucraspError, match="'max_ratio'"):
        ratio_grid(0.05, 0.95)


def test_plan_command_json_table_and_plot(qwen7b_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["plan", str(qwen7b_dir), "--profile", "a10g", "--max-model-len", "8192", "--concurrency", "8", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = plan_model(qwen7b_dir, "a10g", Workload(max_model_len=8192, concurrency=8))
    # Both levers: quantized to w8a8 (issue 19), no pruning; one row per (format, ratio).
    assert (data["ratio"], data["weights"]) == (expected.ratio, expected.weights) == (0.0, "w8a8")
    assert data["formats"] == ["bf16", "w8a8", "fp8", "w4a16"]
    assert len(data["rows"]) == 11 * len(data["formats"]) and {
        "weights",
        "ttft_s",
        "weights_gb",
        "kv_gb",
        "total_gb",
        "decode_tokens_per_s",
        "fits",
        "meets",
    } <= set(data["rows"][0])

    png = tmp_path / "plan.png"
    result = runner.invoke(
        app,
        ["plan", str(qwen7b_dir), "--profile", "jetson-orin-nano-8g", "--max-model-len", "32768", "--plot", str(png)],
    )
    assert result.exit_code == 1 and "short by" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"

    result = runner.invoke(app, ["plan", str(qwen7b_dir), "--all-profiles", "--max-model-len", "8192"])
    assert result.exit_code == 0 and all(name in result.output for name in ("a10g", "t4", "jetson-orin-nano-8g"))
    assert "w4a16" in result.output  # the T4 (16 GB) needs 4-bit weights for the 7B at 8k

    result = runner.invoke(app, ["plan", str(tmp_path / "missing"), "--profile", "a10g"])
    assert isinstance(result.exception, MucraspError)
