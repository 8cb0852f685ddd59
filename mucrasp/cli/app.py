"""The Typer app that every command module registers on."""

import typer
from rich.console import Console

app = typer.Typer(
    name="mucrasp-deploy",
    help="Reasoning-aware structured pruning (MuCRASP) and deployment of vision-language models.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def root() -> None:
    """Prune, export and smoke-test models for deployment."""
