"""Helpers shared by the builders: decoding annotation images into label-id arrays, and finding
where a release sits inside the folder a user named (or an archive was extracted to).

Every failure to read one item's file becomes a :class:`~concepts.errors.SourceItemError`, so the
unifier skips that item (or stops under ``--strict``) with one line naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.errors import SourceItemError

log = logging.getLogger(__name__)


def read_image_array(path: Path, *, what: str = "annotation") -> np.ndarray:
    """Decode an image file into an array as stored (no mode conversion)."""
    try:
        with Image.open(path) as im:
            im.load()
            # Palette images stay indices (the ids); nothing is converted here.
            return np.asarray(im)
    except FileNotFoundError:
        raise SourceItemError(f"{what} is missing", path=path, reason=f"missing {what}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SourceItemError(f"cannot decode {what}: {e}", path=path, reason=f"unreadable {what}") from None


def read_rgb_channels(path: Path, *, what: str = "annotation") -> np.ndarray:
    """Decode an RGB(A) label image into an ``H x W x 3`` uint8 array; other modes skip the item."""
    arr = read_image_array(path, what=what)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        shape = "x".join(str(s) for s in arr.shape)
        raise SourceItemError(
            f"{what} must be an 8-bit RGB image (colour-encoded ids), got {shape} {arr.dtype}",
            path=path,
            reason=f"bad {what}",
        )
    return arr[..., :3]


def read_id_channel(path: Path, *, what: str = "annotation") -> np.ndarray:
    """Decode a single-channel (8/16-bit or palette) label image into an ``H x W`` int32 id array."""
    arr = read_image_array(path, what=what)
    if arr.ndim != 2 or arr.dtype.kind not in "uib" or (arr.dtype.kind == "i" and arr.min(initial=0) < 0):
        shape = "x".join(str(s) for s in arr.shape)
        raise SourceItemError(
            f"{what} must be a single-channel image of class ids, got {shape} {arr.dtype}",
            path=path,
            reason=f"bad {what}",
        )
    return arr.astype(np.int32)


def ade_class_map(rgb: np.ndarray, path: Path) -> np.ndarray:
    """ADE20K class ids of an RG-encoded ``_seg.png``/``_parts_N.png``: ``(R // 10) * 256 + G``."""
    red = rgb[..., 0]
    if np.any(red % 10):
        # MATLAB's converter rounds R/10; real files hold multiples of 10, so floor is equal there.
        log.warning("%s: red values that are not multiples of 10; class ids use R // 10", path)
    # uint16 holds every class (at most 25 * 256 + 255) at half the memory traffic of int32.
    return ((red // 10).astype(np.uint16) << 8) | rgb[..., 1]


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image header without decoding it, or None when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def unknown_ids(ids: np.ndarray, known: int) -> list[int]:
    """The ids of a label array that fall outside ``1..known`` (0 is unlabeled), sorted."""
    values = np.unique(ids)
    return [int(v) for v in values if v < 0 or v > known]


def present_ids(layer: np.ndarray) -> list[int]:
    """The distinct non-zero ids of a label array, ascending."""
    flat = layer.ravel()
    if flat.size and 0 <= flat.min() and flat.max() < 1 << 20:
        return [int(i) for i in np.flatnonzero(np.bincount(flat)) if i]
    return [int(i) for i in np.unique(flat) if i]


def candidate_dirs(path: Path, preferred: str) -> list[Path]:
    """``path``, its conventional child ``preferred``, then its other sub-folders, in that order.

    Releases are often named by their parent folder, or extracted from an archive into one.
    """
    out = [path, path / preferred]
    if path.is_dir():
        out += sorted(p for p in path.iterdir() if p.is_dir() and p.name not in (preferred, "images"))
    return out
