"""The score job: measure a model's scores on calibration data once and write them to a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mucrasp.devices import DeviceSpec, DtypeSpec
from mucrasp.errors import MucraspError
from mucrasp.validation import JobConfig

if TYPE_CHECKING:
    from mucrasp.scoring.base import ProgressCallback, ScoreComponents


class ScoreConfig(JobConfig):
    model: Path
    out: Path
    calibration: Path | None = None
    method: str = "mucrasp"
    max_samples: int | None = Field(None, ge=1)  # use only the first N records; None: all
    max_seq_len: int | None = Field(None, ge=1)  # cut calibration sequences to this; None: the model's context
    overwrite: bool = False
    method_options: dict[str, Any] = Field(default_factory=dict)
    device: DeviceSpec = "auto"  # mucrasp.devices: CUDA when there is one
    dtype: DtypeSpec = "auto"  # the dtype the model runs in; auto: the checkpoint's, unless the device lacks it
    device_map: str | None = None  # accelerate's "auto"/"balanced"/"sequential": spread over devices, offload
    offload_folder: Path | None = None  # where a device_map's "disk" part goes


@dataclass
class ScoreReport:
    out: Path
    components: ScoreComponents


def _no_progress(description: str, done: int, total: int) -> None:
    return None


def check_score_inputs(config: ScoreConfig) -> None:
    """The checks that need no model: the method, its options, its data, and the output."""
    from mucrasp.atomic_io import check_writable
    from mucrasp.scoring.options import method_config
    from mucrasp.scoring.registry import get_method

    method = get_method(config.method)
    method_config(method.config_class, config.method_options, method.name)
    from mucrasp.devices import resolve_device

    resolve_device(config.device)  # `--device cuda` without CUDA: one line before any model loads
    if Path(config.out).exists() and not config.overwrite:
        raise MucraspError(f"{config.out} exists; pass --overwrite to replace it")
    check_writable(Path(config.out))
    if method.needs_calibration and config.calibration is None:
        raise MucraspError(f"method {config.method!r} needs calibration data (--calib FILE)")


def score_model(config: ScoreConfig, progress: ProgressCallback = _no_progress, loaded: Any = None) -> ScoreReport:
    """Score the model at `config.model` (or the already `loaded` one) and write the scores file.

    One run at a time owns `config.out`: a second run for the same path fails with one line (see
    `scores_file.scores_lock`).
    """
    from mucrasp.calibration.batches import CalibrationSource
    from mucrasp.model_loading import load_model, read_model_config
    from mucrasp.scoring.base import ScoringContext
    from mucrasp.scoring.registry import get_method
    from mucrasp.scoring.scores_file import save_scores, scores_lock

    check_score_inputs(config)
    method = get_method(config.method)
    with scores_lock(config.out):
        check_score_inputs(config)  # again under the lock: another run may have written it meanwhile
        if loaded is None:
            read_model_config(config.model)
            loaded = load_model(
                config.model,
                dtype=config.dtype,
                device=config.device,
                device_map=config.device_map,
                offload_folder=config.offload_folder,
            )
        calibration = (
            CalibrationSource(Path(config.calibration), Path(config.model), config.max_samples, config.max_seq_len)
            if config.calibration
            else None
        )
        # The ratio only matters to fusion, which happens at prune time; 0 is a placeholder.
        context = ScoringContext(ratio=0.0, calibration=calibration, options=config.method_options, progress=progress)
        components = method.components(loaded.model, loaded.adapter, context)
        save_scores(config.out, components, loaded.adapter.architecture, loaded.adapter.layer_widths(loaded.model))
    return ScoreReport(Path(config.out), components)
