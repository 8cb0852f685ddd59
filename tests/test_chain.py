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
    assert saved["complete"] is True
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
    rows = {r.ratio: r for r in plan_for_config(config, adapter_for_config(config), roomy, SMALL, weights="bf16").rows}
    # Dense weights only (no weight_formats): the planner's pruning lever is what this chain test covers.
    data = {**roomy.model_dump(), "name": "tight", "memory_gb": (rows[0].total_gb + rows[0.3].total_gb) / 2}
    data["weight_formats"] = []
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_chain_prunes_when_the_profile_is_tight(tmp_path, tiny_model_dirs):
    out = tmp_path / "deploy"
    model = tiny_model_dirs["Qwen2_5_VLForConditionalGeneration"]
    # The tiny model has no tokenizer, so it cannot self-calibrate: a data-free method, asked for by name.
    with pytest.raises(MucraspError, match="self-calibration cannot run"):
        run_chain(DeployConfig(profile=_tight_profile(tmp_path), model=model, out=out, workload=SMALL))
    assert not out.exists()
    report = run_chain(
        DeployConfig(profile=_tight_profile(tmp_path), model=model, out=out, workload=SMALL, method="magnitude")
    )
    assert 0 < report.plan.ratio <= 0.3
    manifest = _read(out / "pruning.json")
    assert manifest["ratio"] == report.plan.ratio and manifest["method"] == "magnitude"
    assert {s["step"]: s["status"] for s in report.steps}["score"] == "done"
    assert (out / "model" / "pruning.json").is_file()
    assert _read(out / "report.json")["ratio"] == report.plan.ratio
    # Exported for vLLM; the tiny model has no tokenizer, so the smoke step says so instead of serving.
    assert (out / "export" / "config.json").is_file()
    smoke = {s["step"]: s for s in report.steps}["smoke"]
    assert smoke["status"] == "failed" and "no tokenizer" in smoke["detail"] and report.smoke is None


def test_chain_scores_the_demo_once_and_reuses_the_scores(tmp_path):
    first = run_chain(
        DeployConfig(profile="a10g", out=tmp_path / "d1", workload=SMALL, ratio=0.3, cache_dir=tmp_path / "cache")
    )
    steps = {s["step"]: s for s in first.steps}
    assert steps["score"]["status"] == "done" and steps["prune"]["status"] == "done"
    assert _read(tmp_path / "d1" / "pruning.json")["method"] == "mucrasp"
    assert _read(tmp_path / "d1" / "report.json")["ratio"] == 0.3
    second = run_chain(
        DeployConfig(profile="l4", out=tmp_path / "d2", workload=SMALL, ratio=0.5, cache_dir=tmp_path / "cache")
    )
    assert {s["step"]: s["status"] for s in second.steps}["score"] == "cached"
    assert _read(tmp_path / "d2" / "pruning.json")["ratio_achieved"] >= 0.5


def test_chain_prunes_with_flap_from_calibration(tmp_path, monkeypatch):
    """FLAP's bias compensation needs calibration means; the chain prunes from its score cache, so
    the scores file carries them (it used to fail asking for --calib although --calib was given)."""
    import shutil

    from calib_helpers import save_processor, write_calibration

    from mucrasp.tiny_models import save_tiny_model

    model = save_tiny_model("Qwen2_5_VLForConditionalGeneration", tmp_path / "model")
    save_processor(model)
    calib = write_calibration(tmp_path / "cal")
    out = tmp_path / "deploy"
    import mucrasp.model_loading as loading
    import mucrasp.planning.profiles as profiles

    calls = {"profile": 0, "model": 0}
    real_read, real_load = profiles.read_profile_file, loading.load_model

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(profiles, "read_profile_file", counted("profile", real_read))
    monkeypatch.setattr(loading, "load_model", counted("model", real_load))
    report = run_chain(
        DeployConfig(
            profile="a10g",
            model=model,
            calibration=calib,
            method="flap",
            ratio=0.3,
            out=out,
            workload=SMALL,
            cache_dir=tmp_path / "cache",
        )
    )
    # One context: the profile is read once, the dense model loaded once for scoring and pruning.
    assert calls == {"profile": 1, "model": 1}, calls
    steps = {s["step"]: s for s in report.steps}
    assert steps["score"]["status"] == "done" and steps["prune"]["status"] == "done", report.steps
    manifest = _read(out / "pruning.json")
    assert manifest["method"] == "flap" and manifest["scoring_details"]["bias_compensation"] is True
    # The pruned checkpoint has the compensation biases.
    from safetensors import safe_open

    with safe_open(str(next((out / "model").glob("*.safetensors"))), framework="pt") as handle:
        assert any(key.endswith("down_proj.bias") for key in handle.keys())
    # pruning.json is written once, in the model folder; the deployment folder's is the same file.
    assert (out / "pruning.json").samefile(out / "model" / "pruning.json")
    # smoke.json names the deployment folder's own paths: it was written there, once.
    if (out / "smoke.json").is_file():
        assert ".partial" not in (out / "smoke.json").read_text()
    shutil.rmtree(out)


def test_chain_smoke_follows_the_plan_and_the_card_carries_the_measurements(tmp_path, monkeypatch):
    """The smoke test runs at the plan's context and concurrency with its target as a threshold; the report
    shows planned next to measured; the model card, written once after smoke and eval, carries both."""
    import mucrasp.serve as serve
    from mucrasp.demo.bundled import ensure_demo_data
    from mucrasp.scoring.score_cache import default_cache_dir

    out = tmp_path / "deploy"
    seen = []
    real = serve.run_smoke

    def spy(config):
        seen.append(config)
        assert not (out / "export" / "README.md").exists(), "the export must leave the card to the card step"
        return real(config)

    monkeypatch.setattr(serve, "run_smoke", spy)
    test_split = ensure_demo_data(default_cache_dir() / "demo-data")["test"]
    # a10g plans about 47k tokens/s for the demo model: the planner picks ratio 0 and the smoke test,
    # on this CPU, measures far less than 1000, so the enforced target fails the smoke step.
    # ...and the load phase sends the workload's image size, so its TTFT sits next to the planner's.
    workload = Workload(max_model_len=4096, concurrency=2, target_tokens_per_s=1000, image_size=96)
    report = run_chain(
        DeployConfig(
            profile="a10g",
            out=out,
            workload=workload,
            enforce_target=True,
            smoke_requests=1,
            eval_data=test_split,
            eval_limit=2,
            eval_ground_truth=True,
            eval_max_new_tokens=32,
        )
    )
    (config,) = seen
    assert (config.max_model_len, config.concurrency) == (4096, 2)
    assert config.requests == 2  # one per planned sequence at least
    assert config.image_size == 96 and config.planned.image_size == 96 and config.planned.ttft_s > 0
    assert config.thresholds.min_tokens_per_s == 1000 and config.planned.enforced

    steps = {s["step"]: s for s in report.steps}
    assert steps["smoke"]["status"] == "failed" and "tokens_per_s" in steps["smoke"]["detail"]
    assert "planned" in steps["smoke"]["detail"] and "target 1000 checked" in steps["smoke"]["detail"]
    saved = _read(out / "report.json")
    assert saved["complete"] is False
    pvm = saved["planned_vs_measured"]
    assert pvm == _read(out / "smoke.json")["planned_vs_measured"]
    tps, memory = pvm["tokens_per_s"], pvm["memory_gb"]
    assert tps["target"] == 1000 and tps["planned"] > 1000 and 0 < tps["measured"] < 1000 and tps["enforced"]
    assert memory["planned"] > 0 and memory["measured"] > 0 and memory["limit"] > 0
    # The demo model has 512 positions: the planned 4096 is capped, and the report says so.
    assert pvm["max_model_len"]["planned"] == 4096 and pvm["max_model_len"]["served"] == 512
    assert "capped" in pvm["max_model_len"]["note"]
    assert pvm["concurrency"]["planned"] == 2
    assert pvm["ttft_s"]["planned"] == pytest.approx(config.planned.ttft_s, rel=1e-3)
    assert pvm["ttft_s"]["measured_p50"] > 0 and pvm["ttft_s"]["image_size"] == {"planned": 96, "served": 96}
    assert saved["smoke"]["load"]["image_size"] == 96  # the image sent, read back from the file
    assert "TTFT p50" in steps["smoke"]["detail"] and "at 96 px" in steps["smoke"]["detail"]
    assert "for no image" not in steps["smoke"]["detail"]  # the plan had this image size
    assert {c["metric"]: c["passed"] for c in saved["smoke"]["checks"]}["tokens_per_s"] is False

    # The card: written once, after the smoke test and the eval, with their numbers.
    assert steps["eval"]["status"] == "done" and steps["card"]["status"] == "done"
    evaluated = _read(out / "eval.json")
    assert saved["eval"] == evaluated
    card = (out / "export" / "README.md").read_text()
    assert "Not measured yet" not in card and "Not run yet" not in card
    assert f"| accuracy (pruned) | {evaluated['accuracy']:.4f} |" in card
    assert f"| answer agreement with the dense model | {evaluated['agreement']:.4f} |" in card
    smoke = saved["smoke"]
    assert f"| {smoke['throughput']['tokens_per_s']:.1f} |" in card
    assert f"| {smoke['memory']['peak_gb']:.2f} ({smoke['memory']['kind']}) |" in card
    assert "| context (tokens) | 4096 | 512 |" in card and "FAILED" in card


def test_the_target_is_not_a_threshold_on_a_host_without_a_gpu(monkeypatch):
    """The plan's tokens/s is for the profile's GPU: on a CPU host it is reported, not checked, by default."""
    import mucrasp.serve.memory as memory
    from mucrasp.demo.bundled import bundled_demo_model
    from mucrasp.deploy import DeployContext, _planned
    from mucrasp.planning import plan_model

    workload = Workload(max_model_len=512, concurrency=4, target_tokens_per_s=100)
    profile = load_profile("a10g")
    model = bundled_demo_model()

    def planned(gpu: bool, enforce: bool | None):
        monkeypatch.setattr(memory, "gpu_available", lambda: gpu)
        ctx = DeployContext(
            DeployConfig(profile=profile, workload=workload, enforce_target=enforce), None, profile, None, model, None
        )
        ctx.plan, ctx.ratio = plan_model(model, profile, workload), 0.0
        return _planned(ctx)

    cpu = planned(gpu=False, enforce=None)
    assert not cpu.enforced and "without a GPU" in cpu.note
    assert (cpu.max_model_len, cpu.concurrency, cpu.target_tokens_per_s) == (512, 4, 100)
    assert cpu.tokens_per_s > 100 and cpu.memory_gb > 0
    assert planned(gpu=True, enforce=None).enforced
    assert planned(gpu=False, enforce=True).enforced
    assert not planned(gpu=True, enforce=False).enforced


def test_chain_errors(tmp_path):
    with pytest.raises(MucraspError, match="target: Input should be 'vllm' or 'onnx'"):
        run_chain(DeployConfig(profile="a10g", target="tflite", out=tmp_path / "x"))
    with pytest.raises(MucraspError, match="ratio: Input should be less than or equal to 0.9"):
        run_chain(DeployConfig(profile="a10g", out=tmp_path / "x", ratio=0.95))
    with pytest.raises(MucraspError, match="short by"):
        run_chain(
            DeployConfig(profile="a10g", out=tmp_path / "x", workload=Workload(max_model_len=10**7, concurrency=64))
        )
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


def test_root_options_reach_the_chain(tmp_path, monkeypatch):
    import mucrasp.deploy as deploy

    seen = []
    monkeypatch.setattr(deploy, "run_chain", lambda config, progress: seen.append(config) or _Stop())
    data = tmp_path / "heldout.jsonl"
    data.write_text("")
    args = ["--profile", "a10g", "--out", str(tmp_path / "d"), "--max-model-len", "512", "--concurrency", "4"]
    args += ["--target-tokens-per-s", "50", "--no-enforce-target", "--eval-data", str(data), "--eval-limit", "3"]
    CliRunner().invoke(app, [*args, "--eval-ground-truth", "--eval-max-new-tokens", "16"])
    (config,) = seen
    assert config.enforce_target is False and config.workload.target_tokens_per_s == 50
    assert (config.eval_data, config.eval_limit, config.eval_ground_truth, config.eval_max_new_tokens) == (
        data,
        3,
        True,
        16,
    )
    seen.clear()
    CliRunner().invoke(app, ["--profile", "a10g", "--out", str(tmp_path / "d"), "--enforce-target"])
    assert seen[0].enforce_target is True and seen[0].eval_data is None
    with pytest.raises(MucraspError, match="eval data .* does not exist"):
        run_chain(DeployConfig(profile="a10g", out=tmp_path / "x", eval_data=tmp_path / "missing.jsonl"))
    assert not (tmp_path / "x").exists()


class _Stop:
    """What the patched chain returns: a report with no steps."""

    steps: list = []
    out = "nowhere"
