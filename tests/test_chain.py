"""The `mucrasp-deploy --profile P` chain: plan, then prune (or not), into one deployment folder."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from mucrasp.adapters import adapter_for_config
from mucrasp.cli import app
from mucrasp.deploy import DeployConfig, run_chain
from mucrasp.errors import MucraspError
from mucrasp.planning import Workload, load_profile, plan_for_config
from mucrasp.tiny_models import tiny_config

SMALL = Workload(max_model_len=256, concurrency=1)


@pytest.fixture(autouse=True)
def fast_smoke(monkeypatch):
    """The chain's smoke step on transformers: the vLLM server path has its own tests (test_smoke.py)."""
    monkeypatch.setenv("MUCRASP_SMOKE_BACKEND", "transformers")


def _read(path):
    return json.loads(path.read_text())


def test_chain_with_no_model_uses_the_demo_and_skips_pruning(tmp_path):
    out = tmp_path / "deploy"
    report = run_chain(DeployConfig(profile="a10g", out=out, workload=SMALL))
    assert report.plan.ratio == 0
    assert (out / "model" / "config.json").is_file() and any((out / "model").glob("*.safetensors"))
    assert _read(out / "plan.json")["ratio"] == 0
    assert _read(out / "pruning.json")["ratio"] == 0
    saved = _read(out / "report.json")
    assert saved["remaining"] == [] and saved["complete"] is True
    assert (out / "export" / "config.json").is_file() and (out / "export" / "spot_check.jsonl").is_file()
    assert saved["smoke"]["passed"] and saved["smoke"]["throughput"]["tokens_per_s"] > 0
    assert saved["smoke"]["spot_check"]["kind"] == "accuracy"
    assert {s["step"]: s["status"] for s in saved["steps"]}["prune"] == "skipped"
    assert saved["model"] == "demo"
    with pytest.raises(MucraspError, match="already exists"):
        run_chain(DeployConfig(profile="a10g", out=out, workload=SMALL))


def _tight_profile(tmp_path):
    """A profile whose memory sits between the tiny model's needs at ratio 0 and at ratio 0.3."""
    config = tiny_config("Qwen2_5_VLForConditionalGeneration")
    roomy = load_profile("h100-80g").model_copy(update={"runtime_reserve_gb": 0.0, "gpu_memory_utilization": 1.0})
    rows = {r.ratio: r for r in plan_for_config(config, adapter_for_config(config), roomy, SMALL).rows}
    data = {**roomy.model_dump(), "name": "tight", "memory_gb": (rows[0].total_gb + rows[0.3].total_gb) / 2}
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_chain_prunes_when_the_profile_is_tight(tmp_path, tiny_model_dirs):
    out = tmp_path / "deploy"
    model = tiny_model_dirs["Qwen2_5_VLForConditionalGeneration"]
    report = run_chain(DeployConfig(profile=_tight_profile(tmp_path), model=model, out=out, workload=SMALL))
    assert 0 < report.plan.ratio <= 0.3
    manifest = _read(out / "pruning.json")
    # The tiny model has no calibration file, so the chain says it fell back to magnitude.
    assert manifest["ratio"] == report.plan.ratio and manifest["method"] == "magnitude"
    assert {s["step"]: s["status"] for s in report.steps}["score"] == "fallback"
    assert (out / "model" / "pruning.json").is_file()
    assert _read(out / "report.json")["ratio"] == report.plan.ratio
    # Exported for vLLM; the tiny model has no tokenizer, so the smoke step says so instead of serving.
    assert (out / "export" / "config.json").is_file()
    smoke = {s["step"]: s for s in report.steps}["smoke"]
    assert smoke["status"] == "failed" and "no tokenizer" in smoke["detail"] and report.smoke is None


def test_chain_scores_the_demo_once_and_reuses_the_scores(tmp_path):
    first = run_chain(DeployConfig(profile="a10g", out=tmp_path / "d1", workload=SMALL, ratio=0.3, cache_dir=tmp_path / "cache"))
    steps = {s["step"]: s for s in first.steps}
    assert steps["score"]["status"] == "done" and steps["prune"]["status"] == "done"
    assert _read(tmp_path / "d1" / "pruning.json")["method"] == "mucrasp"
    assert _read(tmp_path / "d1" / "report.json")["ratio"] == 0.3
    second = run_chain(DeployConfig(profile="l4", out=tmp_path / "d2", workload=SMALL, ratio=0.5, cache_dir=tmp_path / "cache"))
    assert {s["step"]: s["status"] for s in second.steps}["score"] == "cached"
    assert _read(tmp_path / "d2" / "pruning.json")["ratio_achieved"] >= 0.5


def test_chain_errors(tmp_path):
    with pytest.raises(MucraspError, match="unknown target"):
        run_chain(DeployConfig(profile="a10g", target="tflite", out=tmp_path / "x"))
    with pytest.raises(MucraspError, match="ratio must be within"):
        run_chain(DeployConfig(profile="a10g", out=tmp_path / "x", ratio=0.95))
    with pytest.raises(MucraspError, match="short by"):
        run_chain(DeployConfig(profile="a10g", out=tmp_path / "x", workload=Workload(max_model_len=10**7, concurrency=64)))
    assert not (tmp_path / "x").exists()


def test_root_callback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and "Usage" in result.output
    # With a subcommand the chain stays out of the way, even when --profile is given.
    result = runner.invoke(app, ["--profile", "a10g", "--out", str(tmp_path / "no"), "profile", "list"])
    assert result.exit_code == 0 and not (tmp_path / "no").exists()
    result = runner.invoke(app, ["--profile", "a10g", "--out", str(tmp_path / "d"), "--max-model-len", "256"])
    assert result.exit_code == 0, result.output
    assert "smoke: passed" in result.output
    assert (tmp_path / "d" / "report.json").is_file()
