"""mucrasp-deploy: reasoning-aware structured pruning and deployment of vision-language models.

Importing the package is cheap: torch and transformers load only when something needs them
(`load_pruned`/`save_pruned` below are resolved on first use), so `mucrasp-deploy --help`, option
errors, `profile list` and `plan` start without them.
"""

from __future__ import annotations

from mucrasp import _cpu_torch_compat
from mucrasp.errors import MucraspError

# Cheap (imports nothing): makes sure the CPU-torch startup hook is active in interpreters that
# skipped the .pth file (`python -S`); see mucrasp/_cpu_torch_compat.py.
_cpu_torch_compat.apply()

__version__ = "0.2.0"
__all__ = ["MucraspError", "load_pruned", "save_pruned", "__version__"]


def __getattr__(name: str):
    if name in ("load_pruned", "save_pruned"):
        from mucrasp import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'mucrasp' has no attribute {name!r}")
