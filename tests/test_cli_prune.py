"""`mucrasp-deploy prune` end to end, through the installed console script, and its error paths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mucrasp import load_pruned

CLI = str(Path(sys.executable).parent / "mucrasp-deploy")


def run_cli(*args):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_prune_end_to_end(tiny_model_dirs, tmp_path):
    source = tiny_model_dirs["Qwen2_5_VLForConditionalGeneration"]
    out = tmp_path / "pruned"
    result = run_cli("prune", source, "--ratio", "0.3", "--method", "magnitude", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "Per-layer widths" in result.stdout and "prunable" in result.stdout

    manifest = json.loads((out / "pruning.json").read_text())
    assert manifest["method"] == "magnitude" and manifest["ratio"] == 0.3
    before, after = manifest["parameters"]["before"], manifest["parameters"]["after"]
    achieved = 1 - after["prunable"] / before["prunable"]
    assert achieved == pytest.approx(manifest["ratio_achieved"], abs=1e-6)
    assert 0.3 <= achieved < 0.33  # at least the ratio asked for, within a few aligned blocks
    assert after["total"] < before["total"] and after["decoder"] < before["decoder"]
    assert len(manifest["kept_units"]) == 3
    for layer, widths in zip(manifest["kept_units"], manifest["widths_after"]):
        assert len(layer["mlp_channels"]) == widths["mlp_channels"] and widths["mlp_channels"] % 8 == 0

    model = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == after["total"]


def test_prune_overwrite_replaces_output(tiny_model_dirs, tmp_path):
    source = tiny_model_dirs["LlamaForCausalLM"]
    out = tmp_path / "pruned"
    assert run_cli("prune", source, "--ratio", "0.2", "--out", out).returncode == 0
    result = run_cli("prune", source, "--ratio", "0.5", "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "pruning.json").read_text())["ratio"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def _assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["does not exist"]),
        ("not_a_model", ["not a model directory"]),
        (
            "unsupported",
            ["unsupported architecture 'GPT2LMHeadModel'", "LlamaForCausalLM", "Qwen2_5_VLForConditionalGeneration"],
        ),
        ("ratio_high", ["ratio: ", "less than or equal to 0.9"]),
        ("ratio_negative", ["ratio: ", "greater than or equal to 0"]),
        ("out_exists", ["already exists", "--overwrite"]),
    ],
)
def test_bad_input_gets_one_clear_line_and_writes_nothing(case, fragments, tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["LlamaForCausalLM"]
    out = tmp_path / "out"
    ratio = "0.3"
    if case == "missing":
        model = tmp_path / "no-such-model"
    elif case == "not_a_model":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "unsupported":
        model = tmp_path / "gpt2"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    elif case == "ratio_high":
        ratio = "0.95"
    elif case == "ratio_negative":
        ratio = "-0.1"
    elif case == "out_exists":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli("prune", model, "--ratio", ratio, "--out", out)
    _assert_one_line_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if case == "out_exists":
        assert (out / "keep.txt").read_text() == "precious"


def test_unknown_method_is_one_line(tiny_model_dirs, tmp_path):
    result = run_cli("prune", tiny_model_dirs["LlamaForCausalLM"], "--method", "nope", "--out", tmp_path / "o")
    _assert_one_line_error(result, "unknown method 'nope'", "magnitude")


def test_library_call_needs_no_cli(tiny_model_dirs, tmp_path):
    from mucrasp.pruning import PruneConfig, prune

    report = prune(PruneConfig(model=tiny_model_dirs["Qwen2ForCausalLM"], out=tmp_path / "p", ratio=0.4))
    assert report.outcome.ratio_achieved >= 0.4
    reloaded = load_pruned(report.out)
    with torch.no_grad():
        assert torch.isfinite(reloaded(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
