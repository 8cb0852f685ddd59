"""Evaluation metrics: exactly zero divergence for an unpruned model, positive once pruned."""

import pytest
from calib_helpers import save_processor, write_calibration

from mucrasp.evaluation.answers import final_answer
from mucrasp.evaluation.evaluate import EvalConfig, evaluate
from mucrasp.pruning import PruneConfig, prune
from mucrasp.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    dense = save_tiny_model("Qwen2_5_VLForConditionalGeneration", root / "dense")
    save_processor(dense, vision=True)
    data = write_calibration(root / "data", with_images=True, n=4)
    pruned = prune(PruneConfig(model=dense, out=root / "pruned", ratio=0.4, method="magnitude")).out
    return dense, pruned, data


def test_unpruned_model_has_zero_divergence_and_full_agreement(tiny_vl, tmp_path):
    dense, _, data = tiny_vl
    report = evaluate(EvalConfig(pruned=dense, dense=dense, data=data, max_new_tokens=12, out=tmp_path / "r.json"))
    assert report["cot_kl"] == pytest.approx(0.0, abs=1e-9)
    assert report["pivot_kl"] == pytest.approx(0.0, abs=1e-9)
    assert report["agreement"] == 1.0
    assert 0 <= report["answered_items"] <= 4 and report["agreement_answered"] in (None, 1.0)
    assert report["cot_tokens"] > 0 and report["items"] == 4
    assert report["traces_reproduced"] == 1.0 and report["shared_prefix_tokens"] > 0
    assert report["next_token_match"] == 1.0
    assert (tmp_path / "r.json").is_file()


def test_pruned_model_has_positive_divergence(tiny_vl):
    dense, pruned, data = tiny_vl
    report = evaluate(EvalConfig(pruned=pruned, dense=dense, data=data, max_new_tokens=12))
    assert report["cot_kl"] > 1e-4
    assert report["perplexity"] > 1.0
    assert report["method"] == "magnitude" and report["ratio"] == 0.4
    assert report["traces_reproduced"] < 1.0 and report["next_token_match"] < 1.0


def test_trace_overlap_counts_the_tokens_a_greedy_trace_shares_with_the_dense_one(tiny_vl):
    from mucrasp.calibration.batches import load_processor
    from mucrasp.evaluation.evaluate import _trace_overlap

    tokenizer = load_processor(tiny_vl[0], vision=True).tokenizer
    dense = "So 3 + 4 = 7 apples in total"
    n = len(tokenizer(dense, add_special_tokens=False)["input_ids"])
    shared = len(tokenizer("So 3 + 4 = ", add_special_tokens=False)["input_ids"])  # the tiny tokenizer: characters
    dense_ids = tokenizer(dense, add_special_tokens=False)["input_ids"]
    overlap = _trace_overlap([dense, "So 3 + 4 = 8 apples"], [dense_ids, dense_ids], tokenizer)
    assert overlap["traces_reproduced"] == 0.5
    assert overlap["shared_prefix_tokens"] == pytest.approx((n + shared) / 2)


def test_a_trace_that_ran_into_the_token_cap_counts_as_unanswered(tiny_vl):
    from mucrasp.calibration.batches import load_processor
    from mucrasp.evaluation.evaluate import _stopped_before

    dense, _, _ = tiny_vl
    tokenizer = load_processor(dense, vision=True).tokenizer
    trace = "So 3 + 4 = 7 apples in total, and then some more words follow here"
    length = len(tokenizer(trace, add_special_tokens=False)["input_ids"])
    assert length > 4
    assert _stopped_before(length, max_new_tokens=length + 2)
    assert not _stopped_before(length, max_new_tokens=length)
    assert not _stopped_before(length, max_new_tokens=length + 1)  # one token of slack for re-encoding


@pytest.mark.parametrize(
    "response, answer",
    [
        ("Step 1: ... Therefore the answer is 3.", "3"),
        ("Each friend gets 18 / 4, so the answer is 4.5. Done.", "4.5"),
        ("Step 2: 4 is more. Therefore the answer is Squares.", "squares"),
        ("So 3 + 4 = 7 apples in total", "7"),
        ("Yes, it is an animal", "yes, it is an animal"),
        ("", None),
    ],
)
def test_final_answer(response, answer):
    assert final_answer(response) == answer
