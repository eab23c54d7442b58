"""Reading single bands of colour-encoded label images without unpacking whole RGB arrays.

ADE20K (``_seg.png``, ``_parts_N.png``) and OpenSurfaces (``photos-labels/``) encode ids in the
red and green channels. Taking the bands PIL already holds separately is several times cheaper
than ``np.asarray`` of the RGB image followed by channel slicing, which these builders did for
every layer of every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.builders._raster import check_canvas, read_rgb_channels
from concepts.errors import SourceItemError

#: ``R // 10`` for every red value: the ADE20K class high byte (FORMATS.md B.1).
_TENTHS = [v // 10 for v in range(256)]


def read_bands(path: Path, bands: Sequence[int], *, what: str = "annotation") -> list[Image.Image]:
    """The given bands (0 red, 1 green, 2 blue) of an 8-bit RGB(A) label image, as ``L`` images.

    Errors are the ones :func:`builders._raster.read_rgb_channels` raises (a missing file, an
    undecodable file, a mode other than 8-bit RGB), with the same messages, and the pixel limit
    of :mod:`concepts.limits` (reason ``image too large``).
    """
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                # The one pixel limit, before decoding (Pillow itself only refuses twice its limit).
                check_canvas(im.width, im.height, path, what=what)
                im.load()
                return [im.getchannel(b) for b in bands]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, SourceItemError):
            raise
        # the general reader below reports the problem the standard way
    rgb = read_rgb_channels(path, what=what)
    return [Image.fromarray(np.ascontiguousarray(rgb[..., b]), "L") for b in bands]


def red_not_tens(red: Image.Image) -> bool:
    """Whether a red band holds values that are not multiples of 10."""
    hist = red.histogram()
    return any(hist[v] for v in range(256) if v % 10)


def ade_classes(red: Image.Image, green: Image.Image) -> np.ndarray:
    """ADE20K class ids ``(R // 10) * 256 + G`` as a read-only uint16 array (at most 25 * 256 + 255)."""
    # Interleaving G (low byte) and R // 10 (high byte) as an LA image gives the little-endian
    # uint16 ids in one pass and one allocation.
    packed = Image.merge("LA", (green, red.point(_TENTHS))).tobytes()
    return np.frombuffer(packed, dtype="<u2").reshape(red.height, red.width)
