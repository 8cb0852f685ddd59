"""A non-editable install (a built wheel) works on its own: CLI, profiles, demo model, startup hook;
and every third-party module the package imports is a declared dependency.

How the installed copy is run, honestly isolated from the checkout and the editable install:

1. The project is copied to a temporary folder (no .venv, tests, bench or build output) and a wheel
   is built from the copy (`pip wheel --no-deps --no-build-isolation --no-index`), so the build
   sees only what is declared, and nothing is written into the working tree.
2. The wheel is installed with `pip install --no-deps --no-index --target TARGET`. The test
   environment's own dependencies (torch, transformers, typer, ...) are reused rather than
   installed again: a fresh venv would need a registry and minutes.
3. Each check runs in a new interpreter `python -I -S` started in a folder outside the repository:
   `-S` skips `site`, so the .pth files of this environment's site-packages are NOT processed. That
   is what hides the editable install: it is a .pth that installs setuptools' import finder mapping
   `mucrasp` to the checkout (and a second .pth that imports the checkout's startup hook). `-I`
   ignores PYTHONPATH and keeps the current folder off `sys.path`. The interpreter then calls
   `site.addsitedir(TARGET)`, which puts TARGET on `sys.path` and processes the wheel's own
   `mucrasp-deploy.pth` exactly as site-packages would, and appends this environment's
   site-packages as a plain path entry (its .pth files still unprocessed) for the dependencies.
   Every check asserts that `mucrasp` was imported from TARGET.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "tests", "bench", "build", "__pycache__", "*.egg-info", ".pytest_cache", "*.pyc"
)
BOOT = textwrap.dedent("""
    import site, sys
    target, env_site = sys.argv[1], sys.argv[2]
    site.addsitedir(target)   # TARGET on sys.path, and its .pth processed
    sys.path.append(env_site)  # the dependencies; this folder's .pth files (the editable install) unprocessed
    import mucrasp
    assert mucrasp.__file__.startswith(target), f"mucrasp imported from {mucrasp.__file__}, not the wheel"
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source), "-w", str(root / "wheels")],
        check=True,
        capture_output=True,
        cwd=root,
    )
    (wheel,) = (root / "wheels").glob("mucrasp_deploy-*.whl")
    target = root / "target"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        cwd=root,
    )
    return wheel, target, root / "work"


def _run(installed, code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    _, target, work = installed
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            BOOT + textwrap.dedent(code),
            str(target),
            sysconfig.get_paths()["purelib"],
            *args,
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _cli(installed, *args: str) -> subprocess.CompletedProcess:
    return _run(
        installed, "from mucrasp.cli import main\nsys.argv = ['mucrasp-deploy', *sys.argv[3:]]\nmain()\n", *args
    )


def test_wheel_ships_the_hook_profiles_and_demo_model(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "mucrasp-deploy.pth",
        "mucrasp_cpu_torch_hook.py",
        "mucrasp/demo_model/model.safetensors",
        "mucrasp/demo_model/config.json",
        "mucrasp/demo_model/tokenizer.json",
        "mucrasp/export/vllm_plugin.py",
        "mucrasp/serve/vllm_server.py",
    } <= names
    assert any(n.startswith("mucrasp/profiles/") and n.endswith(".yaml") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "models/")) for n in names)


# Source folder -> where it installs (pyproject.toml's package-dir).
INSTALLED_AS = {
    "mucrasp": "mucrasp",
    "export": "mucrasp/export",
    "serve": "mucrasp/serve",
    "profiles": "mucrasp/profiles",
    "models/demo-vlm": "mucrasp/demo_model",
}


def test_wheel_has_every_module_and_data_file(installed):
    """The hand-written `packages` list misses nothing: each source file is in the wheel."""
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{dest}/{path.relative_to(REPO / src).as_posix()}"
        for src, dest in INSTALLED_AS.items()
        for path in (REPO / src).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert not expected - names, sorted(expected - names)


def test_installed_cli_help_and_profile_list(installed):
    helped = _cli(installed, "--help")
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "Usage" in helped.stdout and "profile" in helped.stdout
    listed = _cli(installed, "profile", "list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "a10g" in listed.stdout


def test_installed_demo_model_and_startup_hook(installed):
    _, target, _ = installed
    proc = _run(
        installed,
        """
        import json
        import mucrasp_cpu_torch_hook
        assert mucrasp_cpu_torch_hook.__file__.startswith(target), mucrasp_cpu_torch_hook.__file__
        assert any(type(f).__name__ == "CpuTorchHook" for f in sys.meta_path), \
"the wheel's .pth did not install the hook"
        from mucrasp.demo.bundled import bundled_demo_model
        model = bundled_demo_model()
        assert str(model).startswith(target), model
        print(json.loads((model / "config.json").read_text())["architectures"][0])
        from transformers import Qwen2_5_VLForConditionalGeneration  # needs the hook on CPU-torch hosts
    """,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Qwen2_5_VLForConditionalGeneration" in proc.stdout


def test_missing_demo_model_is_one_clear_line(installed, tmp_path):
    _, target, _ = installed
    hidden = target / "mucrasp" / "demo_model.hidden"
    (target / "mucrasp" / "demo_model").rename(hidden)
    try:
        proc = _cli(installed, "--profile", "a10g", "--out", str(tmp_path / "out"))
    finally:
        hidden.rename(target / "mucrasp" / "demo_model")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "demo model is missing" in lines[0], proc.stderr[-3000:]


def _dist(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group()).lower()


def test_every_third_party_import_is_declared():
    """Each top-level module that mucrasp/, export/ or serve/ imports comes from a declared distribution."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_dist(r) for r in project["dependencies"]}
    declared |= {_dist(r) for extra in project["optional-dependencies"].values() for r in extra}
    own = {"mucrasp", "mucrasp_cpu_torch_hook", "__future__"}
    imported: dict[str, str] = {}
    for folder in ("mucrasp", "export", "serve"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                )
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        imported.setdefault(top, str(path.relative_to(REPO)))
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        top: where for top, where in imported.items() if not {_dist(d) for d in providers.get(top, [top])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
