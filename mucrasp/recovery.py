"""Recovery after pruning: distil the dense model into the pruned one, on the dense model's own traces.

The recipe is Minitron's logit distillation (ModelOpt `LogitsDistillationLoss`): for every response
token of a calibration trace, the student (pruned) and the teacher (dense) predict it from the same
prefix, and the loss is `T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T))`, averaged over
the response tokens of a step. Prompt tokens are not in the loss, as in scoring.

Three parts, each usable alone:
- the loss math, pure tensors: `distillation_loss`, `response_logits`, `mean_distillation_loss`;
- the loop, on models in memory: `distil(student, teacher, batches, settings)` trains the student in
  place (full-parameter, or LoRA adapters merged back into the weights at the end, so the widths and
  the parameter set never change) and returns the loss of every step;
- the job, on folders: `recover(RecoverConfig(...))` loads a pruned checkpoint and its dense model,
  distils, and writes a plain pruned checkpoint through `mucrasp.checkpoint.save_pruned`, with
  `pruning.json` gaining a `recovery` entry. `mucrasp-deploy recover` and the chain's
  `--recover-steps` call it.

Interrupted runs resume: every `checkpoint_every` steps the trainable tensors, the optimizer state and
the losses so far are written atomically to `.<out>.recover-state/state.pt` beside the output. A
later run with the same inputs and settings continues from the last saved step; the data order is a
function of (seed, step) alone, so the resumed run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import Field

from mucrasp.calibration.self_calibration import SelfCalibrationConfig
from mucrasp.devices import DeviceSpec, DtypeSpec
from mucrasp.errors import MucraspError
from mucrasp.validation import JobConfig, field_default

if TYPE_CHECKING:
    import torch

    from mucrasp.calibration.batches import CalibrationBatch

ProgressCallback = Callable[[str, int, int], None]
LossCallback = Callable[[int, float], None]  # (steps done, that step's loss)
STATE_NAME = "state.pt"
STATE_FORMAT = 1


def _no_progress(description: str, done: int, total: int) -> None:
    return None


class RecoverySettings(JobConfig):
    """How to distil; T = 1 follows Minitron's KD, the lr was chosen on SmolLM2's validation traces.

    `bench/results/recovery-smollm.md`: at 48 steps lr 3e-5 reached the lowest validation CoT KL; 1e-4
    (LLM-Pruner's recovery lr) first raised it above the reconstructed model's."""

    steps: int = Field(50, ge=1)
    lr: float = Field(3e-5, gt=0)
    temperature: float = Field(1.0, gt=0)
    # 0: full-parameter training of the decoder; r > 0: LoRA of rank r on every attention and MLP
    # projection of the decoder, merged back into the weights at the end.
    lora_rank: int = Field(0, ge=0)
    lora_alpha: float = Field(16.0, gt=0)
    batch_size: int = Field(4, ge=1)  # calibration samples per optimizer step (accumulated one at a time)
    seed: int = 0
    checkpoint_every: int = Field(10, ge=1)  # steps between resumable state files


class RecoverConfig(RecoverySettings):
    pruned: Path
    dense: Path
    out: Path
    # None: self-calibration on the bundled recovery prompts (`recovery_traces`), not the pruning set's
    calibration: Path | None = None
    trace_max_new_tokens: int = Field(field_default(SelfCalibrationConfig, "max_new_tokens"), ge=1)
    max_seq_len: int | None = Field(None, ge=1)  # calibration sequences are cut to this; None: the model's context
    cache_dir: Path | None = None  # for self-calibration; None: $MUCRASP_CACHE_DIR or ~/.cache/mucrasp
    overwrite: bool = False
    device: DeviceSpec = "auto"  # where both models run (mucrasp.devices)
    # The teacher's dtype. The student always trains in fp32 (AdamW steps of lr ~1e-5 round away in bf16)
    # and is saved in the pruned checkpoint's own dtype.
    dtype: DtypeSpec = "auto"


# ---- the loss ---------------------------------------------------------------------------------------------


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Per-row `T² · KL(p_teacher ‖ p_student)` with `p = softmax(logits / T)`, rows being token positions.

    The T² keeps the gradient's scale independent of T (Hinton et al.; Minitron uses it too).
    Computed in fp32 whatever the models' dtype, so a bf16 student does not lose the small differences.
    """
    import torch.nn.functional as F

    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1) * temperature**2


def response_logits(model, batch: CalibrationBatch) -> torch.Tensor:
    """Logits at the positions that predict the response tokens ([tokens, vocab]): position t-1 predicts t."""
    inputs = {name: value.to(model.device) for name, value in batch.inputs.items()}
    targets = batch.response_mask[1:].to(model.device)
    return model(**inputs).logits[0, :-1][targets]


def mean_distillation_loss(student, teacher, batches: Sequence[CalibrationBatch], temperature: float = 1.0) -> float:
    """The distillation loss over every response token of `batches`, without gradients."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            kl = distillation_loss(response_logits(student, batch), response_logits(teacher, batch), temperature)
            total += float(kl.sum())
            tokens += kl.numel()
    return total / max(tokens, 1)


# ---- LoRA, hand-written (peft is not a dependency): a weight parametrisation, merged back at the end -------


def _lora_parametrization_class():
    import torch
    from torch import nn

    class LoRA(nn.Module):
        """`W + (alpha / r) · B A`; B starts at zero, so training starts from the pruned model itself."""

        def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator):
            super().__init__()
            out_features, in_features = weight.shape
            a = torch.empty(rank, in_features, dtype=weight.dtype)
            # Kaiming-uniform as in LoRA's reference code, drawn from the run's seed.
            bound = 1.0 / in_features**0.5
            a.uniform_(-bound, bound, generator=generator)
            self.lora_a = nn.Parameter(a.to(weight.device))
            self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
            self.scale = alpha / rank

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight + self.scale * (self.lora_b @ self.lora_a)

    return LoRA


def _decoder_linears(model, adapter) -> list[tuple[str, Any]]:
    linears = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        for name, linear in zip(("q", "k", "v", "o"), adapter.attention_projections(layer)):
            linears.append((f"layer{i}.{name}", linear))
        for name, linear in zip(("gate", "up", "down"), adapter.mlp_projections(layer)):
            linears.append((f"layer{i}.{name}", linear))
    return linears


def add_lora(model, adapter, rank: int, alpha: float, seed: int) -> dict[str, Any]:
    """Freeze the model and attach rank-`rank` adapters to the decoder's projections; returns them by name."""
    import torch
    from torch.nn.utils import parametrize

    lora_class = _lora_parametrization_class()
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = {}
    for name, linear in _decoder_linears(model, adapter):
        module = lora_class(linear.weight.detach(), rank, alpha, generator)
        parametrize.register_parametrization(linear, "weight", module)
        adapters[name] = module
    return adapters


def merge_lora(model, adapter) -> None:
    """Fold every adapter into its weight: the model is a plain one again, with its widths unchanged."""
    from torch.nn.utils import parametrize

    for _, linear in _decoder_linears(model, adapter):
        if parametrize.is_parametrized(linear, "weight"):
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)


# ---- the loop ---------------------------------------------------------------------------------------------


@dataclass
class DistilResult:
    losses: list[float]  # one per step, including the steps a resumed run took before the interruption
    resumed_from: int | None  # the step a saved state let this run start at, if any
    seconds: float  # wall time of this run's steps (not of the interrupted run's)
    trained_parameters: int
    samples: int

    @property
    def seconds_per_step(self) -> float:
        taken = len(self.losses) - (self.resumed_from or 0)
        return self.seconds / max(taken, 1)


def step_samples(step: int, batch_size: int, samples: int, seed: int) -> list[int]:
    """The sample indices of optimizer step `step` (0-based): epochs of seeded permutations, read in order.
    A function of its arguments alone, so a resumed run takes exactly the batches the interrupted one would."""
    import torch

    picks = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, samples)
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        picks.append(int(order[offset]))
    return picks


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save streamed into `atomic_file`: a state file is whole or absent (a full-parameter state is a few
    times the model's size, so it is not built in memory as bytes first)."""
    import torch

    from mucrasp.atomic_io import atomic_file

    with atomic_file(path) as handle:
        torch.save(state, handle)


def _load_state(path: Path | None, key: str) -> dict[str, Any] | None:
    import torch

    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a state file from another version, or damaged: start again rather than fail
        return None
    if state.get("format") != STATE_FORMAT or state.get("key") != key:
        return None  # another run's state (other inputs or settings)
    return state


def distil(
    student,
    teacher,
    batches: Sequence[CalibrationBatch],
    settings: RecoverySettings,
    adapter=None,
    progress: ProgressCallback = _no_progress,
    on_loss: LossCallback | None = None,
    state_path: Path | None = None,
    state_key: str = "",
) -> DistilResult:
    """Distil `teacher` into `student` in place for `settings.steps` optimizer steps; returns every step's loss.

    `student` keeps its architecture and widths; with `lora_rank > 0` the adapters are merged back before
    this returns. `state_path` (optional) is where resumable state is written every `checkpoint_every`
    steps and read at the start when its `state_key` matches. Both models stay in eval mode (no dropout),
    so a step is a deterministic function of the weights and the batch.
    """
    import torch

    from mucrasp.adapters import adapter_for_config

    if not batches:
        raise MucraspError("recovery needs at least one calibration sample")
    adapter = adapter or adapter_for_config(student.config)
    torch.manual_seed(settings.seed)
    student.eval()
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    if settings.lora_rank:
        lora = add_lora(student, adapter, settings.lora_rank, settings.lora_alpha, settings.seed)
        named = {f"{name}.{p}": getattr(module, p) for name, module in lora.items() for p in ("lora_a", "lora_b")}
    else:
        # Full-parameter: the decoder and everything else the student has (embeddings, norms, head).
        for parameter in student.parameters():
            parameter.requires_grad_(True)
        named = {name: p for name, p in student.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(named.values()), lr=settings.lr, weight_decay=0.0)

    losses: list[float] = []
    state = _load_state(state_path, state_key)
    resumed_from = None
    if state is not None:
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                named[name].copy_(tensor)
        optimizer.load_state_dict(state["optimizer"])
        losses = list(state["losses"])
        resumed_from = len(losses)

    start = time.perf_counter()
    try:
        for step in range(len(losses), settings.steps):
            chosen = [batches[i] for i in step_samples(step, settings.batch_size, len(batches), settings.seed)]
            tokens = sum(int(b.response_mask[1:].sum()) for b in chosen)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for batch in chosen:  # one sample at a time: memory stays at one sequence's activations
                with torch.no_grad():
                    target = response_logits(teacher, batch)
                kl = distillation_loss(response_logits(student, batch), target, settings.temperature)
                loss = kl.sum() / max(tokens, 1)
                loss.backward()
                step_loss += float(loss.detach())
            optimizer.step()
            losses.append(step_loss)
            progress("distilling", step + 1, settings.steps)
            if on_loss is not None:
                on_loss(step + 1, step_loss)
            done = step + 1
            if state_path is not None and (done % settings.checkpoint_every == 0) and done < settings.steps:
                trainable = {name: p.detach().clone() for name, p in named.items()}
                _save_state(
                    state_path,
                    {
                        "format": STATE_FORMAT,
                        "key": state_key,
                        "trainable": trainable,
                        "optimizer": optimizer.state_dict(),
                        "losses": losses,
                    },
                )
    finally:
        seconds = time.perf_counter() - start
        if settings.lora_rank:
            merge_lora(student, adapter)  # also on an interruption: the model in memory stays a plain one
        for parameter in student.parameters():
            parameter.requires_grad_(False)
    return DistilResult(losses, resumed_from, seconds, sum(p.numel() for p in named.values()), len(batches))


# ---- the job on folders -------------------------------------------------------------------------------------


@dataclass
class RecoverReport:
    out: Path
    result: DistilResult
    calibration: str  # what the traces were: the --calib file, or the self-calibration set
    manifest: dict[str, Any] = field(default_factory=dict)


def state_path_for(out: Path) -> Path:
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.recover-state" / STATE_NAME


def _state_key(config: RecoverConfig, calibration: Path) -> str:
    """What a saved state depends on: the settings, the pruned checkpoint's manifest (rewritten by every prune),
    the dense config and the calibration file's bytes."""
    digest = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude={"out", "overwrite", "cache_dir", "checkpoint_every"})
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in (Path(config.pruned) / "pruning.json", Path(config.dense) / "config.json", Path(calibration)):
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:24]


def recovery_traces(config: RecoverConfig, vision: bool) -> SelfCalibrationConfig:
    """Self-calibration for distillation: the bundled recovery prompts (disjoint from the calibration and
    test parts), one trace per training sample (steps × batch_size) up to the pool's size, so a short run
    never sees a trace twice."""
    from mucrasp.calibration.self_calibration import pool_size

    samples = min(config.steps * config.batch_size, pool_size(vision, "recovery"))
    return SelfCalibrationConfig(
        split="recovery", samples=samples, spot_check=0, max_new_tokens=config.trace_max_new_tokens
    )


def recover(
    config: RecoverConfig,
    progress: ProgressCallback = _no_progress,
    on_loss: LossCallback | None = None,
) -> RecoverReport:
    """Distil `config.dense` into the pruned checkpoint `config.pruned` and save the result to `config.out`.

    The output is a pruned checkpoint like the input (same widths, same files), so it exports and serves
    as before; its `pruning.json` is the input's plus a `recovery` entry.
    """
    import torch

    from mucrasp.atomic_io import check_output_dir
    from mucrasp.calibration import PivotConfig, build_batches, load_processor, load_records
    from mucrasp.checkpoint import read_manifest, save_pruned
    from mucrasp.devices import checkpoint_dtype, resolve_device, resolve_dtype
    from mucrasp.model_loading import load_model, read_model_config
    from mucrasp.units import KeepPlan

    manifest = read_manifest(config.pruned)
    if "kept_units" not in manifest:
        raise MucraspError(f"{config.pruned} was not pruned (its pruning.json keeps every unit): nothing to recover")
    _, dense_adapter = read_model_config(config.dense)
    _, pruned_adapter = read_model_config(config.pruned)
    if dense_adapter.architecture != pruned_adapter.architecture:
        raise MucraspError(
            f"{config.pruned} is a {pruned_adapter.architecture}, but --dense {config.dense} is a "
            f"{dense_adapter.architecture}"
        )
    check_output_dir(Path(config.out), config.overwrite, inputs=(config.pruned, config.dense, config.calibration))

    device = resolve_device(config.device)
    teacher_dtype = resolve_dtype(config.dtype, checkpoint_dtype(config.dense), device)
    progress("loading models", 0, 2)
    teacher = load_model(config.dense, dtype=teacher_dtype)
    student = load_model(config.pruned)
    progress("loading models", 2, 2)
    teacher.model.to(device)
    student.model.to(device)

    vision = dense_adapter.is_vision_language
    if config.calibration is not None:
        calibration, source = Path(config.calibration), str(config.calibration)
    else:
        from mucrasp.calibration.self_calibration import self_calibrate

        traces = recovery_traces(config, vision)
        made = self_calibrate(config.dense, config.cache_dir, traces, loaded=teacher, progress=progress)
        calibration, source = made.calibration, f"self-calibration ({traces.split} prompts) {made.calibration}"
    processor = load_processor(config.dense, vision)
    batches = build_batches(
        load_records(calibration), processor, teacher.model.config, PivotConfig(), vision, config.max_seq_len
    )

    state_path = state_path_for(config.out)
    settings = RecoverySettings(**{name: getattr(config, name) for name in RecoverySettings.model_fields})
    result = distil(
        student.model,
        teacher.model,
        batches,
        settings,
        adapter=student.adapter,
        progress=progress,
        on_loss=on_loss,
        state_path=state_path,
        state_key=_state_key(config, calibration),
    )
    del teacher
    student.model.to("cpu", dtype=checkpoint_dtype(config.pruned) or torch.float32)

    progress("saving checkpoint", 0, 1)
    record = {
        "method": "logit distillation from the dense model (KL on response tokens, Minitron)",
        "dense": str(Path(config.dense).resolve()),
        "calibration": source,
        "samples": result.samples,
        "training": f"LoRA rank {settings.lora_rank}, merged" if settings.lora_rank else "full-parameter",
        **settings.model_dump(exclude={"checkpoint_every"}),
        "trained_parameters": result.trained_parameters,
        "loss_first_step": round(result.losses[0], 6),
        "loss_last_step": round(result.losses[-1], 6),
        "losses": [round(v, 6) for v in result.losses],
        "resumed_from_step": result.resumed_from,
        "seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds_per_step, 3),
        "device": str(device),
        "teacher_dtype": str(teacher_dtype).removeprefix("torch."),
    }
    if "recovery" in manifest:
        record["earlier"] = manifest["recovery"]  # a second recovery keeps the record of the first
    carried = {k: v for k, v in manifest.items() if k != "carried_files"}
    new_manifest = {**carried, "recovery": record}
    plan = KeepPlan.from_json(manifest["kept_units"])
    out = save_pruned(
        student.model, config.out, plan, new_manifest, source_dir=config.pruned, overwrite=config.overwrite
    )
    progress("saving checkpoint", 1, 1)
    # Done: the resumable state has served its purpose.
    import shutil

    shutil.rmtree(state_path.parent, ignore_errors=True)
    return RecoverReport(out=out, result=result, calibration=source, manifest=new_manifest)


__all__ = [
    "DistilResult",
    "RecoverConfig",
    "RecoverReport",
    "RecoverySettings",
    "add_lora",
    "distil",
    "distillation_loss",
    "mean_distillation_loss",
    "merge_lora",
    "recover",
    "response_logits",
    "state_path_for",
    "step_samples",
]
