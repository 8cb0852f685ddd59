"""`prune --scores` slices the checkpoint shard by shard without loading the model; the result must be
the very checkpoint the in-memory path writes."""

from __future__ import annotations

import json

import pytest
import torch
from calib_helpers import save_processor, write_calibration
from safetensors.torch import load_file

from mucrasp.checkpoint import load_pruned, weight_files
from mucrasp.errors import MucraspError
from mucrasp.pruning import PruneConfig, prune
from mucrasp.scoring.score_job import ScoreConfig, score_model
from mucrasp.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def scored_source(tmp_path_factory):
    """A tiny bf16 Qwen2.5-VL in several shards, and its MuCRASP scores."""
    folder = tmp_path_factory.mktemp("stream")
    source = folder / "source"
    build_tiny_model("Qwen2_5_VLForConditionalGeneration").to(torch.bfloat16).save_pretrained(
        source, max_shard_size="600KB"
    )
    save_processor(source)
    calibration = write_calibration(folder / "cal")
    scores = folder / "scores.safetensors"
    score_model(ScoreConfig(model=source, out=scores, calibration=calibration, device="cpu"))
    return source, scores


def _weights(folder):
    tensors = {}
    for shard in weight_files(folder):
        tensors.update(load_file(shard))
    return tensors


def _without_volatile(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("created",)}


@pytest.mark.parametrize("layout", ["global", "uniform"])
def test_streaming_prune_equals_in_memory_prune(scored_source, tmp_path, layout):
    source, scores = scored_source
    common = dict(model=source, scores=scores, ratio=0.4, layout=layout, device="cpu")
    streamed = prune(PruneConfig(out=tmp_path / "streamed", stream=True, **common)).out
    in_memory = prune(PruneConfig(out=tmp_path / "in-memory", stream=False, **common)).out

    a, b = _weights(streamed), _weights(in_memory)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.bfloat16, key
        assert torch.equal(a[key], b[key]), key
    # sliced for real, and sharded like the source
    assert sum(t.numel() for t in a.values()) < sum(t.numel() for t in _weights(source).values())
    assert len(weight_files(streamed)) > 1 and (streamed / "model.safetensors.index.json").is_file()
    config_a = json.loads((streamed / "config.json").read_text())
    config_b = json.loads((in_memory / "config.json").read_text())
    assert config_a == config_b
    manifest_a = json.loads((streamed / "pruning.json").read_text())
    manifest_b = json.loads((in_memory / "pruning.json").read_text())
    assert _without_volatile(manifest_a) == _without_volatile(manifest_b)

    # the same files besides the weights (streaming keeps the source's shard files, each smaller)
    def others(folder):
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("model"))

    assert others(streamed) == others(in_memory)
    assert sorted(p.name for p in weight_files(streamed)) == sorted(p.name for p in weight_files(source))

    # and it loads and runs as the in-memory one does
    ids = torch.tensor([[1, 7, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(
            load_pruned(streamed)(input_ids=ids).logits, load_pruned(in_memory)(input_ids=ids).logits
        )


def test_streaming_needs_scores_and_a_method_that_keeps_slicing_plain(scored_source, tmp_path):
    source, _ = scored_source
    with pytest.raises(MucraspError, match="cannot prune shard by shard: it needs --scores FILE"):
        prune(PruneConfig(model=source, out=tmp_path / "p", ratio=0.3, stream=True, device="cpu"))
    assert not (tmp_path / "p").exists()
