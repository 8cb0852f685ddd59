"""Bad input and faults (issue 20): every case ends in exit 2 and one `error:` line, writes nothing and
destroys nothing; a signalled smoke run leaves no server behind; a killed writer's staging is reclaimed.

Commands run through the real entry point (`mucrasp.cli.main`, what `.venv/bin/mucrasp-deploy` runs) in
this process, so that the tiny models are built once; the SIGTERM and `kill -9` cases need real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import export_helpers as h
import httpx
import psutil
import pytest

from mucrasp.tiny_models import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from mucrasp.cli import main; sys.exit(main())"]


# ---- the SIGTERM case: a real `smoke --backend vllm`, one engine start ----------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    """Nothing listens on it. SO_REUSEADDR as the server binds: the killed run's TIME_WAIT connections are no server."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _in_session(sid: int) -> list[psutil.Process]:
    left = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except (psutil.Error, OSError):
            pass
    return left


@pytest.mark.timeout(900)
def test_sigterm_to_smoke_stops_the_whole_vllm_server(tmp_path):
    from mucrasp.export.vllm_checkpoint import export_vllm

    h.make_pruned_checkpoint("LlamaForCausalLM", tmp_path / "pruned", h.per_layer_plan())
    served = export_vllm(tmp_path / "pruned", tmp_path / "served").out
    port = _free_port()
    # Far more load than it can serve before the signal: the server is up and busy when SIGTERM comes.
    smoke = subprocess.Popen(
        [
            *CLI,
            "smoke",
            str(served),
            "--backend",
            "vllm",
            "--port",
            str(port),
            "--max-model-len",
            "256",
            "--requests",
            "100000",
            "--concurrency",
            "2",
            "--max-tokens",
            "64",
            "--report",
            str(tmp_path / "out" / "report.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    server = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and smoke.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert smoke.poll() is None, smoke.communicate()[0][-3000:]
        children = psutil.Process(smoke.pid).children()
        server = next(c for c in children if "vllm.entrypoints.cli.main" in " ".join(c.cmdline()))
        sid = os.getsid(server.pid)
        assert sid == server.pid  # the server leads its own session
        assert len(_in_session(sid)) >= 2  # the API server and at least its engine core
        time.sleep(2)  # requests in flight
        smoke.send_signal(signal.SIGTERM)
        output, _ = smoke.communicate(timeout=60)
        deadline = time.monotonic() + 15
        while (_in_session(sid) or not _port_free(port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _in_session(sid), [p.cmdline() for p in _in_session(sid)]  # no orphan (API server, EngineCore, ...)
        assert _port_free(port)
        assert smoke.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert not (tmp_path / "out" / "report.json").exists()
    finally:
        if smoke.poll() is None:
            smoke.kill()
        if server is not None:
            for process in _in_session(server.pid):
                process.kill()


# ---- the other cases: through the real entry point, in this process --------------------------------------
def run_cli(capsys, *args: str, env: dict | None = None) -> tuple[int, str]:
    """Run `mucrasp-deploy ARGS` as `main()` does; returns (exit code, stderr)."""
    from mucrasp.cli import main

    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = ["mucrasp-deploy", *map(str, args)]
    os.environ.update(env or {})
    capsys.readouterr()
    try:
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in err.replace("\n", ""), err


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` (hidden ones included) and a hash of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense tiny Llama (with tokenizer), its per-layer pruned checkpoint, and broken copies of both."""
    root = tmp_path_factory.mktemp("faults")
    dense = save_tiny_model("LlamaForCausalLM", root / "dense")
    h.save_tokenizer_and_processor(dense, vision=False)
    pruned = root / "pruned"
    h.make_pruned_checkpoint("LlamaForCausalLM", pruned, h.per_layer_plan())
    weights = (pruned / "model.safetensors").read_bytes()

    def broken(name: str, source: Path, damage) -> Path:
        folder = root / name
        shutil.copytree(source, folder)
        damage(folder)
        return folder

    folders = {
        "dense": dense,
        "pruned": pruned,
        "garbage": broken(
            "garbage", dense, lambda f: (f / "model.safetensors").write_bytes(b"\x00not safetensors at all")
        ),
        "truncated": broken(
            "truncated",
            dense,
            lambda f: (f / "model.safetensors").write_bytes((dense / "model.safetensors").read_bytes()[:50_000]),
        ),
        "pruned_truncated": broken(
            "pruned_truncated",
            pruned,
            lambda f: (f / "model.safetensors").write_bytes(weights[: len(weights) * 2 // 3]),
        ),
        "pruned_no_weights": broken("pruned_no_weights", pruned, lambda f: (f / "model.safetensors").unlink()),
        "pruned_bad_manifest": broken(
            "pruned_bad_manifest", pruned, lambda f: (f / "pruning.json").write_text('{"method": "x",')
        ),
        "pruned_wrong_widths": broken("pruned_wrong_widths", pruned, _claim_wider_mlp),
        "pruned_missing_shard": broken("pruned_missing_shard", pruned, _index_with_a_missing_shard),
    }
    data = root / "data"
    data.mkdir()
    (data / "good.jsonl").write_text(
        "\n".join(
            json.dumps({"image": None, "prompt": "how many red squares", "response": "one two so the answer is two"})
            for _ in range(2)
        )
        + "\n"
    )
    (data / "latin1.jsonl").write_bytes(
        b'{"image": null, "prompt": "caf\xe9 count", "response": "the answer is two"}\n'
    )
    (data / "a_file").write_text("a regular file: nothing can be created under it, not even by root\n")
    folders["data"] = data
    return folders


def _claim_wider_mlp(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["layer_intermediate_sizes"][1] += 8  # the weights stay as they are
    (folder / "config.json").write_text(json.dumps(config))


def _index_with_a_missing_shard(folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {key: "model-00001-of-00002.safetensors" for key in keys}
    weight_map[keys[-1]] = "model-00002-of-00002.safetensors"  # never written
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# Each case: (name, args with {placeholders}, the text the error must contain, the folders that must not change).
# {out} is a fresh path in the test's tmp_path; {file} is a regular file (root cannot create anything under it).
CASES = [
    # data loss: an output that is, or is inside, an input; an input inside the output
    (
        "prune-out-is-source",
        ["prune", "{dense}", "--out", "{dense}", "--overwrite", "--ratio", "0.3"],
        "input",
        ["dense"],
    ),
    (
        "prune-out-inside-source",
        ["prune", "{dense}", "--out", "{dense}/pruned", "--ratio", "0.3"],
        "inside the input",
        ["dense"],
    ),
    (
        "prune-out-is-parent-of-source",
        ["prune", "{dense}", "--out", "{dense}/..", "--overwrite", "--ratio", "0.3"],
        "inside the output",
        ["dense"],
    ),
    (
        "prune-out-is-symlink-to-source",
        ["prune", "{dense}", "--out", "{link_to_dense}", "--overwrite", "--ratio", "0.3"],
        "input",
        ["dense"],
    ),
    (
        "export-vllm-out-is-source",
        ["export", "vllm", "{pruned}", "--out", "{pruned}", "--overwrite"],
        "input",
        ["pruned"],
    ),
    (
        "export-onnx-out-is-source",
        ["export", "onnx", "{pruned}", "--out", "{pruned}", "--overwrite"],
        "input",
        ["pruned"],
    ),
    (
        "chain-out-is-parent-of-model",
        [
            "--profile",
            "a10g",
            "--model",
            "{dense}",
            "--ratio",
            "0.3",
            "--method",
            "magnitude",
            "--out",
            "{dense}/..",
            "--overwrite",
        ],
        "inside the output",
        ["dense"],
    ),
    # a broken model.safetensors: one line naming the file
    (
        "prune-garbage-weights",
        ["prune", "{garbage}", "--out", "{out}", "--ratio", "0.3"],
        "garbage/model.safetensors",
        ["garbage"],
    ),
    (
        "prune-truncated-weights",
        ["prune", "{truncated}", "--out", "{out}", "--ratio", "0.3"],
        "truncated/model.safetensors",
        ["truncated"],
    ),
    (
        "prune-overwrite-from-garbage-keeps-old",
        ["prune", "{garbage}", "--out", "{existing}", "--overwrite", "--ratio", "0.3"],
        "garbage/model.safetensors",
        ["garbage", "existing"],
    ),
    (
        "export-onnx-truncated",
        ["export", "onnx", "{pruned_truncated}", "--out", "{out}"],
        "pruned_truncated/model.safetensors",
        ["pruned_truncated"],
    ),
    (
        "eval-truncated",
        ["eval", "{pruned_truncated}", "--dense", "{dense}", "--data", "{data}/good.jsonl", "--limit", "1"],
        "pruned_truncated/model.safetensors",
        ["pruned_truncated", "dense"],
    ),
    (
        "chain-garbage-model",
        ["--profile", "a10g", "--model", "{garbage}", "--ratio", "0.3", "--method", "magnitude", "--out", "{out}"],
        "garbage/model.safetensors",
        ["garbage"],
    ),
    # data that is not UTF-8
    (
        "score-calib-not-utf8",
        ["score", "{dense}", "--calib", "{data}/latin1.jsonl", "--out", "{out}", "--method", "taylor"],
        "latin1.jsonl",
        ["dense", "data"],
    ),
    (
        "chain-calib-not-utf8",
        [
            "--profile",
            "a10g",
            "--model",
            "{dense}",
            "--calib",
            "{data}/latin1.jsonl",
            "--ratio",
            "0.3",
            "--out",
            "{out}",
        ],
        "latin1.jsonl",
        ["dense", "data"],
    ),
    (
        "eval-data-not-utf8",
        ["eval", "{pruned}", "--dense", "{dense}", "--data", "{data}/latin1.jsonl"],
        "latin1.jsonl",
        ["pruned", "dense", "data"],
    ),
    # outputs nobody can create (their parent is a regular file: NotADirectoryError, root included)
    (
        "prune-unwritable",
        ["prune", "{dense}", "--out", "{file}/pruned", "--ratio", "0.3"],
        "cannot write to",
        ["dense", "data"],
    ),
    # sysfs refuses new entries to root as well (EACCES): this one fails late, in the writer itself
    (
        "prune-into-sysfs",
        ["prune", "{dense}", "--out", "/sys/mucrasp-faults-pruned", "--ratio", "0.3"],
        "cannot write to /sys/mucrasp-faults-pruned: permission denied",
        ["dense"],
    ),
    (
        "score-unwritable",
        ["score", "{dense}", "--method", "magnitude", "--out", "{file}/model.scores"],
        "cannot write to",
        ["dense", "data"],
    ),
    (
        "plan-plot-unwritable",
        ["plan", "{dense}", "--profile", "a10g", "--plot", "{file}/plan.png"],
        "cannot write to",
        ["dense", "data"],
    ),
    (
        "profile-measure-unwritable",
        ["profile", "measure", "--name", "faults", "--out", "{file}/faults.yaml"],
        "cannot write to",
        ["data"],
    ),
    (
        "eval-json-unwritable",
        [
            "eval",
            "{pruned}",
            "--dense",
            "{dense}",
            "--data",
            "{data}/good.jsonl",
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
            "--json",
            "{file}/eval.json",
        ],
        "cannot write to",
        ["pruned", "dense", "data"],
    ),
    (
        "smoke-report-unwritable",
        [
            "smoke",
            "{pruned}",
            "--backend",
            "transformers",
            "--requests",
            "1",
            "--max-tokens",
            "2",
            "--report",
            "{file}/report.json",
        ],
        "cannot write to",
        ["pruned", "data"],
    ),
    (
        "chain-unwritable",
        [
            "--profile",
            "a10g",
            "--model",
            "{dense}",
            "--ratio",
            "0.3",
            "--method",
            "magnitude",
            "--out",
            "{file}/deploy",
        ],
        "cannot write to",
        ["dense", "data"],
    ),
    # a pruning.json that is not JSON
    (
        "export-vllm-bad-manifest",
        ["export", "vllm", "{pruned_bad_manifest}", "--out", "{out}"],
        "pruning.json",
        ["pruned_bad_manifest"],
    ),
    (
        "eval-bad-manifest",
        ["eval", "{pruned_bad_manifest}", "--dense", "{dense}", "--data", "{data}/good.jsonl", "--limit", "1"],
        "pruning.json is not valid JSON",
        ["pruned_bad_manifest", "dense"],
    ),
    # weights that do not match: refuse to export them
    (
        "export-vllm-truncated-weights",
        ["export", "vllm", "{pruned_truncated}", "--out", "{out}"],
        "pruned_truncated/model.safetensors",
        ["pruned_truncated"],
    ),
    (
        "export-vllm-no-weights",
        ["export", "vllm", "{pruned_no_weights}", "--out", "{out}"],
        "no safetensors weights",
        ["pruned_no_weights"],
    ),
    (
        "export-vllm-wrong-widths",
        ["export", "vllm", "{pruned_wrong_widths}", "--out", "{out}"],
        "mlp.gate_proj.weight has shape",
        ["pruned_wrong_widths"],
    ),
    (
        "export-vllm-missing-shard",
        ["export", "vllm", "{pruned_missing_shard}", "--out", "{out}"],
        "model-00002-of-00002.safetensors",
        ["pruned_missing_shard"],
    ),
]


@pytest.mark.parametrize("name,args,needle,unchanged", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_nothing_written_or_destroyed(
    models, tmp_path, capsys, name, args, needle, unchanged
):
    # Private copies of the folders a case names: a case that destroys its input harms no other case.
    inputs = tmp_path / "in"
    folders = {
        key: Path(shutil.copytree(folder, inputs / folder.name, symlinks=True))
        for key, folder in models.items()
        if "{" + key + "}" in " ".join(args)
    }
    folders["dense"] = folders.get("dense") or models["dense"]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("the previous output\n")
    (tmp_path / "link_to_dense").symlink_to(folders["dense"], target_is_directory=True)
    where = {
        **{k: str(v) for k, v in folders.items()},
        "out": str(tmp_path / "out"),
        "file": str(models["data"] / "a_file"),
        "existing": str(existing),
        "link_to_dense": str(tmp_path / "link_to_dense"),
    }
    folders["existing"] = existing
    folders.setdefault("data", models["data"])
    before = {key: tree_digest(folders[key]) for key in unchanged}
    siblings = {key: sorted(p.name for p in folders[key].parent.iterdir()) for key in unchanged}
    listing = sorted(p.name for p in tmp_path.iterdir())

    code, err = run_cli(capsys, *[a.format(**where) for a in args], env={"MUCRASP_SMOKE_BACKEND": "transformers"})

    assert_one_error(code, err, needle)
    for key in unchanged:  # nothing destroyed, nothing added (no stray staging folder beside it either)
        assert tree_digest(folders[key]) == before[key], key
        assert sorted(p.name for p in folders[key].parent.iterdir()) == siblings[key], key
    # no {out}, no staging; `score` keeps an empty `<out>.lock` by design (scores_file.scores_lock)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == listing
    if "dense" in unchanged:
        from mucrasp.checkpoint import load_pruned

        load_pruned(folders["dense"])  # the source still loads


@pytest.mark.parametrize(
    "out,inputs,overwrite,needle",
    [
        ("src", ["src"], True, "is the input"),
        ("src/sub", ["src"], False, "is inside the input"),
        (".", ["src"], True, "is inside the output"),
        ("link", ["src"], True, "is the input"),  # a symlink to the input
        ("src/sub", ["other", "link"], False, "is inside the input"),
    ],
)
def test_check_output_dir_refuses_outputs_that_overlap_an_input(tmp_path, monkeypatch, out, inputs, overwrite, needle):
    from mucrasp.atomic_io import check_output_dir
    from mucrasp.errors import MucraspError

    (tmp_path / "src").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "src", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MucraspError, match=needle):
        check_output_dir(Path(out), overwrite, inputs=[Path(i) for i in inputs])
    check_output_dir(tmp_path / "elsewhere", False, inputs=[Path(i) for i in inputs])  # a separate output is fine


# ---- interrupted runs: a `kill -9` mid-write leaves staging that the next run reclaims ---------------------
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mucrasp.atomic_io import atomic_directory
    with atomic_directory(Path(sys.argv[1])) as staging:
        (staging / "weights.bin").write_bytes(b"x" * 100_000)
        print(staging, flush=True)
        time.sleep(600)
""")


def _start_writer(out: Path) -> tuple[subprocess.Popen, Path]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    staging = Path(writer.stdout.readline().strip())
    assert staging.is_dir() and (staging / "weights.bin").is_file(), staging
    return writer, staging


def test_staging_of_a_killed_writer_is_removed_and_a_live_writers_is_kept(tmp_path, caplog):
    from mucrasp.atomic_io import atomic_directory

    out = tmp_path / "model"
    killed, stale = _start_writer(out)
    live, running = _start_writer(out)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert stale.is_dir()  # nothing could clean up after a SIGKILL
        with caplog.at_level("WARNING", logger="mucrasp.atomic_io"):
            with atomic_directory(out) as staging:
                (staging / "done.txt").write_text("ok\n")
        assert not stale.exists()
        assert any(str(stale) in message and "interrupted" in message for message in caplog.messages), caplog.messages
        assert running.is_dir() and (running / "weights.bin").is_file()  # its writer is still at work
        assert (out / "done.txt").read_text() == "ok\n"
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert leftovers == sorted(["model", running.name]), leftovers
    finally:
        live.kill()
        live.wait(timeout=30)


def test_output_stranded_between_the_two_renames_is_restored(tmp_path):
    """A crash after the old output moved aside and before the new one moved in: the old one comes back."""
    from mucrasp.atomic_io import check_output_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "v1.txt").write_text("first\n")
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import os, sys
        from pathlib import Path
        import mucrasp.atomic_io as a
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if Path(dst).name == "old":  # the first rename happened: die before the second
                os._exit(137)
        a.os.replace = replace
        with a.atomic_directory(Path(sys.argv[1]), overwrite=True) as staging:
            (staging / "v2.txt").write_text("second")
    """),
            str(out),
        ],
        cwd=ROOT,
    )
    assert crashed.returncode == 137 and not out.exists()
    check_output_dir(out, overwrite=True)  # what the next run for this output does first
    assert (out / "v1.txt").read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---- the same handlers for SIGINT and SIGHUP, on a stand-in server tree (no engine: fast) ---------------
STAND_IN = textwrap.dedent("""
    import signal, subprocess, sys, time
    from pathlib import Path
    import mucrasp.serve.vllm_server as v
    v.SIGNAL_GRACE_S = 1.0
    server = v.VllmServer(Path(sys.argv[1]), Path(sys.argv[1]) / "server.log")
    # A tree like vLLM's: a leader, and a child that ignores SIGTERM (it must get SIGKILL after the grace).
    server.args = [sys.executable, "-c",
                   "import signal, subprocess, sys, time; "
                   "subprocess.Popen([sys.executable, '-c', \
'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
                   "time.sleep(600)"]
    before = signal.getsignal(signal.SIGTERM)
    server.start()
    assert signal.getsignal(signal.SIGTERM) == server._on_signal
    if sys.argv[2] == "normal":
        time.sleep(1)
        server.stop(grace_s=1.0)
        server.stop()  # idempotent
        assert signal.getsignal(signal.SIGTERM) == before, "previous handler restored"
        print(server.process.pid, flush=True)
        sys.exit(0)
    print(server.process.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("how", ["SIGINT", "SIGHUP", "SIGTERM", "normal"])
def test_server_tree_stopped_on_signal_or_normal_exit(tmp_path, how):
    owner = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(tmp_path), how], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    sid = None
    try:
        sid = int(owner.stdout.readline())
        if how != "normal":
            deadline = time.monotonic() + 20
            while len(_in_session(sid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(_in_session(sid)) == 2  # the leader and its SIGTERM-proof child
            owner.send_signal(getattr(signal, how))
        code = owner.wait(timeout=30)
        assert code == (0 if how == "normal" else 128 + getattr(signal, how))
        assert not _in_session(sid), [p.cmdline() for p in _in_session(sid)]
    finally:
        owner.kill()
        if sid is not None:
            for process in _in_session(sid):
                process.kill()


WORKER_OWNER = textwrap.dedent("""
    import signal, subprocess, sys, time
    from mucrasp.serve.vllm_server import stop_session_on_signals
    worker = subprocess.Popen([sys.executable, "-c",
                               "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); \
time.sleep(600)"],
                              start_new_session=True)
    before = signal.getsignal(signal.SIGTERM)
    with stop_session_on_signals(worker, grace_s=1.0):
        print(worker.pid, flush=True)
        if sys.argv[1] == "normal":
            pass
        else:
            time.sleep(600)
    assert signal.getsignal(signal.SIGTERM) == before
    worker.kill()
""")


@pytest.mark.parametrize("how", ["SIGTERM", "normal"])
def test_offline_worker_session_stopped_on_signal(tmp_path, how):
    owner = subprocess.Popen([sys.executable, "-c", WORKER_OWNER, how], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    sid = int(owner.stdout.readline())
    try:
        if how == "normal":
            assert owner.wait(timeout=30) == 0
            return
        deadline = time.monotonic() + 20
        while len(_in_session(sid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_in_session(sid)) == 2
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=30) == 128 + signal.SIGTERM
        assert not _in_session(sid), [p.cmdline() for p in _in_session(sid)]
    finally:
        owner.kill()
        for process in _in_session(sid):
            process.kill()


STUCK_EXIT_OWNER = textwrap.dedent("""
    import subprocess, sys, threading, time
    import mucrasp.serve.vllm_server as v
    v.SIGNAL_EXIT_S = 2.0
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    # What a request thread stuck in a read does to the exit: the interpreter joins it, forever.
    threading.Thread(target=time.sleep, args=(600,), name="stuck-request").start()
    with v.stop_session_on_signals(worker, grace_s=1.0):
        print(worker.pid, flush=True)
        time.sleep(600)
""")


def test_exit_after_a_stopping_signal_is_bounded_and_says_what_held_it_up():
    """The server is stopped at once; if something then holds the interpreter's exit, a watchdog prints
    every thread's stack and ends the process within SIGNAL_EXIT_S instead of hanging on."""
    owner = subprocess.Popen(
        [sys.executable, "-c", STUCK_EXIT_OWNER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    sid = int(owner.stdout.readline())
    try:
        owner.send_signal(signal.SIGTERM)
        _, stderr = owner.communicate(timeout=30)
        assert owner.returncode == 1, stderr  # the watchdog's exit, not a hang (without it: 600 s)
        assert stderr.startswith("Timeout (0:00:02)!"), stderr
        assert "in _shutdown" in stderr  # the main thread's stack: the exit, joining the stuck thread
        assert not _in_session(sid)
    finally:
        owner.kill()
        for process in _in_session(sid):
            process.kill()
