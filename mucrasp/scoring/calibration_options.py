"""Options shared by the baselines that read calibration data."""

from __future__ import annotations

from pydantic import ConfigDict

from mucrasp.calibration.batches import CalibrationBatch, resolve_batches
from mucrasp.calibration.pivots import PivotConfig
from mucrasp.validation import JobConfig


class CalibratedBaselineConfig(JobConfig):
    model_config = ConfigDict(frozen=True)

    gradient_checkpointing: bool = False  # used by the gradient-based baselines only


def baseline_batches(method: str, model, adapter, calibration) -> list[CalibrationBatch]:
    # Baselines do not use pivots; the default pivot settings only fill a mask they ignore.
    return resolve_batches(calibration, model.config, PivotConfig(), bool(adapter.is_vision_language), method)
