"""Progress bars for long work, switchable in one place (tests turn them off).

Bars are drawn only where a person watches: on when stderr is a terminal, off otherwise (a log
piped to a file must not fill with carriage returns) and off with ``--quiet``. ``--progress`` /
``--no-progress`` or ``CONCEPTS_PROGRESS=1``/``0`` force them either way (``CONCEPTS_NO_PROGRESS=1``
still turns them off).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_enabled: bool | None = None
_quiet = False
_ON = {"1", "true", "yes", "on"}
_OFF = {"0", "false", "no", "off"}


def set_enabled(enabled: bool | None) -> None:
    """Force progress bars on or off; ``None`` restores the default (on when stderr is a TTY)."""
    global _enabled
    _enabled = enabled


def set_quiet(quiet: bool) -> None:
    """With ``--quiet`` bars are off unless forced on."""
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    """Whether progress bars are shown: forced by option or environment, else only on a terminal."""
    if _enabled is not None:
        return _enabled
    forced = os.environ.get("CONCEPTS_PROGRESS", "").strip().lower()
    if forced in _ON:
        return True
    if forced in _OFF or os.environ.get("CONCEPTS_NO_PROGRESS") or _quiet:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a tqdm bar when progress is enabled."""
    if not enabled():
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


def bar(*, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """Return a manual tqdm bar (disabled when progress is off)."""
    return tqdm(desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=not enabled())
