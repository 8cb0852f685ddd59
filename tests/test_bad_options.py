"""Bad options through the real CLI: one `error:` line naming the field, exit 2, nothing written.

Every case runs the installed `mucrasp-deploy` console script in a subprocess (the way a user
runs it), inside an empty working folder whose contents are compared before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CLI = str(Path(sys.executable).parent / "mucrasp-deploy")
GOOD_PROFILE = dict(
    name="inf",
    memory_gb=24,
    memory_bandwidth_gbps=600,
    dense_tflops=70,
    dtypes=["fp16", "bf16"],
    gpu_count=1,
    runtime_reserve_gb=1.5,
    gpu_memory_utilization=0.9,
)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))
    }


def _setup(case: str, work: Path, tiny_model_dirs) -> list[str]:
    """Inputs for `case` inside `work`; returns the command line."""
    llama = str(tiny_model_dirs["LlamaForCausalLM"])  # 2 KV groups per layer
    data = work / "data.jsonl"
    data.write_text(json.dumps({"image": None, "prompt": "p", "response": "r. Answer: 1"}) + "\n")
    prune = ["prune", llama, "--ratio", "0.3", "--method", "magnitude", "--out", "out"]
    evaluate = ["eval", llama, "--dense", llama, "--data", str(data)]
    if case == "align":
        return [*prune, "--align", "7"]
    if case == "min_kv_groups":
        return [*prune, "--min-kv-groups", "5"]
    if case == "window":
        return ["score", llama, "--calib", str(data), "--out", "s.scores", "--set", "window=-4"]
    if case == "max_samples_0":
        return ["score", llama, "--calib", str(data), "--out", "s.scores", "--max-samples", "0"]
    if case == "max_samples_neg":
        return ["score", llama, "--calib", str(data), "--out", "s.scores", "--max-samples", "-2"]
    if case == "limit_0":
        return [*evaluate, "--limit", "0", "--json", "r.json"]
    if case == "limit_neg":
        return [*evaluate, "--limit", "-3", "--json", "r.json"]
    if case == "max_new_tokens":
        return [*evaluate, "--max-new-tokens", "0", "--json", "r.json"]
    if case == "min_spot_check":
        (work / "export").mkdir()
        return [
            "smoke",
            str(work / "export"),
            "--backend",
            "transformers",
            "--min-spot-check",
            "5",
            "--report",
            "r.json",
        ]
    if case == "profile_inf":
        (work / "inf.yaml").write_text(yaml.safe_dump({**GOOD_PROFILE, "memory_gb": float("inf")}))
        return ["plan", llama, "--profile", str(work / "inf.yaml"), "--json"]
    if case == "name_empty":
        return ["profile", "measure", "--name", ""]
    if case == "name_path":
        return ["profile", "measure", "--name", "../../evil"]
    if case == "plot_exists":
        (work / "plan.png").write_bytes(b"keep me")
        return ["plan", llama, "--profile", "a10g", "--plot", str(work / "plan.png")]
    if case == "eval_json_exists":
        (work / "r.json").write_text("keep me")
        return [*evaluate, "--json", str(work / "r.json")]
    raise AssertionError(case)


CASES = [
    ("align", "align: must be a power of two"),
    ("min_kv_groups", "min_kv_groups: 5 is more than the 2 KV groups"),
    ("window", "window: Input should be greater than or equal to 1"),
    ("max_samples_0", "max_samples: Input should be greater than or equal to 1"),
    ("max_samples_neg", "max_samples: Input should be greater than or equal to 1"),
    ("limit_0", "limit: Input should be greater than or equal to 1"),
    ("limit_neg", "limit: Input should be greater than or equal to 1"),
    ("max_new_tokens", "max_new_tokens: Input should be greater than or equal to 1"),
    ("min_spot_check", "min_spot_check: Input should be less than or equal to 1"),
    ("profile_inf", "field 'memory_gb': Input should be a finite number"),
    ("name_empty", "name: a profile name must not be empty"),
    ("name_path", "name: '../../evil' is not a profile name"),
    ("plot_exists", "plan.png already exists (pass --overwrite"),
    ("eval_json_exists", "r.json already exists (pass --overwrite"),
]


@pytest.mark.parametrize("case, fragment", CASES, ids=[c for c, _ in CASES])
def test_bad_option_is_one_error_line_and_writes_nothing(case, fragment, tiny_model_dirs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    profiles = tmp_path / "profiles"  # where `profile measure` would write
    args = _setup(case, work, tiny_model_dirs)
    before = _snapshot(work)
    env = {**__import__("os").environ, "MUCRASP_PROFILE_DIR": str(profiles), "MUCRASP_SMOKE_BACKEND": "transformers"}
    result = subprocess.run([CLI, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    assert _snapshot(work) == before
    assert (
        not profiles.exists() and not (tmp_path / "evil.yaml").exists() and not (tmp_path.parent / "evil.yaml").exists()
    )
