"""Broden's colour category: 11 colour names per pixel (van de Weijer et al. 2009).

The table ``data/w2color.npy`` (see ``data/ATTRIBUTION.txt``) maps quantised RGB
``[R//8, G//8, B//8]`` to 0..10; source ids are that plus one, names get the suffix ``-c``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

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


def color_ids(rgb: np.ndarray) -> np.ndarray:
    """Colour id (1..11) of every pixel of an ``H x W x 3`` uint8 RGB image."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    # 15-bit indices fit uint16: a quarter of the memory traffic of intp on full-size photos.
    index = (rgb[..., 0] >> 3).astype(np.uint16) << 10
    index |= (rgb[..., 1] >> 3).astype(np.uint16) << 5
    index |= rgb[..., 2] >> 3
    return color_table().take(index)
