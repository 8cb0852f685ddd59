"""The `mucrasp-deploy` command line. Each command lives in its own module and calls one library
function; a new command is one module plus one import below.

Command modules import library code inside their command functions, so `--help`, option errors,
`profile list` and `plan` start without torch. `main` runs the Typer app with
`standalone_mode=False` and reports every outcome itself: a usage error or a MucraspError is one
`error:` line and exit 2, Ctrl-C is "interrupted: nothing was written" and exit 130.
"""

from __future__ import annotations

import os
import sys
import warnings

# Importing a command module registers its command on `app`.
from mucrasp.cli import (  # noqa: E402,F401
    eval_command,
    export_command,
    plan_command,
    profile_command,
    prune_command,
    recover_command,
    score_command,
    smoke_command,
)
from mucrasp.cli.app import app, err_console
from mucrasp.errors import MucraspError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _quiet_transformers() -> None:
    # The CLI draws its own progress; transformers' per-file bars and config chatter are noise here.
    # Set through the environment so that transformers is not imported just to silence it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _warnings_as_lines() -> None:
    """mucrasp's own warnings (e.g. a calibration record cut to max_seq_len) are one `warning:` line."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("mucrasp."):
            err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True, markup=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    import typer
    from typer._click.exceptions import ClickException  # typer vendors click; these are the ones it raises

    _quiet_transformers()
    _warnings_as_lines()
    try:
        code = app(args=argv, standalone_mode=False)
    except MucraspError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except ClickException as exc:  # usage errors: bad option, missing argument, bad value
        message = " ".join(exc.format_message().split())
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        err_console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
    if code == EXIT_INTERRUPTED:
        # Typer turns Ctrl-C inside a command into a silent exit 130 (its `except KeyboardInterrupt`
        # runs before ours could); no command exits 130 itself, so the code says it was interrupted.
        # Every writer stages its output and renames it into place only when complete.
        err_console.print("[bold red]interrupted[/]: nothing was written")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
