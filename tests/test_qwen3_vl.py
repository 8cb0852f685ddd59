"""Qwen3-VL: what sets it apart from the families the parametrised tests already cover."""

import json

import numpy as np
import torch
import transformers

from mucrasp.adapters import get_adapter
from mucrasp.checkpoint import LAYER_INTERMEDIATE_SIZES, save_pruned
from mucrasp.export.onnx_runtime import mrope_position_ids
from mucrasp.slicing import slice_model
from mucrasp.tiny_models import IMAGE_TOKEN_ID, build_tiny_model, tiny_image_inputs
from mucrasp.units import KeepPlan, LayerKeep

ARCH = "Qwen3VLForConditionalGeneration"


def test_deepstack_features_reach_the_decoder():
    """The image changes the logits through deepstack too: zeroing the deepstack mergers changes them."""
    model = build_tiny_model(ARCH)
    inputs = tiny_image_inputs()
    with torch.no_grad():
        full = model(**inputs).logits
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.zero_()
            merger.linear_fc2.bias.zero_()
        without = model(**inputs).logits
    assert get_adapter(ARCH).deepstack_levels(model.config) == 2
    assert (full - without).abs().max() > 1e-3


def test_uniform_checkpoint_with_fewer_heads_is_stock(tmp_path):
    model = build_tiny_model(ARCH)
    plan = KeepPlan([LayerKeep(torch.arange(0, 384, 2), torch.arange(1)) for _ in range(3)])
    slice_model(model, get_adapter(ARCH), plan)
    save_pruned(model, tmp_path / "uniform", plan, {"method": "test"})
    text = json.loads((tmp_path / "uniform" / "config.json").read_text())["text_config"]
    assert LAYER_INTERMEDIATE_SIZES not in text and text["num_key_value_heads"] == 1
    stock = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "uniform").eval()
    inputs = tiny_image_inputs()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, model(**inputs).logits, atol=1e-6, rtol=0)


def test_onnx_runtime_mrope_positions_match_transformers():
    model = build_tiny_model(ARCH)
    inputs = tiny_image_inputs(grid_hw=(4, 6))
    expected, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
    )
    ours = mrope_position_ids(inputs["input_ids"][0].tolist(), inputs["image_grid_thw"].numpy(), IMAGE_TOKEN_ID, 2)
    np.testing.assert_array_equal(ours, expected[:, 0].numpy())
