"""Self-calibration: with no `--calib`, the dense model writes its own calibration set.

The dense model answers a bundled prompt set with its own greedy chains of thought, so the scores
(and recovery's distillation) see the model's reasoning, not someone else's:
- text models: the word problems of `mucrasp.demo.word_problems` (its calibration part);
- vision-language models: the bundled scenes of `mucrasp.demo.scenes` (the calibration seed range)
  with their questions. The scenes' own written chains of thought are not used: the traces are the
  model's.

`split="recovery"` draws from a second, larger pool instead (the word problems' and scenes' recovery
parts, disjoint from calibration and test): recovery's distillation set, one trace per training sample.
On SmolLM2 at 0.3, 64 steps distilled on 256 such traces reached a validation CoT KL of 0.084 against
0.104 on the 64 pruning traces (`bench/results/recovery-smollm-traces.md`): reusing the few traces the
scores came from overfits them.

A seeded shuffle of that pool gives the calibration prompts first and the spot-check prompts after
them, so the two are disjoint by construction (and never touch the word problems' or scenes' test
parts). The result is cached under `<cache>/self-calibration/<key>/` with a key over every file of the
model folder (config, weights, tokenizer and chat template: what the traces depend on), the settings
and the package version, as the score cache does (`mucrasp.scoring.score_cache`); a second deployment
of the same model reuses it, and its content key then keys the scores too.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from mucrasp.errors import MucraspError
from mucrasp.validation import JobConfig

CALIBRATION_NAME = "calibration.jsonl"
SPOT_CHECK_NAME = "spot_check.jsonl"
INFO_NAME = "self_calibration.json"
FORMAT_VERSION = 1


def _no_progress(description: str, done: int, total: int) -> None:
    return None


class SelfCalibrationConfig(JobConfig):
    """Sizes are for a 2-core CPU: on the shared 2-core box, one batch of 16 SmolLM2-135M answers of up to
    96 tokens took about 3 CPU-minutes, so the default 48 prompts are several minutes, once per model (cached).
    Not tuned on any split; the pool has 128 prompts (word problems or scenes)."""

    samples: int = Field(32, ge=1)  # calibration prompts
    spot_check: int = Field(16, ge=0)  # held-out prompts for the chain's spot-check; 0: none written
    max_new_tokens: int = Field(96, ge=1)  # longest generated chain of thought (KV-cache greedy decoding)
    seed: int = 0
    split: Literal["calibration", "recovery"] = "calibration"  # which bundled pool the prompts come from


@dataclass(frozen=True)
class SelfCalibration:
    calibration: Path  # JSONL in the calibration format: the dense model's traces
    spot_check: Path | None  # the same format, on prompts disjoint from the calibration ones; None: none asked
    key: str
    cached: bool
    info: dict[str, Any]

    def describe(self) -> str:
        i = self.info
        where = "reused from" if self.cached else "written to"
        spot = f" and {i['spot_check_samples']} disjoint ones for the spot-check" if i["spot_check_samples"] else ""
        return (
            f"no --calib: self-calibration, the dense model's greedy answers (up to {i['max_new_tokens']} tokens) "
            f"to {i['calibration_samples']} bundled {i['prompt_set']} ({i.get('split', 'calibration')} part){spot} "
            f"(seed {i['seed']}), {where} {self.calibration.parent}"
        )


@dataclass(frozen=True)
class _Prompt:
    text: str
    scene_seed: int | None  # the scene the prompt asks about (VL), None for a text prompt


def prompt_pool(vision: bool, split: str = "calibration") -> tuple[str, list[_Prompt]]:
    """The bundled prompts a model of this kind answers: (name of the set, prompts of its `split` part)."""
    if vision:
        from mucrasp.demo.dataset import split_seeds
        from mucrasp.demo.scenes import make_scene

        return "scene questions", [_Prompt(make_scene(s).question, s) for s in split_seeds(split)]
    from mucrasp.demo.word_problems import split_prompts

    return "word problems", [_Prompt(p, None) for p in split_prompts(split)]


def pool_size(vision: bool, split: str) -> int:
    """How many prompts `prompt_pool(vision, split)` holds, without drawing the scenes."""
    if vision:
        from mucrasp.demo.dataset import SPLIT_SIZES

        return SPLIT_SIZES[split]
    from mucrasp.demo.word_problems import split_prompts

    return len(split_prompts(split))


def split_pool(pool: list[_Prompt], settings: SelfCalibrationConfig) -> tuple[list[_Prompt], list[_Prompt]]:
    """(calibration, spot-check) prompts: consecutive slices of one seeded shuffle, so never overlapping."""
    needed = settings.samples + settings.spot_check
    if needed > len(pool):
        raise MucraspError(
            f"self-calibration asks for {settings.samples} calibration and {settings.spot_check} spot-check prompts, "
            f"but the bundled {settings.split} set has {len(pool)}"
        )
    order = list(range(len(pool)))
    random.Random(settings.seed).shuffle(order)
    chosen = [pool[i] for i in order[:needed]]
    return chosen[: settings.samples], chosen[settings.samples :]


def self_calibration_key(model_dir: Path, settings: SelfCalibrationConfig, vision: bool) -> str:
    import mucrasp
    from mucrasp.scoring.score_cache import _hash_file  # the score cache's chunked file hash: one way to hash

    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        # Every file the traces depend on (weights, config, tokenizer, chat template); the model card does not.
        if path.is_file() and path.name != "README.md":
            _hash_file(digest, path, "model file")
    digest.update(
        json.dumps(
            {
                "settings": settings.model_dump(),
                "vision": vision,
                "format": FORMAT_VERSION,
                "version": mucrasp.__version__,
            },
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()[:24]


def self_calibrate(
    model_dir: str | Path,
    cache_dir: str | Path | None = None,
    settings: SelfCalibrationConfig | None = None,
    loaded: Any = None,
    progress: Callable[[str, int, int], None] = _no_progress,
    load: Callable[[], Any] | None = None,
) -> SelfCalibration:
    """The model's own calibration and spot-check sets, generated once per (model content, settings).

    `loaded` is the model already in memory (`mucrasp.model_loading.LoadedModel`), or `load` a function that
    returns it (the chain's, which keeps one copy for scoring too); neither is used when the cache hits.
    Records whose answer decodes to nothing are dropped (a trace with no tokens cannot calibrate); `info`
    says how many were kept.
    """
    from mucrasp.atomic_io import atomic_directory
    from mucrasp.model_loading import read_model_config
    from mucrasp.scoring.score_cache import default_cache_dir

    settings = settings or SelfCalibrationConfig()
    model_dir = Path(model_dir)
    _, adapter = read_model_config(model_dir)
    vision = adapter.is_vision_language
    key = self_calibration_key(model_dir, settings, vision)
    folder = Path(cache_dir or default_cache_dir()) / "self-calibration" / key
    spot_check = folder / SPOT_CHECK_NAME if settings.spot_check else None
    if (folder / INFO_NAME).is_file():
        info = json.loads((folder / INFO_NAME).read_text())
        return SelfCalibration(folder / CALIBRATION_NAME, spot_check, key, True, info)

    from mucrasp.calibration.batches import load_processor

    # Before the model loads: a model without a tokenizer cannot answer, and says so in one line.
    try:
        processor = load_processor(model_dir, vision)
    except MucraspError as exc:
        raise MucraspError(f"no --calib, and self-calibration cannot run: {exc} (pass --calib FILE)") from None
    prompt_set, pool = prompt_pool(vision, settings.split)
    calibration, spot = split_pool(pool, settings)
    if loaded is None and load is not None:
        loaded = load()
    if loaded is None:
        from mucrasp.model_loading import load_model

        loaded = load_model(model_dir)
    with atomic_directory(folder, overwrite=True) as staging:
        counts = {SPOT_CHECK_NAME: 0}
        for name, prompts in ((CALIBRATION_NAME, calibration), (SPOT_CHECK_NAME, spot)):
            if not prompts:
                continue
            lines = _answer(loaded.model, processor, prompts, vision, staging, settings, progress, name)
            if not lines:
                raise MucraspError(f"self-calibration: the model at {model_dir} answered every prompt with nothing")
            (staging / name).write_text("\n".join(lines) + "\n")
            counts[name] = len(lines)
        info = {
            "format_version": FORMAT_VERSION,
            "model": str(model_dir.resolve()),
            "key": key,
            "prompt_set": prompt_set,
            "split": settings.split,
            "calibration_samples": counts[CALIBRATION_NAME],
            "spot_check_samples": counts[SPOT_CHECK_NAME],
            "calibration_requested": settings.samples,
            "spot_check_requested": settings.spot_check,
            "max_new_tokens": settings.max_new_tokens,
            "seed": settings.seed,
            "decoding": "greedy",
        }
        # Written last: its presence is what marks the folder complete (the rename makes that atomic anyway).
        (staging / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return SelfCalibration(folder / CALIBRATION_NAME, spot_check, key, False, info)


def _answer(model, processor, prompts, vision, staging: Path, settings, progress, label) -> list[str]:
    from mucrasp.calibration.records import CalibrationRecord
    from mucrasp.evaluation.generation import greedy_responses

    records = []
    for i, prompt in enumerate(prompts):
        image = None
        if prompt.scene_seed is not None:
            from mucrasp.demo.scenes import make_scene

            image = Path("images") / f"scene-{prompt.scene_seed}.png"
            (staging / "images").mkdir(exist_ok=True)
            make_scene(prompt.scene_seed).image.save(staging / image, format="PNG")
        records.append(CalibrationRecord(staging / image if image else None, prompt.text, "", f"{label}:{i}"))

    def step(description: str, done: int, total: int) -> None:
        progress(f"self-calibration ({label.split('.')[0]})", done, total)

    responses = greedy_responses(model, processor, records, vision, settings.max_new_tokens, progress=step)
    return [
        json.dumps({"image": str(r.image.relative_to(staging)) if r.image else None, "prompt": r.prompt, "response": t})
        for r, t in zip(records, responses)
        if t.strip()
    ]
