"""Serving smoke tests on vLLM, ONNX Runtime and transformers (imported as mucrasp.serve)."""
