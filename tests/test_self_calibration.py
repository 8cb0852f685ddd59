"""Self-calibration: the dense model's own traces on bundled prompts, when the chain gets no --calib."""

from __future__ import annotations

import json

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
    with pytest.raises(MucraspError, match="bundled set has"):
        split_pool(pool, SelfCalibrationConfig(samples=len(pool), spot_check=1))


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
