"""The `mucrasp-deploy` command line. Each command lives in its own module and calls one library
function; a new command is one module plus one import below."""

from __future__ import annotations

import sys

from mucrasp.cli.app import app, err_console
from mucrasp.errors import MucraspError

# Importing a command module registers its command on `app`.
from mucrasp.cli import eval_command, export_command, plan_command, profile_command, prune_command, score_command, smoke_command  # noqa: E402,F401


def main() -> None:
    # The CLI draws its own progress; transformers' per-file bars and config chatter are noise here.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        app(standalone_mode=True)
    except MucraspError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: nothing was written")
        sys.exit(130)


if __name__ == "__main__":
    main()
