"""`mucrasp-deploy score` then `prune --scores`, end to end on a tiny Qwen2.5-VL with image records."""

import json

import pytest
from calib_helpers import save_processor, write_calibration
from typer.testing import CliRunner

from mucrasp.checkpoint import read_manifest
from mucrasp.cli import app
from mucrasp.tiny_models import save_tiny_model

VL = "Qwen2_5_VLForConditionalGeneration"


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_score_then_prune_with_scores_matches_fresh_scoring(tmp_path):
    model_dir = save_tiny_model(VL, tmp_path / "model")
    save_processor(model_dir)
    calib = write_calibration(tmp_path / "cal")
    scores = tmp_path / "scores.safetensors"
    result = run("score", model_dir, "--calib", calib, "--out", scores, "--set", "window=4")
    assert "pivot_fraction" in result.output and scores.is_file()

    # Fusion options apply at prune time, so a scores file takes them too.
    fusion = ["--set", "gamma_base=0.8", "--set", "rho=2"]
    run("prune", model_dir, "--scores", scores, *fusion, "--ratio", 0.3, "--out", tmp_path / "reused")
    run(
        "prune",
        model_dir,
        "--method",
        "mucrasp",
        "--calib",
        calib,
        "--set",
        "window=4",
        *fusion,
        "--ratio",
        0.3,
        "--out",
        tmp_path / "fresh",
    )
    reused, fresh = read_manifest(tmp_path / "reused"), read_manifest(tmp_path / "fresh")
    assert reused["method"] == fresh["method"] == "mucrasp"
    assert reused["kept_units"] == fresh["kept_units"]
    assert reused["scoring_details"]["gamma_dyn"] == pytest.approx(0.8 * 0.7**2)
    assert 0.3 <= reused["ratio_achieved"] < 0.4  # the knapsack keeps at most (1 - S)


def test_cli_errors_are_one_line(tmp_path):
    model_dir = save_tiny_model(VL, tmp_path / "model")
    save_processor(model_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": None, "prompt": "p"}) + "\n")
    result = CliRunner().invoke(app, ["score", str(model_dir), "--calib", str(bad), "--out", str(tmp_path / "s")])
    assert result.exit_code != 0 and "bad.jsonl:1" in str(result.exception)
    result = CliRunner().invoke(
        app, ["prune", str(model_dir), "--method", "mucrasp", "--ratio", "0.3", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "needs calibration" in str(result.exception)
