"""Bounds on untrusted input: one pixel limit for every size that a file or the command line declares.

Every width x height that the tool reads (an image header, a declared annotation size, an RLE
``size``, ``--size``) goes through :func:`check_pixels` before anything is allocated. The limit is
Pillow's own decompression-bomb limit by default and is raised or lowered in one place: the
``--max-pixels`` option of the ``concepts`` command or the ``CONCEPTS_MAX_PIXELS`` environment
variable (worker processes inherit it through the environment).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image

from concepts.errors import UnsafeInputError, UsageError

#: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (a 1 GiB RGB24 image, 1024**3 // 4 // 3).
DEFAULT_MAX_PIXELS = 89_478_485
ENV = "CONCEPTS_MAX_PIXELS"
HINT = f"raise the limit with --max-pixels N or {ENV}=N if the file is trusted"


def max_pixels() -> int:
    """The pixel limit in force: ``CONCEPTS_MAX_PIXELS`` if set, else Pillow's default."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isascii() or not raw.isdigit() or int(raw) <= 0:
        raise UsageError(f"{ENV}={raw!r}: expected a positive whole number of pixels")
    return int(raw)


def set_max_pixels(limit: int | None) -> None:
    """Set the pixel limit for this process, its workers and Pillow's own bomb check (None: default)."""
    if limit is None:
        os.environ.pop(ENV, None)
    else:
        if limit <= 0:
            raise UsageError(f"--max-pixels {limit}: expected a positive number of pixels")
        os.environ[ENV] = str(int(limit))
    apply_to_pillow()


def apply_to_pillow() -> None:
    """Make Pillow refuse (not only warn about) images above the limit when decoding."""
    Image.MAX_IMAGE_PIXELS = max_pixels()


def check_pixels(
    width: object,
    height: object,
    *,
    what: str = "image",
    path: str | Path | None = None,
    item: str | None = None,
    error: type[Exception] = UnsafeInputError,
) -> tuple[int, int]:
    """Validate a declared ``width x height`` before allocating; return ``(height, width)`` as ints.

    Non-numbers, non-finite and non-positive values and sizes above the limit raise ``error`` (a
    ConceptsError subclass taking ``path``/``item``) with one line naming the value.
    """
    dims = []
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool):
            raise _err(error, f"{what} {name} {value!r} is not a number", path, item)
        try:
            number = float(value) if not isinstance(value, int) else value
        except (TypeError, ValueError, OverflowError):
            raise _err(error, f"{what} {name} {value!r} is not a number", path, item) from None
        if isinstance(number, float):
            if not math.isfinite(number):
                raise _err(error, f"{what} {name} {value!r} is not finite", path, item)
            if number != int(number):
                raise _err(error, f"{what} {name} {value!r} is not a whole number", path, item)
            number = int(number)
        if number <= 0:
            raise _err(error, f"{what} {name} {value!r} is not positive", path, item)
        dims.append(number)
    w, h = dims
    limit = max_pixels()
    if w * h > limit:
        raise _err(error, f"{what} size {w} x {h} = {w * h:,} pixels exceeds the limit of {limit:,} pixels ({HINT})", path, item)
    return h, w


def _err(error: type[Exception], message: str, path: str | Path | None, item: str | None) -> Exception:
    try:
        return error(message, path=path, item=item)  # type: ignore[call-arg]
    except TypeError:
        return error(message)


apply_to_pillow()
