"""The score job: measure a model's scores on calibration data once and write them to a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mucrasp.calibration.batches import CalibrationSource
from mucrasp.errors import MucraspError
from mucrasp.model_loading import load_model, read_model_config
from mucrasp.scoring.base import ProgressCallback, ScoreComponents, ScoringContext, _no_progress
from mucrasp.scoring.registry import get_method
from mucrasp.scoring.scores_file import save_scores


@dataclass
class ScoreConfig:
    model: Path
    out: Path
    calibration: Path | None = None
    method: str = "mucrasp"
    max_samples: int | None = None
    overwrite: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreReport:
    out: Path
    components: ScoreComponents


def score_model(config: ScoreConfig, progress: ProgressCallback = _no_progress) -> ScoreReport:
    method = get_method(config.method)
    if Path(config.out).exists() and not config.overwrite:
        raise MucraspError(f"{config.out} exists; pass --overwrite to replace it")
    if method.needs_calibration and config.calibration is None:
        raise MucraspError(f"method {config.method!r} needs calibration data (--calib FILE)")
    read_model_config(config.model)
    loaded = load_model(config.model)
    calibration = CalibrationSource(Path(config.calibration), Path(config.model), config.max_samples) if config.calibration else None
    # The ratio only matters to fusion, which happens at prune time; 0 is a placeholder.
    context = ScoringContext(ratio=0.0, calibration=calibration, options=config.method_options, progress=progress)
    components = method.components(loaded.model, loaded.adapter, context)
    save_scores(config.out, components, loaded.adapter.architecture, loaded.adapter.layer_widths(loaded.model))
    return ScoreReport(Path(config.out), components)
