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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mucrasp.adapters.registry import EXPORTED_ARCHITECTURE_PREFIX
from mucrasp.atomic_io import atomic_directory, check_output_dir, write_json_atomic
from mucrasp.checkpoint import MANIFEST_NAME, per_layer_widths, read_manifest
from mucrasp.errors import MucraspError
from mucrasp.model_loading import read_model_config

from mucrasp.export.model_card import build_model_card

ARCH_PREFIX = EXPORTED_ARCHITECTURE_PREFIX
# The per-layer architectures the vLLM plugin serves (see mucrasp.export.vllm_plugin).
PER_LAYER_SERVED = {
    "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
}
_SKIPPED = {"README.md"}


@dataclass
class VllmExport:
    out: Path
    architecture: str  # what config.json names: stock, or the MuCRASP per-layer architecture
    per_layer: bool


def per_layer_architecture(stock: str) -> str:
    return stock if stock.startswith(ARCH_PREFIX) else ARCH_PREFIX + stock


def stock_architecture(name: str) -> str:
    return name[len(ARCH_PREFIX):] if name.startswith(ARCH_PREFIX) else name


def _serve_notes(out_name: str, per_layer: bool, vision: bool) -> list[str]:
    notes = []
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
        f"vllm serve ./{out_name}",
        "```",
        "",
        "```python",
        "from vllm import LLM, SamplingParams",
        f'llm = LLM("./{out_name}")',
        'print(llm.generate("Hello", SamplingParams(max_tokens=32))[0].outputs[0].text)',
        "```",
    ]
    if vision:
        notes += ["", "Images go in through the chat template (`llm.chat(...)`) or `multi_modal_data`."]
    return notes


def export_vllm(pruned_dir: str | Path, out: str | Path, overwrite: bool = False, quality: Any = None) -> VllmExport:
    """Write `pruned_dir` (a pruned checkpoint) to `out` as a checkpoint that vLLM serves."""
    pruned_dir, out = Path(pruned_dir), Path(out)
    config, adapter = read_model_config(pruned_dir)
    manifest = read_manifest(pruned_dir)
    check_output_dir(out, overwrite)
    widths = per_layer_widths(config, adapter)
    per_layer = widths is not None
    if per_layer and adapter.architecture not in PER_LAYER_SERVED:
        raise MucraspError(f"no vLLM per-layer model for {adapter.architecture}; export it with --layout uniform")
    if not widths:
        text = adapter.text_config(config)
        widths = ([text.intermediate_size] * text.num_hidden_layers, [text.num_key_value_heads] * text.num_hidden_layers)
    architecture = per_layer_architecture(adapter.architecture) if per_layer else adapter.architecture
    before = [(w["mlp_channels"], w["kv_groups"]) for w in manifest.get("widths_before", [])] or None
    quality = quality if quality is not None else manifest.get("quality")

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
        card = build_model_card(
            manifest, architecture, list(zip(*widths)), before, per_layer,
            _serve_notes(out.name, per_layer, adapter.is_vision_language), quality,
        )
        (staging / "README.md").write_text(card)
    return VllmExport(out=out, architecture=architecture, per_layer=per_layer)


__all__ = ["VllmExport", "export_vllm", "per_layer_architecture", "stock_architecture", "MANIFEST_NAME"]
