"""Shared fixtures: small models of every supported family, built from configs at test time."""

from __future__ import annotations

import os

import pytest

import mucrasp  # noqa: F401  (applies the CPU-torch workarounds before transformers loads)
from mucrasp.adapters import get_adapter, supported_architectures
from mucrasp.tiny_models import save_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Every registered family: a new adapter joins every parametrised test.
ARCHITECTURES = supported_architectures()
VL_ARCHITECTURES = [a for a in ARCHITECTURES if get_adapter(a).is_vision_language]


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Score caches and demo data go to a per-run folder, never to the user's ~/.cache."""
    path = tmp_path_factory.mktemp("mucrasp-cache")
    previous = os.environ.get("MUCRASP_CACHE_DIR")
    os.environ["MUCRASP_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MUCRASP_CACHE_DIR", None)
    else:
        os.environ["MUCRASP_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One saved tiny model folder per architecture, written once per test session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_model(arch, root / arch) for arch in ARCHITECTURES}
