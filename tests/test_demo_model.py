"""The committed demo VLM: it loads, its config is what the docs say, and it really reasons."""

import json

import pytest
import torch

from mucrasp.calibration.batches import load_processor
from mucrasp.demo.bundled import bundled_demo_model
from mucrasp.demo.dataset import split_seeds
from mucrasp.demo.evaluate_demo import answer_accuracy
from mucrasp.demo.scenes import make_scene
from mucrasp.model_loading import load_model


@pytest.fixture(scope="module")
def demo():
    path = bundled_demo_model()
    return load_model(path), load_processor(path, vision=True), path


def test_demo_model_is_deep_and_wide_enough_to_prune(demo):
    (loaded, _, path) = demo
    text = loaded.model.config.text_config
    assert loaded.adapter.architecture == "Qwen2_5_VLForConditionalGeneration"
    assert text.num_hidden_layers >= 8 and text.num_key_value_heads < text.num_attention_heads
    assert text.intermediate_size >= 4 * text.hidden_size
    assert sum(f.stat().st_size for f in path.iterdir()) < 20 * 2**20
    assert loaded.model.dtype == torch.float32  # stored in bf16, loaded in fp32 for scoring


# The goal: at least 90% exact answers with the full greedy chain of thought.
ACCURACY_GOAL = 0.9


def test_demo_model_reasons_on_a_test_slice(demo):
    (loaded, processor, path) = demo
    scenes = [make_scene(seed) for seed in split_seeds("test", 100)]
    accuracy = answer_accuracy(loaded.model, processor, scenes)
    assert accuracy >= ACCURACY_GOAL, f"demo model accuracy {accuracy:.2f} on 100 test items"
    recorded = json.loads((path / "training.json").read_text())
    assert recorded["accuracy_on_calibration_items"] >= ACCURACY_GOAL
