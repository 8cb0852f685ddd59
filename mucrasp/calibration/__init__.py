"""Calibration data: JSONL records, pivot detection, and model inputs built from them."""

from mucrasp.calibration.batches import (
    CalibrationBatch, CalibrationSource, CalibrationSummary, build_batch, build_batches, load_processor,
    resolve_batches, summarize,
)
from mucrasp.calibration.pivots import DEFAULT_MARKERS, PivotConfig, find_pivots, window_mask
from mucrasp.calibration.records import CalibrationRecord, load_records

__all__ = [
    "CalibrationBatch", "CalibrationRecord", "CalibrationSource", "CalibrationSummary", "DEFAULT_MARKERS",
    "PivotConfig", "build_batch", "build_batches", "find_pivots", "load_processor", "load_records",
    "resolve_batches", "summarize", "window_mask",
]
