"""CVAT "Segmentation mask 1.1" exports (Pascal VOC style; FORMATS.md B.12, Precisions 10).

Layout (a folder, or the .zip CVAT downloads)::

    labelmap.txt                          "name:R,G,B:parts:actions" per label, background first
    ImageSets/Segmentation/<subset>.txt   image names without extension (default.txt for a task)
    SegmentationClass/<name>.png          class colours (RGB, palette, or 1-channel line indices)
    JPEGImages/<name>.<original ext>      when images were included

CVAT has already flattened overlapping shapes, so each image has one ``object`` layer (or the
category the concept mapping gives each label). Images listed without a mask keep only colour;
colours missing from labelmap.txt are unlabeled and counted as skipped. A listed name that leads
out of the export (absolute, ``..``, a symlink) is never read: the image is skipped as ``path
outside the input``; labelmap.txt and the lists must be UTF-8 files inside the export.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.builders import register
from concepts.builders._raster import header_size, read_image_array
from concepts.builders._export import contained
from concepts.builders.base import Builder, Detection
from concepts.archive import export_folder
from concepts.errors import SourceError, SourceItemError, UnsafeInputError
from concepts.mapping import Inventory, LabelIds, load_mapping
from concepts.records import Record

log = logging.getLogger(__name__)

BACKGROUND = ("background", "_background_")
#: Image extensions looked up directly before the JPEGImages folder is listed.
_USUAL = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")


def _read_text(path: Path, root: Path) -> str:
    """A text file of the export (labelmap, an ImageSets list): inside it, a file, UTF-8; else a SourceError."""
    try:
        contained(root, path, where=path, element="this file")
    except SourceItemError as e:
        raise UnsafeInputError(e.message, path=path) from None
    if not path.is_file():
        raise SourceError("is not a file", path=path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"is not UTF-8 text (byte {e.start})", path=path) from None
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path=path) from None


def read_labelmap(path: Path, root: Path | None = None) -> list[tuple[str, tuple[int, int, int]]]:
    """``[(name, (r, g, b)), ...]`` in file order from a CVAT/VOC ``labelmap.txt``."""
    out = []
    for n, line in enumerate(_read_text(path, root or path.parent).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        colour = rest.split(":", 1)[0]
        try:
            r, g, b = (int(c) for c in colour.split(","))
            if not all(0 <= c <= 255 for c in (r, g, b)):
                raise ValueError
        except ValueError:
            raise SourceError(f"expected 'name:R,G,B:parts:actions', got {line.strip()!r}", path=path, row=n) from None
        out.append((name.strip(), (r, g, b)))
    if not out:
        raise SourceError("labelmap.txt lists no labels", path=path)
    return out


def _read_mask(path: Path) -> np.ndarray:
    """A class mask as RGB colours, or a 2-D array of labelmap line indices (1-channel masks).

    Palette PNGs (VOC style) are colours through their palette, not line indices.
    """
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA"):
                return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass  # read_image_array reports it with the reason
    arr = read_image_array(path, what="mask")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 2:  # LA: the index is the luminance
        arr = arr[..., 0]
    return arr


@register
class CvatMaskBuilder(Builder):
    """CVAT Segmentation mask 1.1 (class masks coloured by labelmap.txt)."""

    NAME = "cvat-mask"
    KEY = "cvat_mask"
    DESCRIPTION = "CVAT Segmentation mask 1.1: labelmap.txt + ImageSets/Segmentation/*.txt + SegmentationClass/*.png"

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.folder = export_folder(self.root)
        self.mapping = mapping = load_mapping(self.options.get("concepts"))
        labelmap = self.folder / "labelmap.txt"
        if not labelmap.exists():
            raise SourceError("labelmap.txt is missing", path=self.folder, hint="export with CVAT 'Segmentation mask 1.1'")
        self.labels = read_labelmap(labelmap, self.folder)
        self.ids = LabelIds(labelmap)
        self.inv = Inventory()
        # colour code (R << 16 | G << 8 | B) and line index -> (category, id); 0 = unlabeled.
        self.by_colour: dict[int, tuple[str, int] | None] = {}
        self.by_index: list[tuple[str, int] | None] = []
        for name, (r, g, b) in self.labels:
            concept = None if name.lower() in BACKGROUND else mapping.shape(name)
            target = (concept.category, self.ids.get(concept)) if concept else None
            self.by_colour.setdefault((r << 16) | (g << 8) | b, target)
            self.by_index.append(target)
        self._items: list[tuple[str, str]] | None = None

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """``labelmap.txt`` and ``SegmentationClass/`` or ``ImageSets/Segmentation/``."""
        unmet = []
        if not (path / "labelmap.txt").is_file():
            unmet.append("labelmap.txt")
        if not (path / "SegmentationClass").is_dir() and not (path / "ImageSets" / "Segmentation").is_dir():
            unmet.append("SegmentationClass/ or ImageSets/Segmentation/")
        return Detection.missing(*unmet) if unmet else Detection.match(0.85)

    def items(self) -> list[tuple[str, str]]:
        """``(subset, name)`` pairs from the ImageSets lists (or every class mask), sorted."""
        if self._items is not None:
            return self._items
        lists = sorted((self.folder / "ImageSets" / "Segmentation").glob("*.txt"))
        items = []
        for path in lists:
            names = [n.strip() for n in _read_text(path, self.folder).splitlines() if n.strip()]
            items += [(path.stem, n) for n in names]
        if not lists:
            items = [("", p.relative_to(self.folder / "SegmentationClass").with_suffix("").as_posix())
                     for p in sorted((self.folder / "SegmentationClass").rglob("*.png"))]
        self._items = items
        for label, _ in self.labels:
            self.inv.labels[label] += 0
        return items

    def inventory(self) -> Inventory:
        """The labels of labelmap.txt (no per-shape counts exist in this format)."""
        self.items()
        self.inv.labels.update({name: 1 for name, _ in self.labels if name.lower() not in BACKGROUND})
        return self.inv

    def load(self, item: tuple[str, str]) -> Record:
        """Decode one class mask through labelmap.txt."""
        subset, name = item
        key = f"{subset}/{name}" if subset and subset != "default" else name
        where = self.folder / "ImageSets" / "Segmentation" / f"{subset}.txt" if subset else self.folder / "SegmentationClass"
        element = f"image {name[:200]!r}"
        # The listed name (or a symlink on the way) must not lead out of the export.
        folder = contained(self.folder, (self.folder / "JPEGImages" / name).parent, where=where, element=element)
        stem = Path(name).name
        mask_path = contained(self.folder, self.folder / "SegmentationClass" / f"{name}.png", where=where, element=element)
        # The usual extensions first: listing the folder for every item is quadratic in the images.
        images = [p for p in (folder / f"{stem}{ext}" for ext in _USUAL) if p.is_file()][:1]
        if not images and folder.is_dir():
            # Compared by stem rather than globbed: names may hold glob characters such as '['.
            images = sorted(p for p in folder.iterdir() if p.is_file() and p.stem == stem)
        if not images:
            raise SourceItemError("image not in the export (JPEGImages/)", path=self.folder / "JPEGImages" / name, reason="missing image")
        record = Record(key=key, image=contained(self.folder, images[0], where=where, element=element))
        if not mask_path.is_file():
            return record
        header_size(mask_path, what="mask")
        arr = _read_mask(mask_path)
        if arr.dtype.kind not in "uib" or arr.ndim not in (2, 3):
            raise SourceItemError(f"mask must be an RGB or single-channel integer image, got {arr.dtype} {arr.shape}",
                                  path=mask_path, reason="bad mask")
        skipped: Counter = Counter()
        if arr.ndim == 2:
            codes = arr.astype(np.int64)
            table = dict(enumerate(self.by_index))
        else:
            rgb = arr[..., :3].astype(np.int64)
            codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            table = self.by_colour
        values, inverse = np.unique(codes, return_inverse=True)
        inverse = inverse.reshape(codes.shape)
        # One lookup array per category (value index -> id): linear in pixels plus colours, where a
        # pass over the mask per colour was quadratic for masks with thousands of labels.
        per_category: dict[str, np.ndarray] = {}
        for v_index, v in enumerate(values.tolist()):
            if v not in table:
                skipped["colour not in labelmap.txt"] += 1
                continue
            target = table[v]
            if target is None:
                continue
            category, ident = target
            per_category.setdefault(category, np.zeros(len(values), np.uint16))[v_index] = ident
        layers = {category: lookup[inverse] for category, lookup in per_category.items()}
        record.pixel = {c: [layer] for c, layer in layers.items() if layer.any()}
        used = {(c, int(i)) for c, lookup in per_category.items() for i in np.unique(lookup) if i}
        record.names = {k: self.ids.names[k] for k in sorted(used)}
        record.skipped = dict(skipped)
        return record
