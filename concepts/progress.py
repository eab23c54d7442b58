"""Progress bars for long work, switchable in one place (tests turn them off)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_enabled: bool | None = None


def set_enabled(enabled: bool | None) -> None:
    """Force progress bars on or off; ``None`` restores the default (on when stderr is a TTY)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether progress bars are shown."""
    if _enabled is not None:
        return _enabled
    if os.environ.get("CONCEPTS_NO_PROGRESS"):
        return False
    return True


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a tqdm bar when progress is enabled."""
    if not enabled():
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


def bar(*, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """Return a manual tqdm bar (disabled when progress is off)."""
    return tqdm(desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=not enabled())
