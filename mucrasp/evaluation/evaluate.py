"""`evaluate`: a pruned model against its dense original on held-out records (what `eval` calls).

Steps: the dense model writes greedy traces for the test prompts (or they are read from a traces
file made earlier); divergence metrics are computed teacher-forced on those traces; the pruned
model answers greedily, and its answers are compared with the dense ones (agreement) and, for data
with ground truth such as the demo scenes, with the true answers (accuracy).

The model under test is a torch checkpoint (pruned, recovered) or an `export onnx` folder, fp32 to
int4, which ONNX Runtime runs (`mucrasp.export.onnx_causal_lm`): the same records and the same
metrics either way. An export whose vision graph was traced at one image size sees every image
resized to it, and so does the dense model, like against like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import Field

from mucrasp.calibration.pivots import PivotConfig
from mucrasp.calibration.records import CalibrationRecord, load_records
from mucrasp.devices import DeviceSpec, DtypeSpec
from mucrasp.errors import MucraspError
from mucrasp.evaluation.answers import final_answer
from mucrasp.validation import JobConfig

if TYPE_CHECKING:
    ProgressCallback = Callable[[str, int, int], None]


def _no_progress(description: str, done: int, total: int) -> None:
    return None


class EvalConfig(JobConfig):
    pruned: Path
    dense: Path
    data: Path  # calibration-format JSONL of held-out prompts (its responses: ground truth, if any)
    limit: int | None = Field(None, ge=1)  # only the first N records; None: all
    ground_truth: bool = False  # the data's responses end in true answers (the demo scenes do)
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(16, ge=1)
    out: Path | None = None  # write the report as JSON here
    overwrite: bool = False  # replace an existing `out`
    pivot: PivotConfig = Field(default_factory=PivotConfig)
    device: DeviceSpec = "auto"  # both models run here (mucrasp.devices)
    dtype: DtypeSpec = "auto"  # the dense model's; the pruned one runs in the same dtype, like against like


@dataclass
class DenseReference:
    """The dense model's greedy traces for a set of prompts: computed once, reused per pruned model."""

    records: list[CalibrationRecord]  # prompts with the dense traces as responses
    truths: list[str | None]  # the data's own final answers (ground truth where it has it)
    trace_ids: list[list[int]]  # each dense trace encoded once, for the pruned traces' overlap with it
    # Per trace: did the dense model stop on its own before max_new_tokens? A trace cut at the cap has no
    # final answer, only a last number, so agreement on it means reproducing the text up to the cap.
    finished: list[bool] | None = None


def dense_reference(
    dense,
    processor,
    data_records: list[CalibrationRecord],
    vision: bool,
    config: EvalConfig,
    progress: ProgressCallback = _no_progress,
) -> DenseReference:
    from mucrasp.evaluation.generation import greedy_responses

    traces = greedy_responses(
        dense, processor, data_records, vision, config.max_new_tokens, config.batch_size, progress
    )
    records = [
        CalibrationRecord(r.image, r.prompt, trace if trace else " ", f"{r.where} (dense trace)")
        for r, trace in zip(data_records, traces)
    ]
    trace_ids = [_encoded(trace, processor) for trace in traces]
    return DenseReference(
        records,
        [final_answer(r.response) for r in data_records],
        trace_ids,
        [_stopped_before(len(ids), config.max_new_tokens) for ids in trace_ids],
    )


def _encoded(text: str, processor) -> list[int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _stopped_before(trace_tokens: int, max_new_tokens: int) -> bool:
    """Whether a decoded greedy trace of `trace_tokens` tokens, re-encoded, ended before the token cap.
    Re-encoding the stripped text can lose a whitespace token, so a trace within one token of the cap
    counts as cut."""
    return trace_tokens < max_new_tokens - 1


def compare(
    dense,
    pruned,
    processor,
    reference: DenseReference,
    vision: bool,
    config: EvalConfig,
    progress: ProgressCallback = _no_progress,
) -> dict[str, Any]:
    from mucrasp.calibration.batches import build_batches
    from mucrasp.evaluation.generation import greedy_responses
    from mucrasp.evaluation.metrics import DivergenceTotals, accumulate_divergence

    batches = build_batches(reference.records, processor, dense.config, config.pivot, vision)
    totals = DivergenceTotals()
    for i, batch in enumerate(batches):
        accumulate_divergence(dense, pruned, batch, totals)
        progress("CoT divergence", i + 1, len(batches))
    responses = greedy_responses(
        pruned, processor, reference.records, vision, config.max_new_tokens, config.batch_size, progress
    )
    answers = [final_answer(r) for r in responses]
    dense_answers = [final_answer(r.response) for r in reference.records]
    metrics: dict[str, Any] = {"items": len(batches), **totals.as_metrics()}
    metrics["agreement"] = sum(a == d for a, d in zip(answers, dense_answers)) / len(answers)
    metrics.update(_trace_overlap(responses, reference.trace_ids, processor))
    if reference.finished is not None:
        answered = [a == d for a, d, f in zip(answers, dense_answers, reference.finished) if f]
        metrics["answered_items"] = len(answered)
        metrics["agreement_answered"] = sum(answered) / len(answered) if answered else None
    if config.ground_truth:
        # Over the items that have a true answer (a word problem asking for an explanation has none).
        scored = [i for i, t in enumerate(reference.truths) if t is not None]
        metrics["accuracy"] = sum(answers[i] == reference.truths[i] for i in scored) / max(len(scored), 1)
        metrics["dense_accuracy"] = sum(dense_answers[i] == reference.truths[i] for i in scored) / max(len(scored), 1)
    return metrics


def _trace_overlap(responses: list[str], dense_trace_ids: list[list[int]], processor) -> dict[str, float]:
    """How far the pruned model's greedy traces follow the dense ones: the mean number of leading tokens
    they share, and the share reproduced token for token. Agreement on a small model's answers mostly
    measures the latter, since its final answer is wherever its trace happens to end up."""
    shared, reproduced = [], 0
    for response, theirs in zip(responses, dense_trace_ids):
        ours = _encoded(response, processor)
        n = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        shared.append(n)
        reproduced += ours == theirs
    return {"shared_prefix_tokens": sum(shared) / len(shared), "traces_reproduced": reproduced / len(shared)}


def check_report_path(out: Path | None, overwrite: bool) -> None:
    if out is not None and Path(out).exists() and not overwrite:
        raise MucraspError(f"{out} already exists (pass --overwrite to replace it)")
    if out is not None:
        from mucrasp.atomic_io import check_writable

        check_writable(Path(out))  # before the evaluation runs, not after


def is_onnx_export(folder: Path) -> bool:
    from mucrasp.export.onnx_manifest import MANIFEST_NAME

    return (Path(folder) / MANIFEST_NAME).is_file()


def _check_torch_loadable(folder: Path) -> None:
    """A vLLM compressed-tensors export holds int8/fp8/int4 weights only vLLM's kernels run: one clear line."""
    from mucrasp.checkpoint import read_json_file

    config_file = Path(folder) / "config.json"
    quantization = read_json_file(config_file).get("quantization_config") if config_file.is_file() else None
    if quantization:
        raise MucraspError(
            f"{folder} is a {quantization.get('quant_method', 'quantized')} checkpoint for vLLM, which eval cannot "
            "run: evaluate the pruned checkpoint it was exported from, or an ONNX export of it "
            "(`export onnx --weights int8|int4`), and use `mucrasp-deploy smoke` for the vLLM export's "
            "tokens/s and spot-check"
        )


def _at_image_size(records: list[CalibrationRecord], size: int | None, folder: Path) -> list[CalibrationRecord]:
    """`records` with every image resized to `size` pixels a side (copies in `folder`); unchanged for None."""
    if size is None:
        return records
    from PIL import Image

    resized = []
    for i, record in enumerate(records):
        if record.image is None:
            resized.append(record)
            continue
        with Image.open(record.image) as image:
            image = image.convert("RGB")
        path = folder / f"{i}.png"
        (image if image.size == (size, size) else image.resize((size, size))).save(path)
        resized.append(CalibrationRecord(path, record.prompt, record.response, record.where))
    return resized


def evaluate(config: EvalConfig, progress: ProgressCallback = _no_progress) -> dict[str, Any]:
    import tempfile

    from mucrasp.atomic_io import write_json_atomic
    from mucrasp.calibration.batches import load_processor
    from mucrasp.checkpoint import read_json_file
    from mucrasp.devices import resolve_device
    from mucrasp.model_loading import load_model

    check_report_path(config.out, config.overwrite)
    resolve_device(config.device)  # `--device cuda` without CUDA: one line before any model loads
    onnx = is_onnx_export(config.pruned)
    if not onnx:
        _check_torch_loadable(config.pruned)
    manifest = Path(config.pruned) / "pruning.json"
    # Read before the models run: a bad file is one line naming it, not a traceback after the evaluation.
    pruning = read_json_file(manifest) if manifest.is_file() else None
    data_records = load_records(config.data, config.limit)
    dense = load_model(config.dense, dtype=config.dtype, device=config.device)
    vision = dense.adapter.is_vision_language
    processor = load_processor(config.dense, vision)
    runtime: dict[str, Any] = {}
    compare_config = config
    if onnx:
        from mucrasp.export.onnx_causal_lm import OnnxCausalLM

        served = OnnxCausalLM(config.pruned, dense.model.config)
        runtime = {"runtime": "onnxruntime", "weights": served.weights}
        if vision:  # OnnxCausalLM answers one prompt with images at a time
            compare_config = config.model_copy(update={"batch_size": 1})
    else:
        first = next(dense.model.parameters())
        served = load_model(config.pruned, dtype=first.dtype, device=first.device).model
    with tempfile.TemporaryDirectory(prefix="mucrasp-eval-images-") as images:
        data_records = _at_image_size(data_records, getattr(served, "image_size", None), Path(images))
        reference = dense_reference(dense.model, processor, data_records, vision, config, progress)
        metrics = compare(dense.model, served, processor, reference, vision, compare_config, progress)
    report = {
        "pruned": str(config.pruned),
        "dense": str(config.dense),
        "data": str(config.data),
        **runtime,
        **metrics,
    }
    if pruning is not None:
        report.update(method=pruning.get("method"), ratio=pruning.get("ratio"))
    if config.out is not None:
        write_json_atomic(config.out, report)
    return report
