"""Option types shared by several commands."""

from __future__ import annotations

import re

from concepts.errors import UsageError
from concepts.limits import check_pixels

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?$")


def parse_size(text: str | None, option: str) -> tuple[int, int] | None:
    """Parse ``224`` (square) or ``HxW`` into ``(height, width)``, within the pixel limit."""
    if text is None:
        return None
    match = _SIZE.match(text) if text.isascii() else None
    if not match or int(match[1]) <= 0 or (match[2] is not None and int(match[2]) <= 0):
        raise UsageError(f"{option} {text!r}: expected a positive size N or HxW")
    h = int(match[1])
    w = int(match[2]) if match[2] else h
    check_pixels(w, h, what=option, error=UsageError)
    return (h, w)
