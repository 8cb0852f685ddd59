"""Self-calibration: the dense model's own traces on bundled prompts, when the chain gets no --calib."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calib_helpers import save_processor

from mucrasp.calibration.records import load_records
from mucrasp.calibration.self_calibration import SelfCalibrationConfig, prompt_pool, self_calibrate, split_pool
from mucrasp.deploy import DeployConfig, run_chain
from mucrasp.errors import MucraspError
from mucrasp.planning import Workload
from mucrasp.tiny_models import save_tiny_model

# Few prompts, few tokens: the tiny models answer these in about a second (KV-cache greedy decoding).
SMALL = SelfCalibrationConfig(samples=4, spot_check=2, max_new_tokens=8)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    model = save_tiny_model("LlamaForCausalLM", tmp_path_factory.mktemp("selfcal") / "llama")
    save_processor(model, vision=False)
    return model


@pytest.mark.parametrize("vision", [False, True])
def test_calibration_and_spot_check_prompts_are_disjoint_and_seeded(vision):
    _, pool = prompt_pool(vision)
    settings = SelfCalibrationConfig(samples=100, spot_check=28)
    calibration, spot = split_pool(pool, settings)
    assert len(calibration) == 100 and len(spot) == 28
    key = (lambda p: (p.text, p.scene_seed)) if vision else (lambda p: p.text)
    assert not {key(p) for p in calibration} & {key(p) for p in spot}
    assert split_pool(pool, settings) == (calibration, spot)
    assert split_pool(pool, settings.model_copy(update={"seed": 1}))[0] != calibration
    with pytest.raises(MucraspError, match="bundled calibration set has"):
        split_pool(pool, SelfCalibrationConfig(samples=len(pool), spot_check=1))


@pytest.mark.parametrize("vision", [False, True])
def test_the_recovery_pool_is_larger_and_shares_no_prompt_with_calibration_or_test(vision):
    from mucrasp.calibration.self_calibration import pool_size
    from mucrasp.demo.dataset import split_seeds
    from mucrasp.demo.word_problems import split_prompts

    _, recovery = prompt_pool(vision, "recovery")
    _, calibration = prompt_pool(vision, "calibration")
    assert len(recovery) == pool_size(vision, "recovery") > len(calibration)
    if vision:  # the scenes differ by seed; their questions repeat
        seeds = {p.scene_seed for p in recovery}
        assert not seeds & {p.scene_seed for p in calibration} and not seeds & set(split_seeds("test"))
    else:
        texts = {p.text for p in recovery}
        assert not texts & {p.text for p in calibration} and not texts & set(split_prompts("test"))


def test_self_calibration_is_deterministic_cached_and_disjoint(text_model, tmp_path):
    first = self_calibrate(text_model, tmp_path / "a", SMALL)
    again = self_calibrate(text_model, tmp_path / "b", SMALL)  # another cache: generated again
    assert not first.cached and not again.cached and first.key == again.key
    assert first.calibration.read_bytes() == again.calibration.read_bytes()
    assert first.spot_check.read_bytes() == again.spot_check.read_bytes()
    calibration, spot = load_records(first.calibration), load_records(first.spot_check)
    assert 0 < len(calibration) <= SMALL.samples and 0 < len(spot) <= SMALL.spot_check
    assert not {r.prompt for r in calibration} & {r.prompt for r in spot}
    assert self_calibrate(text_model, tmp_path / "a", SMALL).cached  # the second call reuses the first
    other_seed = self_calibrate(text_model, tmp_path / "a", SMALL.model_copy(update={"seed": 3}))
    assert other_seed.key != first.key and not other_seed.cached


def test_self_calibration_of_a_vl_model_asks_about_the_bundled_scenes(tmp_path):
    model = save_tiny_model("Qwen2_5_VLForConditionalGeneration", tmp_path / "vl")
    save_processor(model)
    made = self_calibrate(model, tmp_path / "cache", SMALL)
    records = load_records(made.calibration)
    assert records and all(r.image is not None and r.image.is_file() for r in records)
    assert made.info["prompt_set"] == "scene questions"


def test_a_model_without_a_tokenizer_is_one_clear_error(tmp_path, tiny_model_dirs):
    with pytest.raises(MucraspError, match="self-calibration cannot run.*--calib"):
        self_calibrate(tiny_model_dirs["LlamaForCausalLM"], tmp_path, SMALL)


def test_the_chain_without_calib_self_calibrates_scores_with_the_method_asked_and_recovers(
    text_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("MUCRASP_SMOKE_BACKEND", "transformers")
    out = tmp_path / "deploy"
    report = run_chain(
        DeployConfig(
            profile="a10g",
            model=text_model,
            ratio=0.3,
            out=out,
            workload=Workload(max_model_len=256, concurrency=1),
            cache_dir=tmp_path / "cache",
            self_calibration=SMALL,
            recover_steps=2,
        )
    )
    steps = {s["step"]: s for s in report.steps}
    assert steps["calibration"]["status"] == "done" and "self-calibration" in steps["calibration"]["detail"]
    assert steps["score"]["status"] == "done" and steps["recover"]["status"] == "done", report.steps
    manifest = json.loads((out / "pruning.json").read_text())
    assert manifest["method"] == "mucrasp"  # no silent swap to magnitude
    assert manifest["recovery"]["steps"] == 2 and (out / "model" / "pruning.json").samefile(out / "pruning.json")
    saved = json.loads((out / "report.json").read_text())
    assert saved["self_calibration"]["calibration_samples"] > 0
    spot = load_records(out / "export" / "spot_check.jsonl")
    used = tmp_path / "cache" / "self-calibration" / saved["self_calibration"]["key"] / "calibration.jsonl"
    assert spot and not {r.prompt for r in spot} & {r.prompt for r in load_records(used)}
    # recovery distilled on its own traces: the recovery prompts, one per sample of its 2 steps x 4
    recovery = manifest["recovery"]["calibration"]
    assert recovery.startswith("self-calibration (recovery prompts)"), recovery
    distilled = load_records(recovery.split()[-1])
    assert len(distilled) == manifest["recovery"]["samples"] and 0 < len(distilled) <= 2 * 4
    assert not {r.prompt for r in distilled} & {r.prompt for r in load_records(used)}
    assert not (Path(recovery.split()[-1]).parent / "spot_check.jsonl").exists()


def test_recovery_traces_are_one_per_training_sample_up_to_the_pool():
    from mucrasp.recovery import RecoverConfig, recovery_traces

    def traces(steps, vision=False):
        return recovery_traces(RecoverConfig(pruned="p", dense="d", out="o", steps=steps, batch_size=4), vision)

    short = traces(5)
    assert (short.split, short.samples, short.spot_check) == ("recovery", 20, 0)
    assert traces(1000).samples == traces(1000, vision=True).samples == 256  # capped at the pool
    assert short.max_new_tokens == SelfCalibrationConfig().max_new_tokens
