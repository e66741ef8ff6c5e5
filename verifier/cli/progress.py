"""Progress bars for long commands (record, reconcile, rehearse): drawn only when the output
stream is a terminal, so piped output and tests read exactly what they read without them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


@contextmanager
def progress(
    description: str, total: int | None, *, stream: IO[str] | None = None
) -> Iterator[Callable[[str], None]]:
    """Yields `advance(label)`: one unit done, `label` shown beside the bar. `total` None draws
    an indeterminate bar (one request whose length is unknown). Nothing is drawn, and no
    escape code written, unless `stream` (default: stdout) is a terminal."""
    out = sys.stdout if stream is None else stream
    if not _is_terminal(out):
        yield lambda _label: None
        return
    # An operator's --scope and a run's labels are text, never rich markup.
    columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn()]
    if total is not None:
        columns.append(MofNCompleteColumn())
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[label]}", markup=False)]
    bar = Progress(*columns, console=Console(file=out, force_terminal=True), transient=True)
    with bar:
        task = bar.add_task(description, total=total, label="")

        def advance(label: str) -> None:
            bar.update(task, advance=1, label=label)

        yield advance
