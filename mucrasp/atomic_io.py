"""Atomic writes: a checkpoint or report appears whole, or not at all.

Everything is written under a hidden temporary sibling of the destination and renamed into place
at the end. A crash or Ctrl-C midway leaves the temporary folder, which is removed on the way out,
and never a half-written destination. A `kill -9` cannot be cleaned up on the way out, so each
staging folder's name records its writer (`.<name>.partial-<host>-<pid>-<start>-XXXX`): the next
run for the same output removes the ones whose writer is gone, and leaves a live writer's alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import psutil

from mucrasp.errors import MucraspError

log = logging.getLogger(__name__)


def _resolved(path: Path | str) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def check_output_dir(out_dir: Path, overwrite: bool, inputs: Iterable[Path | str | None] = ()) -> None:
    """Refuse to touch an existing output unless asked to; call before any expensive work.

    Also refuses an output that is, or is inside, one of `inputs` (writing there would destroy the
    input), and an input inside the output (`--overwrite` would delete it); symlinks are resolved.
    Removes stale staging folders a killed earlier run left beside `out_dir`.
    """
    out_dir = Path(out_dir)
    real_out = _resolved(out_dir)
    if not out_dir.name or out_dir.name in (".", ".."):
        out_dir = Path(os.path.abspath(out_dir))
    for given in inputs:
        if given is None:
            continue
        real_in = _resolved(given)
        if real_out == real_in:
            raise MucraspError(f"output {out_dir} is the input {given}; choose another --out")
        if real_out.is_relative_to(real_in):
            raise MucraspError(f"output {out_dir} is inside the input {given}; choose another --out")
        if real_in.is_relative_to(real_out):
            raise MucraspError(f"input {given} is inside the output {out_dir}; choose another --out")
    if out_dir.exists() and not overwrite:
        raise MucraspError(f"output directory {out_dir} already exists (pass --overwrite to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise MucraspError(f"output path {out_dir} exists and is not a directory")
    check_writable(out_dir)
    clean_stale_staging(out_dir)


def check_writable(path: Path) -> None:
    """Fail early, naming `path`, when it cannot be created: its nearest existing parent is a file, or unwritable."""
    path = Path(path)
    ancestor = Path(os.path.abspath(path)).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MucraspError(f"cannot write to {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MucraspError(f"cannot write to {path}: permission denied")


def _cannot_write(path: Path, exc: OSError) -> MucraspError:
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir(parents=True) under a regular file says "File exists"
        try:
            check_writable(path)
        except MucraspError as named:
            return named
    reason = (exc.strerror or str(exc)).lower() if exc.errno not in (errno.EACCES, errno.EPERM) else "permission denied"
    return MucraspError(f"cannot write to {path}: {reason}")


# ---- who wrote a staging folder, and is it still running -------------------------------------------------
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-")


def _start_time(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _writer_tag() -> str:
    pid = os.getpid()
    return f"{_HOST}-{pid}-{_start_time(pid) or 0}-"


def _writer_alive(host: str, pid: int, start: int) -> bool:
    if host != _HOST:
        return True  # another machine's writer (a shared file system): we cannot tell, so keep it
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return int(process.create_time()) == start  # the same pid with another start time is a reused pid
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def clean_stale_staging(out_dir: Path) -> list[str]:
    """Remove `.<name>.partial-*` folders of dead writers beside `out_dir` and restore a stranded `.old-*` one.

    A crash between atomic_directory's two renames leaves the previous output inside `.<name>.old-*/old`
    and no `out_dir`: that previous output is moved back. Returns one note per folder handled (also logged).
    """
    out_dir = Path(os.path.abspath(out_dir))
    parent = out_dir.parent
    notes: list[str] = []
    try:
        entries = sorted(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return notes
    for entry in entries:
        match = _STAGING.match(entry.name)
        if not match or match["name"] != out_dir.name or not entry.is_dir():
            continue
        if _writer_alive(match["host"], int(match["pid"]), int(match["start"])):
            continue
        if match["kind"] == "old" and (entry / "old").is_dir() and not out_dir.exists():
            with contextlib.suppress(OSError):
                os.replace(entry / "old", out_dir)
                notes.append(f"restored {out_dir} from {entry.name}, left by an interrupted run (pid {match['pid']})")
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            notes.append(f"removed {entry}, left by an interrupted run (pid {match['pid']}, no longer running)")
    for note in notes:
        log.warning(note)
    return notes


@contextlib.contextmanager
def atomic_directory(
    out_dir: Path, overwrite: bool = False, inputs: Iterable[Path | str | None] = ()
) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces `out_dir` in one rename."""
    out_dir = Path(os.path.abspath(out_dir))  # `--out ..` names the parent, not a folder called ".."
    check_output_dir(out_dir, overwrite, inputs)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{_writer_tag()}", dir=out_dir.parent))
    except OSError as exc:
        raise _cannot_write(out_dir, exc) from None
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    try:
        yield staging
        if out_dir.exists():
            # Move the old output aside first so that at every instant one complete version exists.
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{_writer_tag()}", dir=out_dir.parent))
            os.replace(out_dir, retired / "old")
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON next to its destination, fsync it, then rename it over the destination."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write text next to its destination, fsync it, then rename it over the destination."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_figure_atomic(path: Path, figure, dpi: int = 100) -> None:
    """Render a matplotlib figure to PNG in memory, then write it like any other file: whole or not at all."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomic(Path(path), buffer.getvalue())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes next to their destination, fsync them, then rename them over the destination.

    A destination that cannot be created (a read-only or missing folder, a parent that is a file)
    is one MucraspError naming it: `cannot write to PATH: permission denied`.
    """
    with atomic_file(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary sibling of `path`, fsynced and renamed over it on a clean exit.

    For writers that stream (torch.save of a training state): the destination is whole or absent.
    Errors on creating the file are `write_bytes_atomic`'s one-line MucraspError.
    """
    path = Path(path)
    if path.is_dir():
        raise MucraspError(f"cannot write to {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it private; the result should not be
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
