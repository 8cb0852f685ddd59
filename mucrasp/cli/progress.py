"""A rich progress display behind the library's plain (description, done, total) callback."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from mucrasp.cli.app import err_console

ProgressCallback = Callable[[str, int, int], None]  # as mucrasp.scoring.base defines it (that module loads torch)


@contextlib.contextmanager
def rich_progress() -> Iterator[ProgressCallback]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        yield update
