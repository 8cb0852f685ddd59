"""mucrasp-deploy: reasoning-aware structured pruning and deployment of vision-language models."""

from mucrasp import _cpu_torch_compat

_cpu_torch_compat.apply()

from mucrasp.checkpoint import load_pruned, save_pruned  # noqa: E402
from mucrasp.errors import MucraspError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["MucraspError", "load_pruned", "save_pruned", "__version__"]
