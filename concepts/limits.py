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
import warnings
from pathlib import Path

from PIL import Image

from concepts.errors import UnsafeInputError, UsageError

#: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (a 1 GiB RGB24 image, 1024**3 // 4 // 3).
DEFAULT_MAX_PIXELS = 89_478_485
ENV = "CONCEPTS_MAX_PIXELS"
HINT = f"raise the limit with --max-pixels N or {ENV}=N if the file is trusted"


def max_pixels() -> int:
    """The pixel limit in force: ``CONCEPTS_MAX_PIXELS`` if set, else Pillow's default."""
    return _env_limit(ENV, DEFAULT_MAX_PIXELS)


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
    # Pillow refuses only above twice MAX_IMAGE_PIXELS (a last line of defence); sizes between the
    # limit and twice it are refused by check_pixels on the header, with our message, so Pillow's
    # warning for them is noise.
    Image.MAX_IMAGE_PIXELS = max_pixels()
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
        raise _err(error, f"{what} of {w} x {h} = {w * h:,} pixels exceeds the limit of {limit:,} pixels ({HINT})", path, item)
    return h, w


def _err(error: type[Exception], message: str, path: str | Path | None, item: str | None) -> Exception:
    try:
        return error(message, path=path, item=item)  # type: ignore[call-arg]
    except TypeError:
        return error(message)




# --- Archives (concepts.archive) ------------------------------------------------------------------
#
# An export archive is refused before it is written out when its members declare more than the
# byte limit, or more than the ratio limit times the archive's own size (a zip bomb); the same
# bounds are enforced again on the bytes actually written, since headers can lie. Archives that
# expand to less than ARCHIVE_RATIO_FLOOR bytes are never refused for their ratio (small exports of
# XML or flat test images compress very well).

#: Largest total an archive may expand to (bytes); CONCEPTS_MAX_ARCHIVE_BYTES overrides it.
DEFAULT_MAX_ARCHIVE_BYTES = 20 * 1024**3
ARCHIVE_BYTES_ENV = "CONCEPTS_MAX_ARCHIVE_BYTES"
#: Largest expanded size / archive size; CONCEPTS_MAX_ARCHIVE_RATIO overrides it.
DEFAULT_MAX_ARCHIVE_RATIO = 100
ARCHIVE_RATIO_ENV = "CONCEPTS_MAX_ARCHIVE_RATIO"
#: Expanded sizes up to this many bytes pass whatever their ratio.
ARCHIVE_RATIO_FLOOR = 64 * 1024**2


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) <= 0:
        raise UsageError(f"{name}={raw!r}: expected a positive whole number")
    return int(raw)


def max_archive_bytes() -> int:
    """The most bytes an archive may expand to: ``CONCEPTS_MAX_ARCHIVE_BYTES`` if set, else 20 GiB."""
    return _env_limit(ARCHIVE_BYTES_ENV, DEFAULT_MAX_ARCHIVE_BYTES)


def max_archive_ratio() -> int:
    """The largest expanded-to-archive size ratio: ``CONCEPTS_MAX_ARCHIVE_RATIO`` if set, else 100."""
    return _env_limit(ARCHIVE_RATIO_ENV, DEFAULT_MAX_ARCHIVE_RATIO)


def archive_budget(archive_size: int) -> tuple[int, str]:
    """How many bytes an archive of ``archive_size`` bytes may expand to, and which limit says so."""
    total = max_archive_bytes()
    by_ratio = max(max_archive_ratio() * archive_size, ARCHIVE_RATIO_FLOOR)
    if by_ratio < total:
        return by_ratio, (f"an archive may expand to {max_archive_ratio()} times its size, or to "
                          f"{ARCHIVE_RATIO_FLOOR:,} bytes when smaller; raise {ARCHIVE_RATIO_ENV} if the archive is trusted")
    return total, f"raise {ARCHIVE_BYTES_ENV} if the archive is trusted"


try:
    apply_to_pillow()
except UsageError:  # a malformed CONCEPTS_MAX_PIXELS is reported by the command that reads it
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
