"""vLLM general plugin (entry point `vllm.general_plugins`): serve MuCRASP per-layer checkpoints.

vLLM calls `register()` in every process it starts. The names are registered as lazy strings, so
nothing heavy is imported until a checkpoint names one of these architectures.
"""

from __future__ import annotations

from mucrasp.adapters import vllm_per_layer_classes

# Per-layer architecture name written by `export vllm` -> the "module:Class" serving it, as each
# family's adapter states it (vllm_per_layer_class); nothing of vLLM is imported here.
ARCHITECTURES = vllm_per_layer_classes()


def register() -> None:
    # Only registers. The CPU-torch workarounds come from the startup hook (mucrasp_cpu_torch_hook),
    # which runs in every interpreter, vLLM's model-inspection and engine-core subprocesses included.
    from vllm import ModelRegistry

    for architecture, target in ARCHITECTURES.items():
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, target)
