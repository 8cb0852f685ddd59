"""Exporters: checkpoints that vLLM serves, and ONNX graphs for ONNX Runtime (imported as mucrasp.export)."""
