import json

import pytest
from calib_helpers import save_processor, write_calibration, write_image

from mucrasp.calibration import CalibrationSource, PivotConfig, load_records, summarize
from mucrasp.errors import MucraspError
from mucrasp.tiny_models import IMAGE_TOKEN_ID, build_tiny_model


def write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_records_resolve_relative_images(tmp_path):
    records = load_records(write_calibration(tmp_path))
    assert len(records) == 3 and records[0].image == tmp_path / "img0.png"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image": None, "prompt": "p"}, "missing field(s) response"),
        ({"image": None, "prompt": "p", "response": "  "}, "`response` is empty"),
        ({"image": "nope.png", "prompt": "p", "response": "r"}, "does not exist"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, bad, message):
    good = {"image": None, "prompt": "p", "response": "r"}
    path = write_lines(tmp_path / "c.jsonl", [good, bad])
    with pytest.raises(MucraspError) as caught:
        load_records(path)
    assert f"{path}:2: " in str(caught.value) and message in str(caught.value)


def test_unreadable_image_stops_the_run(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = write_lines(tmp_path / "c.jsonl", [{"image": "broken.png", "prompt": "p", "response": "r"}])
    with pytest.raises(MucraspError, match="c.jsonl:1: image .* cannot be read"):
        load_records(path)


def test_missing_processor_is_a_clear_error(tmp_path):
    calib = write_calibration(tmp_path / "cal", with_images=False)
    model = build_tiny_model("Qwen2ForCausalLM")
    with pytest.raises(MucraspError, match="no tokenizer or processor"):
        CalibrationSource(calib, tmp_path).batches(model.config, PivotConfig(), vision=False)


def test_batches_mark_response_visual_and_text_tokens(tmp_path):
    save_processor(tmp_path)
    write_image(tmp_path / "img.png")
    model = build_tiny_model("Qwen2_5_VLForConditionalGeneration")
    calib = write_calibration(tmp_path / "cal")
    batches = CalibrationSource(calib, tmp_path).batches(model.config, PivotConfig(), vision=True)
    first = batches[0]
    ids = first.input_ids[0]
    assert int(first.visual_mask.sum()) == 4 and bool((ids[first.visual_mask] == IMAGE_TOKEN_ID).all())
    assert first.inputs["mm_token_type_ids"][0].bool().equal(first.visual_mask)
    assert bool((first.text_mask == ~first.visual_mask).all())
    # Response tokens are the tail and decode back to the response text.
    assert not first.response_mask[: -int(first.response_mask.sum())].any()
    assert bool((first.pivot_mask <= first.response_mask).all()) and first.pivot_mask.any()
    summary = summarize(batches)
    assert summary.samples_without_markers == 1 and 0 < summary.pivot_fraction < 1
    model(**first.inputs)  # the inputs run through the model


def test_text_only_model_rejects_image_records(tmp_path):
    save_processor(tmp_path, vision=False)
    model = build_tiny_model("Qwen2ForCausalLM")
    with pytest.raises(MucraspError, match="calib.jsonl:1: the record has an image but the model is text-only"):
        CalibrationSource(write_calibration(tmp_path / "cal"), tmp_path).batches(
            model.config, PivotConfig(), vision=False
        )


LONG_PROMPT = "why " * 25_000  # 100 000 characters


@pytest.mark.parametrize("vision", [False, True])
def test_long_record_is_cut_to_the_model_context_with_a_warning(tmp_path, vision):
    from mucrasp.calibration import CalibrationWarning

    save_processor(tmp_path, vision=vision)
    model = build_tiny_model("Qwen2_5_VLForConditionalGeneration" if vision else "Qwen2ForCausalLM")
    image = write_image(tmp_path / "img.png") if vision else None
    calib = write_lines(
        tmp_path / "long.jsonl",
        [
            {"image": image.name if image else None, "prompt": LONG_PROMPT, "response": "First, look. Therefore: 3."},
            {"image": None, "prompt": "short", "response": "Answer: 1."},
        ],
    )
    with pytest.warns(CalibrationWarning, match=r"long.jsonl:1: \d+ tokens cut to max_seq_len 512") as caught:
        batches = CalibrationSource(calib, tmp_path).batches(model.config, PivotConfig(), vision=vision)
    assert len(caught) == 1  # the short record is left alone
    assert batches[0].input_ids.shape[1] == 512  # the tiny model's max_position_embeddings
    assert int(batches[0].response_mask.sum()) > 0  # the response survives the cut
    if vision:
        assert int(batches[0].visual_mask.sum()) == 4  # every image token survives too
    model(**batches[0].inputs)  # and the inputs still run
    # A smaller cap is configurable.
    with pytest.warns(CalibrationWarning, match="max_seq_len 64"):
        short = CalibrationSource(calib, tmp_path, max_seq_len=64).batches(model.config, PivotConfig(), vision=vision)
    assert short[0].input_ids.shape[1] == 64


def test_score_cli_warns_in_one_line_and_succeeds_on_a_long_record(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from mucrasp.tiny_models import save_tiny_model

    model_dir = save_tiny_model("Qwen2ForCausalLM", tmp_path / "model")
    save_processor(model_dir, vision=False)
    calib = write_lines(tmp_path / "long.jsonl", [{"image": None, "prompt": LONG_PROMPT, "response": "So: 2."}])
    cli = str(Path(sys.executable).parent / "mucrasp-deploy")
    result = subprocess.run(
        [
            cli,
            "score",
            str(model_dir),
            "--calib",
            str(calib),
            "--method",
            "wanda-sp",
            "--out",
            str(tmp_path / "s.scores"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cut to max_seq_len 512" in warnings[0], result.stderr
    assert not any(line.startswith("error:") for line in result.stderr.splitlines())
    assert (tmp_path / "s.scores").is_file()
