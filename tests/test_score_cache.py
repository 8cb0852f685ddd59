"""The score cache key is content-based, and a scores file has one writer at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from calib_helpers import write_calibration

from mucrasp.errors import MucraspError
from mucrasp.scoring.mucrasp_method import MucraspConfig
from mucrasp.scoring.options import resolved_options
from mucrasp.scoring.score_cache import scores_cache_key
from mucrasp.scoring.scores_file import scores_lock

CLI = str(Path(sys.executable).parent / "mucrasp-deploy")


@pytest.fixture()
def inputs(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    (model / "model.safetensors").write_bytes(b"\x00" * 1000)
    calibration = write_calibration(tmp_path / "cal", with_images=True, n=2)
    return model, calibration


def _key(model, calibration, options=None):
    return scores_cache_key(model, calibration, "mucrasp", resolved_options(MucraspConfig, options or {}, "mucrasp"))


def test_key_covers_weights_images_options_and_version(inputs, monkeypatch):
    model, calibration = inputs
    base = _key(model, calibration)
    assert _key(model, calibration) == base  # deterministic
    # Same size and modification time, different bytes: a new key.
    weights = model / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\x01" + b"\x00" * 999)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed_weights = _key(model, calibration)
    assert changed_weights != base
    # An image the records name changes; the JSONL does not.
    image = calibration.parent / "img0.png"
    image.write_bytes(image.read_bytes() + b"\x00")
    changed_image = _key(model, calibration)
    assert changed_image != changed_weights
    # Method options: `--set window=16` is not the default window; spelling the default is the default.
    assert _key(model, calibration, {"window": 16}) != changed_image
    assert _key(model, calibration, {"window": 8}) == changed_image
    # The package version.
    import mucrasp

    monkeypatch.setattr(mucrasp, "__version__", "999")
    assert _key(model, calibration) != changed_image


def test_second_writer_of_a_scores_file_fails_in_one_line(tmp_path):
    out = tmp_path / "s.scores"
    with scores_lock(out):
        with pytest.raises(MucraspError, match="being written by another run"):
            with scores_lock(out):
                pass
        # Through the CLI: the second `score` run for the same --out stops at once, exit 2.
        result = subprocess.run(
            [CLI, "score", str(tmp_path), "--method", "magnitude", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and "being written by another run" in errors[0], (
            result.stderr
        )
    with scores_lock(out):  # released
        pass
    assert not out.exists()


def test_scores_are_staged_under_a_unique_name(tmp_path, tiny_model_dirs):
    """The old fixed `.NAME.partial` staging name collided between runs; a leftover there is ignored now."""
    from mucrasp.model_loading import load_model
    from mucrasp.scoring import ScoringContext, get_method
    from mucrasp.scoring.scores_file import load_scores, save_scores

    loaded = load_model(tiny_model_dirs["LlamaForCausalLM"])
    components = get_method("magnitude").components(loaded.model, loaded.adapter, ScoringContext(0.0))
    out = tmp_path / "m.scores"
    (tmp_path / ".m.scores.partial").mkdir()  # what another run's staging file would have been
    save_scores(out, components, loaded.adapter.architecture, loaded.adapter.layer_widths(loaded.model))
    assert load_scores(out)[0].method == "magnitude"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.scores.partial", "m.scores"]
