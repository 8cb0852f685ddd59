"""The ONNX vision graph's fixed image size comes from the processor the model folder ships."""

import json

import pytest

from mucrasp.errors import MucraspError
from mucrasp.export.onnx_export import export_onnx, vision_grid
from mucrasp.tiny_models import tiny_config


def test_image_size_is_read_from_a_transformers_5_processor_config(tmp_path):
    config = tiny_config("Qwen2_5_VLForConditionalGeneration")
    (tmp_path / "processor_config.json").write_text(
        json.dumps({"image_processor": {"size": {"longest_edge": 112 * 112, "shortest_edge": 112 * 112}}})
    )
    assert vision_grid(config, tmp_path, None) == (1, 8, 8)


def test_image_size_falls_back_to_448_and_obeys_an_explicit_size(tmp_path):
    config = tiny_config("Qwen2_5_VLForConditionalGeneration")
    assert vision_grid(config, tmp_path, None) == (1, 32, 32)
    assert vision_grid(config, tmp_path, 56) == (1, 4, 4)


@pytest.mark.parametrize("size", [0, -28, 50])
def test_an_image_size_that_is_not_a_multiple_of_patch_times_merge_is_one_error(tmp_path, size):
    from mucrasp.tiny_models import save_tiny_model

    save_tiny_model("Qwen2_5_VLForConditionalGeneration", tmp_path / "model")
    with pytest.raises(MucraspError, match="multiple of 28"):
        export_onnx(tmp_path / "model", tmp_path / "onnx", image_size=size)  # before the pruning check: no work done
    assert not (tmp_path / "onnx").exists()
