"""`mucrasp-deploy`'s entry point: start-up without torch, usage errors, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "mucrasp-deploy")

CHECK_LIGHT = """
import sys
from mucrasp.cli import main
try:
    main({args!r})
except SystemExit as exc:
    print("EXIT", exc.code, file=sys.stderr)
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
print("HEAVY", heavy, file=sys.stderr)
sys.exit(3 if heavy else 0)
"""


@pytest.mark.parametrize(
    "args, code",
    [
        (["--help"], 0),
        (["prune", "--help"], 0),
        (["prune", "m", "--out", "o", "--align", "7"], 2),  # an option error, checked by the config model
        (["score", "m", "--out", "o", "--max-samples", "0"], 2),
        (["eval", "p", "--dense", "d", "--data", "x", "--limit", "0"], 2),
        (["prune", "--no-such-option"], 2),
        (["profile", "list"], 0),
    ],
)
def test_cli_starts_without_torch(args, code):
    """Deterministic, not timed: importing torch and transformers is what cost ~9.5 s of CPU."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK_LIGHT.format(args=args)], capture_output=True, text=True, timeout=120
    )
    assert f"EXIT {code}" in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_mucrasp_is_light_and_load_pruned_is_lazy():
    code = (
        "import sys, mucrasp\n"
        "assert 'torch' not in sys.modules\n"
        "from mucrasp import load_pruned, save_pruned\n"
        "assert 'torch' in sys.modules and callable(load_pruned)\n"
        # The CPU-torch workarounds ran before transformers loaded: a model class imports (it dies without them).
        "from transformers import Qwen2_5_VLForConditionalGeneration\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_usage_error_is_one_line_with_exit_2():
    result = subprocess.run([CLI, "prune", "--no-such-option"], capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "--no-such-option" in errors[0], result.stderr


BLOCKING = """
import sys, time
import mucrasp.cli.profile_command as command
def slow():
    print("READY", file=sys.stderr, flush=True)
    time.sleep(120)
    return []
command.list_profiles = slow
from mucrasp.cli import main
main(["profile", "list"])
"""


def test_ctrl_c_prints_interrupted_and_exits_130():
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKING], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        line = process.stderr.readline()
        while "READY" not in line and time.monotonic() < deadline and line:
            line = process.stderr.readline()
        assert "READY" in line
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted: nothing was written" in err
    assert "Traceback" not in err
