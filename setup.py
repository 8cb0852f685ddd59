"""Everything about the package is in pyproject.toml; this file only ships the startup hook's .pth.

`mucrasp-deploy.pth` goes into site-packages (purelib) next to the top-level module
`mucrasp_cpu_torch_hook`, so that every interpreter of the environment applies the CPU-torch
workarounds (see that module). setuptools has no declarative way to put a file at the root of
purelib (`data_files` install under the environment prefix), so `build_py` writes it:

- wheel (`pip install .`, `pip wheel .`): into the build lib, whose root becomes the wheel's root;
- editable (`pip install -e .`): setuptools' `editable_wheel` puts only the unpacked wheel
  folder (not the build lib) into the editable wheel and points `install.install_lib` at it, so
  the .pth is written there. It sorts after setuptools' `__editable__.*.pth`, whose import finder
  must be installed before `import mucrasp_cpu_torch_hook` can find the module in the checkout.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "mucrasp-deploy.pth"
# A .pth line that starts with "import" is executed by `site`; a missing hook module must not
# print an error at every start (for example half-way through an uninstall).
PTH_LINE = 'import sys; exec("try:\\n import mucrasp_cpu_torch_hook\\nexcept Exception:\\n pass")\n'


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        target = self._pth_dir()
        self.mkpath(target)
        with open(os.path.join(target, PTH_NAME), "w", encoding="utf-8") as f:
            f.write(PTH_LINE)

    def _pth_dir(self):
        if getattr(self, "editable_mode", False):
            return self.get_finalized_command("install").install_lib
        return self.build_lib

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": BuildPyWithPth})
