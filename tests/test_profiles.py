"""Profiles: the bundled ones load, every bad field gets one error naming it, measure writes a valid one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from mucrasp.cli import app, main
from mucrasp.errors import MucraspError
from mucrasp.planning.profiles import list_profiles, load_profile

BUNDLED = [
    "a10g",
    "t4",
    "l4",
    "a100-40g",
    "a100-80g",
    "h100-80g",
    "rtx4090",
    "jetson-agx-orin-64g",
    "jetson-orin-nano-8g",
]
GOOD = dict(
    name="good",
    memory_gb=24,
    memory_bandwidth_gbps=600,
    dense_tflops=70,
    dtypes=["fp16", "bf16"],
    gpu_count=1,
    runtime_reserve_gb=1.5,
    gpu_memory_utilization=0.9,
)


@pytest.fixture(autouse=True)
def _own_profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MUCRASP_PROFILE_DIR", str(tmp_path / "user-profiles"))


def test_bundled_profiles_load():
    assert set(BUNDLED) <= set(list_profiles())
    for name in BUNDLED:
        profile = load_profile(name)
        assert profile.name == name and profile.budget_bytes > profile.runtime_reserve_gb * 1e9
    assert "bf16" not in load_profile("t4").dtypes and load_profile("t4").default_dtype() == "fp16"
    assert load_profile("a10g").memory_bandwidth_gbps == 600
    # Every GPU profile lists W8A8 and W4A16; FP8 where the compute capability allows; Jetsons int8 and int4.
    for name in BUNDLED:
        formats = load_profile(name).weight_formats
        assert {"w8a8", "w4a16"} <= set(formats), name
        assert ("fp8" in formats) == (not name.startswith("jetson")), name
    assert {"int8", "int4"} <= set(load_profile("jetson-orin-nano-8g").weight_formats)
    assert load_profile("l4").compute_capability == 8.9 and load_profile("t4").compute_capability == 7.5


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


BAD = [
    ({k: v for k, v in GOOD.items() if k != "memory_gb"}, "missing field 'memory_gb'"),
    ({k: v for k, v in GOOD.items() if k != "dtypes"}, "missing field 'dtypes'"),
    ({**GOOD, "memory_gb": 0}, "field 'memory_gb'"),
    ({**GOOD, "memory_gb": "lots"}, "field 'memory_gb'"),
    ({**GOOD, "memory_gb": float("inf")}, "field 'memory_gb': Input should be a finite number"),
    ({**GOOD, "dense_tflops": float("nan")}, "field 'dense_tflops'"),
    ({**GOOD, "memory_bandwidth_gbps": -1}, "field 'memory_bandwidth_gbps'"),
    ({**GOOD, "dense_tflops": 0}, "field 'dense_tflops'"),
    ({**GOOD, "gpu_count": 0}, "field 'gpu_count'"),
    ({**GOOD, "gpu_memory_utilization": 1.5}, "field 'gpu_memory_utilization'"),
    ({**GOOD, "runtime_reserve_gb": -1}, "field 'runtime_reserve_gb'"),
    ({**GOOD, "runtime_reserve_gb": 30}, "field 'runtime_reserve_gb'"),
    ({**GOOD, "dtypes": []}, "field 'dtypes'"),
    ({**GOOD, "dtypes": ["int3"]}, "field 'dtypes'"),
    ({**GOOD, "memroy_gb": 1}, "unknown field 'memroy_gb'"),
    # Weight formats the hardware cannot run (issue 19): one error naming the field and the limit.
    ({**GOOD, "weight_formats": ["fp8"]}, "field 'weight_formats': fp8 does not run on an x86 CPU"),
    ({**GOOD, "compute_capability": 7.0, "weight_formats": ["w8a8"]}, "field 'weight_formats'"),
    ({**GOOD, "compute_capability": 8.6, "weight_formats": ["int3"]}, "field 'weight_formats'"),
    ({**GOOD, "compute_capability": 8.6, "weight_formats": ["bf16"]}, "field 'weight_formats'"),
    ({**GOOD, "compute_capability": 0}, "field 'compute_capability'"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize("data, message", BAD)
def test_bad_profile_is_one_error_naming_the_field(tmp_path, data, message):
    with pytest.raises(MucraspError, match=message.replace("[", r"\[")):
        load_profile(_write(tmp_path, data))


def test_unknown_name_and_missing_file():
    with pytest.raises(MucraspError, match="unknown profile 'a10"):
        load_profile("a10")
    with pytest.raises(MucraspError, match="does not exist"):
        load_profile("/nowhere/p.yaml")


def _run_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mucrasp-deploy", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("data, message", BAD)
def test_cli_reports_bad_profile_in_one_line(tmp_path, monkeypatch, capsys, data, message):
    code, err = _run_main(monkeypatch, capsys, "profile", "show", _write(tmp_path, data))
    assert code == 2
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert message.split("'")[-2 if "'" in message else 0] in err


def test_profile_list_and_show():
    result = CliRunner().invoke(app, ["profile", "list"])
    assert result.exit_code == 0 and "jetson-orin-nano-8g" in result.output
    result = CliRunner().invoke(app, ["profile", "show", "a10g"])
    assert result.exit_code == 0 and "memory_bandwidth_gbps" in result.output and "w8a8" in result.output


def test_measure_writes_a_valid_profile(tmp_path):
    result = CliRunner().invoke(app, ["profile", "measure", "--name", "local"])
    assert result.exit_code == 0, result.output
    profile = load_profile("local")  # found by name in the user folder
    assert profile.memory_gb > 0 and profile.memory_bandwidth_gbps > 0 and profile.dense_tflops > 0
    assert load_profile(tmp_path / "user-profiles" / "local.yaml") == profile
    again = CliRunner().invoke(app, ["profile", "measure", "--name", "local"])
    assert isinstance(again.exception, MucraspError) and "already exists" in str(again.exception)


@pytest.mark.parametrize("args", [["profile", "list"], ["profile", "show", "a10g"], ["--help"]])
def test_profile_commands_start_without_torch(args):
    """Deterministic stand-in for a start-up time limit: these commands must not import torch or transformers."""
    code = (
        "import sys\n"
        "from mucrasp.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(3 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
