"""The Broden concept-dataset format: constants and the small codecs every part shares.

Layout (FORMATS.md part A)::

    DATASET/
      README.txt          generation settings (free text, not parsed)
      index.csv           image,split,ih,iw,sh,sw,<one column per category, category.csv order>
      category.csv        name,first,last,count,frequency     (rows sorted by `first`)
      label.csv           number,name,category,frequency,coverage,syns   (numbers 1..N)
      c_<category>.csv    code,number,name,frequency,coverage  (dense codes 1..K per category)
      images/<source>/    JPEG images and RG-encoded label PNGs

* Label PNGs are 8-bit RGB, ``sw x sh``; the unified label number is ``R + 256 * G``, blue is 0,
  0 means unlabeled. One layer is ``<stem>_<category>.png``; several are
  ``<stem>_<category>_<n>.png`` (n = 1, 2, ..., dominant first).
* A category cell of ``index.csv`` is empty (no data), a ``;``-separated list of PNG paths relative
  to ``images/`` (pixel layers), or a ``;``-separated list of label numbers (image-level labels that
  cover every pixel).
* ``label.csv``'s ``category`` cell lists ``cat(freq)`` items by descending frequency; coverage is
  printed fixed-point with six decimals.
* The split of a row is decided by the MD5 of its ``image`` cell (:func:`split_hash`); rows are written
  in ascending hash order.
* NetDissect-Lite stores label numbers as int16, so numbers above 32767 are refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

INDEX_FIXED_COLUMNS: tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw")
CATEGORY_COLUMNS: tuple[str, ...] = ("name", "first", "last", "count", "frequency")
LABEL_COLUMNS: tuple[str, ...] = ("number", "name", "category", "frequency", "coverage", "syns")
CODE_COLUMNS: tuple[str, ...] = ("code", "number", "name", "frequency", "coverage")

INDEX_FILE = "index.csv"
CATEGORY_FILE = "category.csv"
LABEL_FILE = "label.csv"
README_FILE = "README.txt"
SYNS_FILE = "syns.txt"
IMAGES_DIR = "images"

#: The categories of the published Broden, in its column order.
BRODEN_CATEGORIES: tuple[str, ...] = ("color", "object", "part", "material", "scene", "texture")

#: Largest label number NetDissect-Lite can hold (it decodes PNGs to int16).
MAX_LABEL = 32767
#: Largest number the RG encoding can carry.
MAX_RG = 65535

CATEGORY_ITEM = re.compile(r"^(?P<name>[^;()]+)\((?P<count>\d+)\)$")
#: Characters that cannot appear in a label or category name (list separator and `cat(n)` syntax).
FORBIDDEN_NAME_CHARS = ";()"


def code_file(category: str) -> str:
    """Return the file name of a category's dense code table (``c_<category>.csv``)."""
    return f"c_{category}.csv"


def encode_rg(labels: np.ndarray) -> np.ndarray:
    """Encode an ``H x W`` array of label numbers as an ``H x W x 3`` uint8 RG image (blue 0)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label array, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_RG):
        raise ValueError(f"label numbers must lie in 0..{MAX_RG}, got {labels.min()}..{labels.max()}")
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    values = labels.astype(np.uint32, copy=False)
    out[..., 0] = values & 0xFF
    out[..., 1] = values >> 8
    return out


def decode_rg(rgb: np.ndarray) -> np.ndarray:
    """Decode an ``H x W x 3`` RG-encoded image to int32 label numbers (``R + 256 * G``)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 2:
        raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
    return rgb[..., 0].astype(np.int32) + (rgb[..., 1].astype(np.int32) << 8)


def decode_rg_image(im: "Image.Image") -> np.ndarray:
    """Decode an opened RGB label PNG to int32 label numbers, in one pass over its pixels."""
    # Read as little-endian RGBX words: the low 16 bits are R + 256 * G.
    words = np.frombuffer(im.tobytes("raw", "RGBX"), dtype=np.uint32).reshape(im.height, im.width)
    return (words & 0xFFFF).view(np.int32)


def split_hash(image: str) -> float:
    """Return the split hash of an ``image`` cell: the first 8 MD5 bytes, big-endian, over 2**64."""
    digest = hashlib.md5(image.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(image: str, splits: Sequence[tuple[str, float]]) -> str:
    """Pick the split of an image from cumulative ``(name, fraction)`` pairs (last one takes the rest)."""
    h = split_hash(image)
    total = 0.0
    for name, fraction in splits:
        total += fraction
        if h <= total:
            return name
    return splits[-1][0]


def parse_splits(text: str) -> list[tuple[str, float]]:
    """Parse ``train=0.7,val=0.3`` into ``[("train", 0.7), ("val", 0.3)]``, checking the sum is 1."""
    pairs: list[tuple[str, float]] = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not name or not (0.0 <= fraction <= 1.0):
            raise ValueError(f"bad split {part!r}: expected NAME=FRACTION with 0 <= FRACTION <= 1")
        if any(name == n for n, _ in pairs):
            raise ValueError(f"split {name!r} is named twice")
        pairs.append((name, fraction))
    if not pairs or abs(sum(f for _, f in pairs) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must add up to 1, got {text!r}")
    return pairs


def format_coverage(value: float) -> str:
    """Print a coverage fixed-point with six decimals (NetDissect-Lite parses only ``d.d``)."""
    return f"{value:.6f}"


def format_category_cell(freqs: Mapping[str, int]) -> str:
    """Format ``{cat: freq}`` as ``cat(freq);...`` by descending frequency, ties by name."""
    items = sorted(freqs.items(), key=lambda kv: (-kv[1], kv[0]))
    return ";".join(f"{cat}({freq})" for cat, freq in items)


def parse_category_cell(cell: str) -> dict[str, int]:
    """Parse ``cat(freq);...`` into an ordered dict; raises ValueError on a malformed item."""
    out: dict[str, int] = {}
    for item in cell.split(";"):
        match = CATEGORY_ITEM.match(item.strip())
        if not match:
            raise ValueError(f"bad category item {item!r}: expected name(count)")
        out[match["name"]] = int(match["count"])
    return out


def segmentation_name(stem: str, category: str, layer: int, layers: int) -> str:
    """Return the PNG file name of one layer (1-based) of a category for an image stem."""
    if layers == 1:
        return f"{stem}_{category}.png"
    return f"{stem}_{category}_{layer}.png"
