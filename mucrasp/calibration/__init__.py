"""Calibration data: JSONL records, pivot detection, and model inputs built from them."""

from mucrasp.calibration.pivots import DEFAULT_MARKERS, PivotConfig, find_pivots, window_mask
from mucrasp.calibration.records import CalibrationRecord, load_records

# The batch builders import torch: resolved on first use, so reading records or pivot settings stays cheap.
_BATCHES = (
    "CalibrationBatch",
    "CalibrationSource",
    "CalibrationSummary",
    "CalibrationWarning",
    "build_batch",
    "build_batches",
    "load_processor",
    "model_max_seq_len",
    "resolve_batches",
    "summarize",
)


def __getattr__(name: str):
    if name in _BATCHES:
        from mucrasp.calibration import batches

        return getattr(batches, name)
    raise AttributeError(f"module 'mucrasp.calibration' has no attribute {name!r}")


__all__ = [
    "CalibrationBatch",
    "CalibrationRecord",
    "CalibrationSource",
    "CalibrationSummary",
    "CalibrationWarning",
    "DEFAULT_MARKERS",
    "PivotConfig",
    "build_batch",
    "build_batches",
    "find_pivots",
    "load_processor",
    "load_records",
    "model_max_seq_len",
    "resolve_batches",
    "summarize",
    "window_mask",
]
