"""Tables printed by the CLI, drawn with rich as the typer ecosystem does."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any


def _console(stream: Any = None) -> Any:
    from rich.console import Console

    stream = stream if stream is not None else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    # Piped output: no colour codes and no wrapping to an invented 80 columns, so a log stays greppable.
    return Console(file=stream, highlight=False, no_color=not terminal, width=None if terminal else 10_000,
                   emoji=False, markup=False, force_terminal=terminal)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
                numeric: Sequence[bool] | None = None, stream: Any = None) -> None:
    """Print rows under column headings; numeric columns are right-aligned."""
    from rich import box
    from rich.table import Table

    console = _console(stream)
    terminal = console.is_terminal
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD if terminal else box.ASCII2,
                  show_edge=terminal, header_style="bold" if terminal else "", title_style="bold" if terminal else "")
    for i, name in enumerate(columns):
        right = bool(numeric[i]) if numeric is not None else False
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)


def print_lines(lines: Iterable[str], *, stream: Any = None) -> None:
    """Print plain lines through the same console, so they interleave with tables in order."""
    console = _console(stream)
    for line in lines:
        console.print(line, soft_wrap=True)
