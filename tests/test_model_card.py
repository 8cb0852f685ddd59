"""The model card carries what was measured: an eval report and a smoke report, when they exist."""

from __future__ import annotations

from export_helpers import make_pruned_checkpoint, uniform_plan

from mucrasp.export.model_card import build_model_card
from mucrasp.export.vllm_checkpoint import export_vllm

EVAL = {
    "pruned": "p",
    "dense": "d",
    "data": "test.jsonl",
    "items": 4,
    "accuracy": 0.75,
    "dense_accuracy": 1.0,
    "agreement": 0.5,
    "cot_kl": 0.123456,
}
SMOKE = {
    "created": "2026-12-02T00:00:00+00:00",
    "host": {"machine": "x86_64", "cpus": 2},
    "backend": "transformers",
    "throughput": {"tokens_per_s": 12.34, "ttft_p50_s": 0.5, "latency_p50_s": 2.0},
    "memory": {"peak_gb": 0.7345, "kind": "rss", "what": "peak RSS of the serving process tree"},
    "spot_check": {"kind": "accuracy", "score": 0.9375, "matched": 15, "records": 16},
    "passed": False,
    "failures": ["tokens_per_s = 12.34 (needs >= 1000)"],
    "planned_vs_measured": {
        "profile": "a10g",
        "ratio": 0.0,
        "tokens_per_s": {"planned": 46808.8, "target": 1000.0, "measured": 12.34, "enforced": True, "note": ""},
        "memory_gb": {"planned": 1.5831, "limit": 21.6, "measured": 0.7345, "kind": "rss"},
        "max_model_len": {"planned": 4096, "served": 512, "note": "capped at the model's max_position_embeddings"},
        "concurrency": {"planned": 2, "served": 1, "note": "the transformers backend runs batch 1"},
    },
}


def _card(**kwargs) -> str:
    return build_model_card({"ratio": 0.3}, "Arch", [(8, 2)], None, False, ["notes"], **kwargs)


def test_card_without_measurements_says_what_to_run():
    card = _card()
    assert "Not measured yet" in card and "mucrasp-deploy eval" in card and "Not run yet" in card


def test_card_shows_eval_and_smoke_figures():
    card = _card(quality=EVAL, smoke=SMOKE)
    assert "Not measured yet" not in card and "Not run yet" not in card
    assert "| accuracy (pruned) | 0.7500 |" in card and "| accuracy (dense) | 1.0000 |" in card
    assert "| answer agreement with the dense model | 0.5000 |" in card and "0.1235" in card
    assert "`test.jsonl`" in card
    assert "| output tokens/s | 46,809 (target 1000) | 12.3 |" in card
    assert "| memory (GB) | 1.583 (limit 21.6) | 0.73 (rss) |" in card
    assert "| context (tokens) | 4096 | 512 |" in card and "| concurrency | 2 | 1 |" in card
    assert "capped at the model's" in card and "pass/fail threshold" in card
    assert "FAILED on transformers" in card and "FAILED: tokens_per_s" in card
    assert "accuracy 0.938 (15/16)" in card


def test_card_with_smoke_only_names_the_spot_check_as_its_quality_figure():
    card = _card(smoke=SMOKE)
    assert "Not evaluated with `mucrasp-deploy eval`" in card and "accuracy 0.938 on 16 items" in card


def test_export_writes_the_measured_card_or_leaves_it_to_the_chain(tmp_path):
    pruned = tmp_path / "pruned"
    make_pruned_checkpoint("Qwen2_5_VLForConditionalGeneration", pruned, uniform_plan())
    exported = export_vllm(pruned, tmp_path / "served", quality=EVAL, smoke=SMOKE)
    card = (exported.out / "README.md").read_text()
    assert "| accuracy (pruned) | 0.7500 |" in card and "| 12.3 |" in card and "Per-layer widths" in card
    later = export_vllm(pruned, tmp_path / "chain-export", write_card=False)
    assert not (later.out / "README.md").exists()
    assert later.card(EVAL, SMOKE) == card.replace("./served", "./chain-export")
