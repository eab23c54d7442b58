"""Lists of names inside one-line messages, cut to a readable length."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

LIMIT = 10


def shorten(items: Iterable[Any], limit: int = LIMIT, *, sep: str = ", ") -> str:
    """Join names, keeping the first ``limit`` and ending with "... and N more" for the rest."""
    names = [str(i) for i in items]
    if len(names) <= limit:
        return sep.join(names)
    return sep.join(names[:limit]) + f"{sep}... and {len(names) - limit} more"
