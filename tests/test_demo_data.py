"""The synthetic visual-reasoning generator: deterministic, self-checking, and in calibration format."""

import dataclasses
import json

import pytest

from mucrasp.calibration.records import load_records
from mucrasp.demo.dataset import split_seeds, write_split
from mucrasp.demo.scenes import TASKS, check_answer, extract_answer, make_scene
from mucrasp.demo.word_problems import split_prompts, word_problems


def test_same_seed_gives_byte_identical_records_and_images(tmp_path):
    first = write_split("calibration", tmp_path / "a", n=12)
    second = write_split("calibration", tmp_path / "b", n=12)
    assert first.read_bytes() == second.read_bytes()
    images_a = sorted((tmp_path / "a" / "images").iterdir())
    images_b = sorted((tmp_path / "b" / "images").iterdir())
    assert [p.name for p in images_a] == [p.name for p in images_b] and len(images_a) == 12
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(images_a, images_b))


def test_different_seeds_give_different_scenes():
    assert make_scene(1).image.tobytes() != make_scene(2).image.tobytes()


def test_every_task_appears_and_checks_its_own_answer():
    seen = set()
    for seed in range(600):
        scene = make_scene(seed)  # make_scene re-derives the answer from the scene's facts
        seen.add(scene.task)
        assert extract_answer(scene.response) == scene.answer
        assert "Step 1:" in scene.response and "Therefore the answer is" in scene.response
    assert seen == set(TASKS)


def test_a_wrong_answer_is_caught():
    scene = make_scene(5)
    wrong = dataclasses.replace(scene, answer="banana", response=scene.response.rsplit("is", 1)[0] + "is banana.")
    with pytest.raises(AssertionError, match="scene says"):
        check_answer(wrong)


def test_splits_never_share_a_seed():
    names = ["calibration", "test", "validation", "train"]
    ranges = {name: set(split_seeds(name, 1_000_000 if name == "train" else None)) for name in names}
    assert len(ranges["test"]) >= 500 and len(ranges["calibration"]) == 128 and len(ranges["validation"]) == 200
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not (ranges[a] & ranges[b]), (a, b)


def test_written_split_loads_as_calibration_data(tmp_path):
    path = write_split("test", tmp_path / "test", n=5)
    records = load_records(path)
    assert len(records) == 5 and all(r.image.is_file() for r in records)
    assert set(json.loads(path.read_text().splitlines()[0])) == {"image", "prompt", "response"}


def test_word_problems_are_deterministic_and_split():
    assert word_problems() == word_problems()
    assert len(word_problems()) >= 300
    calibration, test, recovery = (set(split_prompts(s)) for s in ("calibration", "test", "recovery"))
    assert (len(calibration), len(test), len(recovery)) == (128, 192, 256)
    assert not calibration & test and not recovery & (calibration | test)
    assert split_prompts("test") == word_problems()[128:]  # the recovery pool leaves the test part as it was
    with pytest.raises(ValueError, match="unknown word-problem split"):
        split_prompts("train")


def test_word_problems_know_their_true_answers():
    from mucrasp.demo.word_problems import true_answers, true_answers_of

    prompts, answers = split_prompts("test"), true_answers("test")
    # Worked by hand from the prompts themselves (None: the prompt asks for an explanation).
    expected = {
        "A train leaves at 3 o'clock and travels for 2 hours.": "5",
        "Anna is 10 years old. Her brother is 5 years older.": "15",
        "Mei reads 9 pages every day. How many pages does Mei read in 5 days?": "45",
        "Kofi walks 5 kilometers to school and back every day. How far does Kofi walk in 3 days?": "30",
        "Anna had 17 pencils and gave away 7.": "10",
        "There are 5 boxes with 8 apples in each box.": "40",
        "Tom shares 18 coins equally among 4 friends.": "4.5",
        "If all cats are animals and Lena's pet is a cat": None,
        "A rectangle is 5 meters long and 6 meters wide.": "30",
    }
    for start, answer in expected.items():
        (i,) = [i for i, p in enumerate(prompts) if p.startswith(start)]
        assert answers[i] == answer, prompts[i]
    for split in ("calibration", "recovery"):
        assert len(true_answers(split)) == len(split_prompts(split))
        assert true_answers_of(split_prompts(split)) == true_answers(split)
    assert true_answers_of(["What is 2 + 2?"]) == [None]


def test_demo_data_written_by_an_older_generator_is_rewritten(tmp_path):
    from mucrasp.demo.bundled import ensure_demo_data
    from mucrasp.demo.dataset import first_record

    stale = tmp_path / "calibration" / "calibration.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"image": null, "prompt": "old", "response": "Therefore the answer is 1."}\n')
    path = ensure_demo_data(tmp_path, ("calibration",))["calibration"]
    assert path == stale and stale.read_text().splitlines()[0] == first_record("calibration")
    assert len(stale.read_text().splitlines()) == 128


def test_a_wrong_intermediate_step_is_caught():
    scene = next(make_scene(seed) for seed in range(100) if make_scene(seed).task == "count_by_color")
    tally = scene.response.split("Step 2:")[0]
    wrong_tally = tally.replace("yellow 0", "yellow 3") if "yellow 0" in tally else tally.replace("yellow ", "yellow 9")
    wrong = dataclasses.replace(scene, response=scene.response.replace(tally, wrong_tally))
    assert wrong.response != scene.response
    with pytest.raises(AssertionError, match="does not match the scene"):
        check_answer(wrong)
