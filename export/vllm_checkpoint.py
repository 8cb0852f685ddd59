"""`export vllm`: a pruned checkpoint as a folder that vLLM serves with no flags.

- Uniform widths: the pruned checkpoint already is a stock Hugging Face checkpoint; it is copied
  (config, safetensors, tokenizer, processor, chat template, generation config).
- Per-layer widths: the config's `architectures` is renamed to the MuCRASP architecture
  (`Mucrasp` + the stock name), which this project's vLLM plugin registers (entry point
  `vllm.general_plugins`). The per-layer widths stay in the text config, where the plugin reads them.

Either way a model card (README.md) is written, and the folder appears atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mucrasp.adapters.registry import EXPORTED_ARCHITECTURE_PREFIX, vllm_per_layer_classes
from mucrasp.atomic_io import atomic_directory, check_output_dir, write_json_atomic
from mucrasp.checkpoint import MANIFEST_NAME, per_layer_widths, read_manifest, verify_weights
from mucrasp.errors import MucraspError
from mucrasp.export.model_card import build_model_card
from mucrasp.export.vllm_quantize import quantize_checkpoint
from mucrasp.model_loading import read_model_config
from mucrasp.planning.weight_formats import VLLM, check_export_weights

ARCH_PREFIX = EXPORTED_ARCHITECTURE_PREFIX
_SKIPPED = {"README.md"}


@dataclass
class VllmExport:
    out: Path
    architecture: str  # what config.json names: stock, or the MuCRASP per-layer architecture
    per_layer: bool
    # card(quality=None, smoke=None) -> the model card's text; the chain writes it after its smoke test
    card: Callable[..., str] | None = field(default=None, repr=False)
    weights: str = "bf16"
    quantization: dict | None = None  # what `vllm_quantize.quantize_checkpoint` did, for quantized formats


def per_layer_architecture(stock: str) -> str:
    return stock if stock.startswith(ARCH_PREFIX) else ARCH_PREFIX + stock


def stock_architecture(name: str) -> str:
    return name[len(ARCH_PREFIX) :] if name.startswith(ARCH_PREFIX) else name


# The stock architectures whose per-layer form the vLLM plugin serves (see mucrasp.export.vllm_plugin).
PER_LAYER_SERVED = {stock_architecture(name) for name in vllm_per_layer_classes()}


def _serve_notes(
    out_name: str, per_layer: bool, vision: bool, tensor_parallel_size: int = 1, weights: str = "bf16"
) -> list[str]:
    notes = []
    if weights != "bf16":
        notes += [
            f"Weights: {weights}, a compressed-tensors checkpoint (`quantization_config` in config.json) that vLLM",
            "reads with no flags. The vision tower, embedding and LM head are not quantized.",
            "",
        ]
    if per_layer:
        notes += [
            "Each decoder layer has its own width, so this checkpoint names its own architecture. Install",
            "`mucrasp-deploy` next to vLLM (`pip install mucrasp-deploy`): its vLLM plugin registers the",
            "architecture, and vLLM then serves the folder with no flags.",
            "",
        ]
    else:
        notes += ["Every layer has the same width: a stock checkpoint that vLLM and transformers load as they are.", ""]
    notes += [
        "```bash",
        f"vllm serve ./{out_name}"
        + (f" --tensor-parallel-size {tensor_parallel_size}" if tensor_parallel_size > 1 else ""),
        "```",
        "",
        "```python",
        "from vllm import LLM, SamplingParams",
        f'llm = LLM("./{out_name}"'
        + (f", tensor_parallel_size={tensor_parallel_size})" if tensor_parallel_size > 1 else ")"),
        'print(llm.generate("Hello", SamplingParams(max_tokens=32))[0].outputs[0].text)',
        "```",
    ]
    if vision:
        notes += ["", "Images go in through the chat template (`llm.chat(...)`) or `multi_modal_data`."]
    return notes


def export_vllm(
    pruned_dir: str | Path,
    out: str | Path,
    overwrite: bool = False,
    quality: Any = None,
    smoke: dict | None = None,
    write_card: bool = True,
    weights: str = "bf16",
    tensor_parallel_size: int = 1,
) -> VllmExport:
    """Write `pruned_dir` (a pruned checkpoint) to `out` as a checkpoint that vLLM serves.

    `write_card=False` leaves README.md out: the deployment chain writes it once, after its smoke test,
    with `result.card(quality, smoke)`. `weights`: bf16 (the checkpoint's weights as they are) or a
    compressed-tensors format, w8a8 | w4a16 | fp8 (see `vllm_quantize`). `tensor_parallel_size`: the GPUs
    the card's serve command splits the model over (the deployment chain passes the profile's gpu_count)."""
    pruned_dir, out = Path(pruned_dir), Path(out)
    check_export_weights(VLLM, weights)
    if tensor_parallel_size < 1:
        raise MucraspError(f"tensor_parallel_size must be at least 1, not {tensor_parallel_size}")
    config, adapter = read_model_config(pruned_dir)
    manifest = read_manifest(pruned_dir)
    check_output_dir(out, overwrite, inputs=(pruned_dir,))
    verify_weights(pruned_dir)  # a missing, truncated or mis-shaped weight file must not become an export
    widths = per_layer_widths(config, adapter)
    per_layer = widths is not None
    if per_layer and adapter.architecture not in PER_LAYER_SERVED:
        raise MucraspError(f"no vLLM per-layer model for {adapter.architecture}; export it with --layout uniform")
    if not widths:
        text = adapter.text_config(config)
        widths = (
            [text.intermediate_size] * text.num_hidden_layers,
            [text.num_key_value_heads] * text.num_hidden_layers,
        )
    architecture = per_layer_architecture(adapter.architecture) if per_layer else adapter.architecture
    before = [(w["mlp_channels"], w["kv_groups"]) for w in manifest.get("widths_before", [])] or None
    quality = quality if quality is not None else manifest.get("quality")

    def card(measured: Any = None, smoke: dict | None = None) -> str:
        notes = _serve_notes(out.name, per_layer, adapter.is_vision_language, tensor_parallel_size, weights)
        measured = measured if measured is not None else quality
        return build_model_card(
            manifest, architecture, list(zip(*widths)), before, per_layer, notes, measured, smoke=smoke
        )

    with atomic_directory(out, overwrite=overwrite) as staging:
        for item in sorted(pruned_dir.iterdir()):
            if item.is_file() and item.name not in _SKIPPED:
                shutil.copy2(item, staging / item.name)
        raw = json.loads((pruned_dir / "config.json").read_text())
        raw["architectures"] = [architecture]
        write_json_atomic(staging / "config.json", raw)
        if not (staging / "generation_config.json").is_file():
            generation = {k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in raw}
            write_json_atomic(staging / "generation_config.json", generation)
        quantization = quantize_checkpoint(staging, weights) if weights != "bf16" else None
        if write_card:
            (staging / "README.md").write_text(card(quality, smoke))
    return VllmExport(
        out=out, architecture=architecture, per_layer=per_layer, card=card, weights=weights, quantization=quantization
    )


__all__ = ["VllmExport", "export_vllm", "per_layer_architecture", "stock_architecture", "MANIFEST_NAME"]
