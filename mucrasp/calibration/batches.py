"""Model inputs from calibration records, built with the model's own chat template and processor.

Each sample is one sequence: the chat-formatted prompt (with the image, if any, expanded by the
processor) followed by the response tokens. The prompt and the response are tokenised separately
so that the boundary between them, and the character span of every response token (needed to
find pivots), is exact.

Sequences longer than `max_seq_len` tokens (default: the model's `max_position_embeddings`) are cut,
with a `CalibrationWarning` naming the record: the response keeps its first tokens (at least half
the budget when the prompt is long), and the prompt loses tokens from its middle, after its last
image token, so the image and the end of the chat template stay whole.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mucrasp.calibration.pivots import PivotConfig, find_pivots
from mucrasp.calibration.records import CalibrationRecord, load_records
from mucrasp.errors import MucraspError


@dataclass
class CalibrationBatch:
    """One sample: model kwargs plus per-position masks (all of shape [seq])."""

    inputs: dict[str, torch.Tensor]
    response_mask: torch.Tensor  # tokens in the loss
    pivot_mask: torch.Tensor  # response tokens inside a pivot window
    visual_mask: torch.Tensor  # image/video placeholder tokens
    text_mask: torch.Tensor  # every other token
    pivots_from_markers: bool = True

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


@dataclass
class CalibrationSummary:
    samples: int
    response_tokens: int
    pivot_window_tokens: int
    samples_without_markers: int
    visual_tokens: int

    @property
    def pivot_fraction(self) -> float:
        return self.pivot_window_tokens / max(self.response_tokens, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "response_tokens": self.response_tokens,
            "pivot_window_tokens": self.pivot_window_tokens,
            "pivot_fraction": round(self.pivot_fraction, 6),
            "samples_without_markers": self.samples_without_markers,
            "visual_tokens": self.visual_tokens,
        }


def summarize(batches: list[CalibrationBatch]) -> CalibrationSummary:
    return CalibrationSummary(
        samples=len(batches),
        response_tokens=sum(int(b.response_mask.sum()) for b in batches),
        pivot_window_tokens=sum(int(b.pivot_mask.sum()) for b in batches),
        samples_without_markers=sum(not b.pivots_from_markers for b in batches),
        visual_tokens=sum(int(b.visual_mask.sum()) for b in batches),
    )


def load_processor(model_dir: str | Path, vision: bool) -> Any:
    """The model folder's processor (vision-language) or tokenizer (text-only)."""
    from transformers import AutoProcessor, AutoTokenizer

    model_dir = Path(model_dir)
    has_tokenizer = any(
        (model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )
    if not has_tokenizer:
        raise MucraspError(f"{model_dir} has no tokenizer or processor files; calibration needs them to build inputs")
    try:
        if vision:
            return AutoProcessor.from_pretrained(model_dir)
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise MucraspError(f"cannot load the processor of {model_dir}: {str(exc).splitlines()[0]}") from None


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _messages(record: CalibrationRecord) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if record.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": record.prompt})
    return [{"role": "user", "content": content}]


def _prompt_inputs(record: CalibrationRecord, processor: Any, vision: bool) -> dict[str, torch.Tensor]:
    tokenizer = _tokenizer_of(processor)
    if getattr(processor, "chat_template", None) is None and getattr(tokenizer, "chat_template", None) is None:
        raise MucraspError(f"{record.where}: the model's tokenizer has no chat template")
    if not vision:
        if record.image is not None:
            raise MucraspError(f"{record.where}: the record has an image but the model is text-only")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": record.prompt}], add_generation_prompt=True, tokenize=False
        )
        return dict(tokenizer(text, add_special_tokens=False, return_tensors="pt"))
    from PIL import Image

    text = processor.apply_chat_template(_messages(record), add_generation_prompt=True, tokenize=False)
    images = None
    if record.image is not None:
        with Image.open(record.image) as image:
            images = [image.convert("RGB")]
    return dict(processor(text=[text], images=images, return_tensors="pt"))


class CalibrationWarning(UserWarning):
    """A calibration record was changed to fit (e.g. cut to `max_seq_len`); the run goes on."""


def model_max_seq_len(model_config: Any) -> int | None:
    """The model's context (`max_position_embeddings`, of the text config for VL models)."""
    for config in (getattr(model_config, "text_config", None), model_config):
        value = getattr(config, "max_position_embeddings", None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _fit(
    record: CalibrationRecord,
    prompt_ids: torch.Tensor,
    response_ids: torch.Tensor,
    visual_token_ids: tuple[int, ...],
    max_seq_len: int | None,
) -> tuple[torch.Tensor, int]:
    """Prompt ids cut to fit, and how many response tokens to keep (see the module docstring)."""
    prompt_len, response_len = prompt_ids.shape[1], response_ids.shape[1]
    if max_seq_len is None or prompt_len + response_len <= max_seq_len:
        return prompt_ids, response_len
    keep_response = min(response_len, max(max_seq_len - prompt_len, max_seq_len // 2, 1))
    keep_prompt = max_seq_len - keep_response
    if keep_prompt < prompt_len:
        visual = (
            torch.isin(prompt_ids[0], torch.tensor(visual_token_ids, dtype=torch.long)) if visual_token_ids else None
        )
        head = int(visual.nonzero().max()) + 1 if visual is not None and bool(visual.any()) else 0
        if head >= keep_prompt:
            raise MucraspError(
                f"{record.where}: the image alone takes {head} tokens, more than max_seq_len {max_seq_len} allows"
            )
        tail = keep_prompt - head
        index = torch.cat([torch.arange(head), torch.arange(prompt_len - tail, prompt_len)])
        prompt_ids = prompt_ids[:, index]
    warnings.warn(
        f"{record.where}: {prompt_len + response_len} tokens cut to max_seq_len {max_seq_len} "
        f"(prompt {prompt_len} -> {prompt_ids.shape[1]}, response {response_len} -> {keep_response})",
        CalibrationWarning,
        stacklevel=3,
    )
    return prompt_ids, keep_response


def build_batch(
    record: CalibrationRecord,
    processor: Any,
    pivot_config: PivotConfig,
    vision: bool,
    visual_token_ids: tuple[int, ...],
    max_seq_len: int | None = None,
) -> CalibrationBatch:
    tokenizer = _tokenizer_of(processor)
    prompt = _prompt_inputs(record, processor, vision)
    encoded = tokenizer(record.response, add_special_tokens=False, return_offsets_mapping=True)
    response_ids = torch.tensor([encoded["input_ids"]], dtype=torch.long)
    if response_ids.shape[1] == 0:
        raise MucraspError(f"{record.where}: `response` has no tokens")
    prompt_ids, keep_response = _fit(record, prompt["input_ids"].long(), response_ids, visual_token_ids, max_seq_len)
    response_ids = response_ids[:, :keep_response]
    offsets = [tuple(o) for o in encoded["offset_mapping"]][:keep_response]
    prompt_len = prompt_ids.shape[1]
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    seq = input_ids.shape[1]
    inputs = {
        key: value for key, value in prompt.items() if key not in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    inputs["input_ids"] = input_ids
    inputs["attention_mask"] = torch.ones(1, seq, dtype=torch.long)
    visual = (
        torch.isin(input_ids[0], torch.tensor(visual_token_ids, dtype=torch.long))
        if visual_token_ids
        else torch.zeros(seq, dtype=torch.bool)
    )
    if vision:
        # Qwen-VL's M-RoPE finds the image runs from this (1 at image tokens).
        inputs["mm_token_type_ids"] = visual.long()[None, :]
    pivots = find_pivots(record.response, offsets, pivot_config)
    response_mask = torch.zeros(seq, dtype=torch.bool)
    response_mask[prompt_len:] = True
    pivot_mask = torch.zeros(seq, dtype=torch.bool)
    pivot_mask[prompt_len:] = pivots.mask
    return CalibrationBatch(inputs, response_mask, pivot_mask, visual, ~visual, pivots.from_markers)


def _visual_token_ids(config: Any) -> tuple[int, ...]:
    ids = [getattr(config, name, None) for name in ("image_token_id", "video_token_id")]
    return tuple(int(i) for i in ids if i is not None)


def build_batches(
    records: list[CalibrationRecord],
    processor: Any,
    model_config: Any,
    pivot_config: PivotConfig,
    vision: bool,
    max_seq_len: int | None = None,
) -> list[CalibrationBatch]:
    """`max_seq_len` None: the model's context (`model_max_seq_len`)."""
    visual_ids = _visual_token_ids(model_config)
    limit = max_seq_len or model_max_seq_len(model_config)
    return [build_batch(r, processor, pivot_config, vision, visual_ids, limit) for r in records]


@dataclass
class CalibrationSource:
    """A calibration file plus the model folder whose processor turns it into inputs.

    Methods that need data receive this and call `batches()` with their own pivot settings, so
    the file is read in one place whatever command started the run.
    """

    path: Path
    model_dir: Path
    max_samples: int | None = None
    max_seq_len: int | None = None  # None: the model's context

    def batches(self, model_config: Any, pivot_config: PivotConfig, vision: bool) -> list[CalibrationBatch]:
        records = load_records(self.path, self.max_samples)
        processor = load_processor(self.model_dir, vision)
        return build_batches(records, processor, model_config, pivot_config, vision, self.max_seq_len)


def resolve_batches(
    calibration: Any, model_config: Any, pivot_config: PivotConfig, vision: bool, method: str
) -> list[CalibrationBatch]:
    """Batches from a CalibrationSource (the CLI) or ready-made ones (Python callers)."""
    if calibration is None:
        raise MucraspError(f"method {method!r} needs calibration data (--calib FILE)")
    if isinstance(calibration, CalibrationSource):
        return calibration.batches(model_config, pivot_config, vision)
    if isinstance(calibration, (list, tuple)) and all(isinstance(b, CalibrationBatch) for b in calibration):
        return list(calibration)
    raise MucraspError(f"method {method!r}: calibration must be a calibration file, got {type(calibration).__name__}")
