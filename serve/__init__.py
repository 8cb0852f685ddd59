"""Serving smoke tests on vLLM, ONNX Runtime and transformers (imported as mucrasp.serve).

from mucrasp.serve import SmokeConfig, Thresholds, run_smoke
report = run_smoke(SmokeConfig(export_dir=Path("served"), backend="vllm", thresholds=Thresholds(min_tokens_per_s=5)))
report.passed, report.failures, report.data["throughput"]["tokens_per_s"]
"""

from mucrasp.serve.config import BACKENDS, SmokeConfig, Thresholds
from mucrasp.serve.smoke import SmokeReport, run_smoke
from mucrasp.serve.spot_check import load_spot_check, write_spot_check

__all__ = ["BACKENDS", "SmokeConfig", "SmokeReport", "Thresholds", "load_spot_check", "run_smoke", "write_spot_check"]
