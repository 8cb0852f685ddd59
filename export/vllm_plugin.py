"""vLLM general plugin (entry point `vllm.general_plugins`): serve MuCRASP per-layer checkpoints.

vLLM calls `register()` in every process it starts. The names are registered as lazy strings, so
nothing heavy is imported until a checkpoint names one of these architectures.
"""

from __future__ import annotations

# Per-layer architecture name written by `export vllm` -> the class that serves it.
ARCHITECTURES = {
    "MucraspLlamaForCausalLM": "mucrasp.export.vllm_models:MucraspLlamaForCausalLM",
    "MucraspQwen2ForCausalLM": "mucrasp.export.vllm_models:MucraspQwen2ForCausalLM",
    "MucraspQwen2VLForConditionalGeneration": "mucrasp.export.vllm_models:MucraspQwen2VLForConditionalGeneration",
    "MucraspQwen2_5_VLForConditionalGeneration": "mucrasp.export.vllm_models:MucraspQwen2_5_VLForConditionalGeneration",
}


def register() -> None:
    from mucrasp import _cpu_torch_compat  # importing mucrasp applies the CPU-torch workarounds

    from vllm import ModelRegistry

    _cpu_torch_compat.patch_vllm_model_inspection()
    for architecture, target in ARCHITECTURES.items():
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, target)
