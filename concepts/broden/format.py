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

Names
-----
Names are checked once, where they enter (a concept mapping file, a source's label table or
annotations, a dataset's tables), by :func:`check_category_name` and :func:`check_label_name`;
anything else is refused with one line naming the file and the line, row or element.

* A **category name** becomes an ``index.csv`` column, a ``c_<category>.csv`` file name, a part of
  PNG file names and a ``cat(freq)`` item of ``label.csv``. It is 1 to 64 lower-case ASCII letters,
  digits, ``_`` and ``-``, starting with a letter (``object``, ``part``, ``wood-grain``), and is not
  a fixed column of ``index.csv`` (``image``, ``split``, ``ih``, ``iw``, ``sh``, ``sw``). A user's
  category may not be ``color`` while the colour category is computed (``--color``, the default).
* A **label name** is free text, as Broden's own are (``chest of drawers``, ``red-c``,
  ``airport-s``, ``car, auto``): any printable Unicode, spaces, commas, quotes, ``/`` and ``<>``
  included, since the CSV writer quotes what needs quoting, names never become paths, and the
  report escapes HTML. Refused: an empty name, leading or trailing whitespace, control characters
  (line breaks, tabs, NUL, ESC), Unicode line/paragraph separators, lone surrogates, and more than
  256 characters. Sources' names are then normalised (NFC, lower case, runs of spaces to one);
  ``;``, ``(`` and ``)``, which ``label.csv`` reserves, become ``,``, ``[`` and ``]`` and ``"`` is
  dropped.
* **Label numbers** are ``R + 256 * G``: at most 65,535 labels can be stored, and 32,767 can be read
  by NetDissect-Lite; a build (or a source's ids per category) beyond that is refused before anything
  is written.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from concepts.errors import ConceptsError, UsageError

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

#: The colour category the builder computes from the pixels.
COLOR_CATEGORY_NAME = "color"
#: A category name: lower-case ASCII letters, digits, ``_`` and ``-``, starting with a letter.
CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
MAX_CATEGORY_NAME = 64
MAX_LABEL_NAME = 256
#: Unicode categories refused in label names: controls, line/paragraph separators, surrogates.
_BAD_NAME_CHARS = ("Cc", "Zl", "Zp", "Cs")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4


def shown(value: object) -> str:
    """A bounded ``repr`` for messages: a hostile value (huge, deeply shared) prints in one short line."""
    return _REPR.repr(value)


def _name_error(error: type[ConceptsError], message: str, path: str | Path | None, row: int | None,
                item: str | None) -> ConceptsError:
    return error(message, path=path, row=row, item=item, hint="see 'Names' in concepts/broden/format.py")


def check_category_name(
    name: object,
    *,
    path: str | Path | None,
    row: int | None = None,
    item: str | None = None,
    error: type[ConceptsError] = UsageError,
    color_computed: bool = False,
) -> str:
    """Return ``name`` if it is a valid category name, else raise ``error`` with one line naming where."""
    if not isinstance(name, str):
        raise _name_error(error, f"category name {shown(name)} is not text", path, row, item)
    text = shown(name)
    if len(name) > MAX_CATEGORY_NAME:
        raise _name_error(error, f"category name {text} is longer than {MAX_CATEGORY_NAME} characters", path, row, item)
    if not CATEGORY_NAME.fullmatch(name):
        raise _name_error(error, f"category name {text} may only use lower-case letters a-z, digits, '_' and '-', "
                                 "starting with a letter", path, row, item)
    if name in INDEX_FIXED_COLUMNS:
        raise _name_error(error, f"category name {name!r} is reserved (a fixed column of {INDEX_FILE}: "
                                 f"{', '.join(INDEX_FIXED_COLUMNS)})", path, row, item)
    if color_computed and name == COLOR_CATEGORY_NAME:
        raise _name_error(error, f"category name {name!r} is the computed colour category; rename it, "
                                 "or build with --no-color", path, row, item)
    return name


def check_label_name(
    name: object,
    *,
    path: str | Path | None,
    row: int | None = None,
    item: str | None = None,
    error: type[ConceptsError] = UsageError,
) -> str:
    """Return ``name`` if it is a valid label name, else raise ``error`` with one line naming where."""
    if not isinstance(name, str):
        raise _name_error(error, f"label name {shown(name)} is not text", path, row, item)
    text = shown(name)
    if not name.strip():
        raise _name_error(error, f"label name {text} is empty", path, row, item)
    if len(name) > MAX_LABEL_NAME:
        raise _name_error(error, f"label name {text} is longer than {MAX_LABEL_NAME} characters", path, row, item)
    bad = next((c for c in name if unicodedata.category(c) in _BAD_NAME_CHARS), None)
    if bad is not None:
        raise _name_error(error, f"label name {text} contains the control character U+{ord(bad):04X}", path, row, item)
    if name != name.strip():
        raise _name_error(error, f"label name {text} starts or ends with whitespace", path, row, item)
    return name


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
