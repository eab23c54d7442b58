"""Broden's colour category: 11 colour names per pixel (van de Weijer et al. 2009).

The table ``data/w2color.npy`` (see ``data/ATTRIBUTION.txt``) maps quantised RGB
``[R//8, G//8, B//8]`` to 0..10; source ids are that plus one, names get the suffix ``-c``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image

from concepts.labelcount import intp_scratch
from concepts.vocabulary import COLOR_NAMES

COLOR_CATEGORY = "color"
COLOR_SOURCE = "color"
#: ``{(category, id): names}`` for the 11 colour labels.
COLOR_LABEL_NAMES: dict[tuple[str, int], tuple[str, ...]] = {
    (COLOR_CATEGORY, i + 1): (f"{name}-c",) for i, name in enumerate(COLOR_NAMES)
}


@lru_cache(maxsize=1)
def color_table() -> np.ndarray:
    """The flat 32768-entry lookup table of colour ids (1..11), indexed ``r*1024 + g*32 + b``."""
    with resources.files("concepts.data").joinpath("w2color.npy").open("rb") as f:
        table = np.load(f)
    return (table.astype(np.uint8) + 1).reshape(-1)


@lru_cache(maxsize=1)
def _packed_table() -> np.ndarray:
    """The table re-indexed by ``(R >> 3) | (G >> 3) << 8 | (B >> 3) << 16`` (2 MiB, mostly unused).

    That index is what one shift and one mask make of a pixel read as a little-endian ``RGBX``
    uint32, so a photo is named in three vectorised steps instead of nine.
    """
    r, g, b = np.meshgrid(np.arange(32), np.arange(32), np.arange(32), indexing="ij")
    table = np.zeros(1 << 21, dtype=np.uint8)
    table[r | g << 8 | b << 16] = color_table()[r << 10 | g << 5 | b]
    return table


def color_ids(rgb: np.ndarray | Image.Image) -> np.ndarray:
    """Colour id (1..11) of every pixel of an ``H x W x 3`` uint8 RGB array or an RGB PIL image."""
    if isinstance(rgb, Image.Image) and rgb.mode == "RGB":
        # PIL stores RGB as 4 bytes a pixel: reading it as RGBX is a copy without repacking.
        packed = np.frombuffer(rgb.tobytes("raw", "RGBX"), dtype="<u4").reshape(rgb.height, rgb.width)
    else:
        arr = np.asarray(rgb, dtype=np.uint8)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {arr.shape}")
        packed = arr[..., 0].astype("<u4")
        packed |= arr[..., 1].astype("<u4") << 8
        packed |= arr[..., 2].astype("<u4") << 16
    index = intp_scratch(packed)
    index >>= 3
    index &= 0x1F1F1F
    return _packed_table().take(index)

