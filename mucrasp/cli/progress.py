"""A rich progress display behind the library's plain (description, done, total) callback."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from mucrasp.cli.app import err_console

ProgressCallback = Callable[[str, int, int], None]  # as mucrasp.scoring.base defines it (that module loads torch)


@contextlib.contextmanager
def rich_progress(field: str | None = None) -> Iterator[Any]:
    """The bars for a (description, done, total) callback.

    With `field`, each bar also shows that text column, and this yields (update, set_field): `set_field(description,
    text)` changes the text of that description's bar (`recover` shows the latest loss there).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *([TextColumn(f"{{task.fields[{field}]}}")] if field else []),
        console=err_console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total, **({field: ""} if field else {}))
            bar.update(tasks[description], completed=done, total=total)

        def set_field(description: str, text: str) -> None:
            if description in tasks:
                bar.update(tasks[description], **{field: text})

        yield (update, set_field) if field else update
