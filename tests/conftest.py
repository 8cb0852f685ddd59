"""Shared fixtures: small models of every supported family, built from configs at test time."""

from __future__ import annotations

import os

import pytest

import mucrasp  # noqa: F401  (applies the CPU-torch workarounds before transformers loads)
from mucrasp.tiny_models import save_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHITECTURES = [
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
]
VL_ARCHITECTURES = [a for a in ARCHITECTURES if "VL" in a]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One saved tiny model folder per architecture, written once per test session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_model(arch, root / arch) for arch in ARCHITECTURES}
