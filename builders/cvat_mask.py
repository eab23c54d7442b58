"""CVAT "Segmentation mask 1.1" exports (Pascal VOC style; FORMATS.md B.12, Precisions 10).

Layout (a folder, or the .zip CVAT downloads)::

    labelmap.txt                          "name:R,G,B:parts:actions" per label, background first
    ImageSets/Segmentation/<subset>.txt   image names without extension (default.txt for a task)
    SegmentationClass/<name>.png          class colours (RGB, palette, or 1-channel line indices)
    JPEGImages/<name>.<original ext>      when images were included

CVAT has already flattened overlapping shapes, so each image has one ``object`` layer (or the
category the concept mapping gives each label). Images listed without a mask keep only colour;
colours missing from labelmap.txt are unlabeled and counted as skipped.

Unlabeled, like ``background``: labels named ``ignored`` or ``void`` (Datumaro's and CVAT's name
for VOC's void), the VOC void colour 224,224,192 unless labelmap.txt gives that colour to a label
of its own, and value 255 of a 1-channel mask unless labelmap.txt has a 256th line. VOC draws void
along every object's boundary, so reading it as a label would make one concept of all outlines.

The same folder can also be read by the ``voc`` builder (builders/voc.py), which decodes masks
through this module's :class:`ClassTable`, so both give the same labels; detection prefers this
builder whenever ``labelmap.txt`` is present (0.85 against ``voc``'s 0.8). An image named by several
ImageSets lists (VOC's ``trainval.txt`` repeats ``train`` and ``val``) is read once.

A listed name that leads out of the export (absolute, ``..``, a symlink) is never read: the image is skipped as ``path
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
from concepts.mapping import ConceptMapping, Inventory, LabelIds, load_mapping
from concepts.records import Record

log = logging.getLogger(__name__)

#: Label names that mean unlabeled: background, and VOC's void under the names exports give it.
BACKGROUND = ("background", "_background_", "ignored", "void")
#: The VOC devkit colour of index 255 (void): unlabeled even when labelmap.txt does not list it.
VOID_COLOUR = (224, 224, 192)
#: VOC's void index in 1-channel masks.
VOID_INDEX = 255
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


def _code(colour: tuple[int, int, int]) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


class ClassTable:
    """Colours and 1-channel values of a class list -> ``(category, id)`` (None: unlabeled).

    ``labels`` are ``(name, (r, g, b))`` in line order: a 1-channel value is a line index.
    """

    def __init__(self, labels: list[tuple[str, tuple[int, int, int]]], mapping: ConceptMapping, ids: LabelIds,
                 *, unknown: str = "colour not in labelmap.txt") -> None:
        self.ids = ids
        self.unknown = unknown
        self.by_colour: dict[int, tuple[str, int] | None] = {}
        self.by_index: dict[int, tuple[str, int] | None] = {}
        for index, (name, colour) in enumerate(labels):
            concept = None if name.strip().lower() in BACKGROUND else mapping.shape(name)
            target = (concept.category, ids.get(concept)) if concept else None
            self.by_colour.setdefault(_code(colour), target)
            self.by_index[index] = target
        # Void stays unlabeled unless the file gave its colour or index to a label of its own.
        self.by_colour.setdefault(_code(VOID_COLOUR), None)
        self.by_index.setdefault(VOID_INDEX, None)

    def fill(self, record: Record, arr: np.ndarray, path: Path) -> None:
        """Set the record's pixel layers, names and skipped counts from a decoded class mask."""
        if arr.dtype.kind not in "uib" or arr.ndim not in (2, 3):
            raise SourceItemError(f"mask must be an RGB or single-channel integer image, got {arr.dtype} {arr.shape}",
                                  path=path, reason="bad mask")
        skipped: Counter = Counter()
        if arr.ndim == 2:
            codes = arr.astype(np.int64)
            table = self.by_index
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
                skipped[self.unknown] += 1
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


def segmentation_lists(folder: Path) -> list[tuple[str, list[str]]] | None:
    """``(subset, names)`` of ``ImageSets/Segmentation/*.txt``, sorted by subset, each image once (None: no lists).

    An image named by several lists belongs to the shortest of them (ties: the first by name):
    VOC's ``trainval.txt`` repeats ``train.txt`` and ``val.txt``, so its images stay train or val
    and no image is read twice. A list left with no image of its own is dropped.
    """
    lists = []
    for path in sorted((folder / "ImageSets" / "Segmentation").glob("*.txt")):
        names = [n.strip() for n in _read_text(path, folder).splitlines() if n.strip()]
        lists.append((path.stem, list(dict.fromkeys(names))))
    owner: dict[str, str] = {}
    for subset, names in sorted(lists, key=lambda sn: len(sn[1])):
        for n in names:
            owner.setdefault(n, subset)
    out = [(subset, [n for n in names if owner[n] == subset]) for subset, names in lists]
    dropped = [subset for subset, names in out if not names and any(ns for _, ns in lists)]
    if dropped:
        log.info("ImageSets/Segmentation: %s repeat only images of the other lists; each image is read once",
                 ", ".join(f"{d}.txt" for d in dropped))
    return [(subset, names) for subset, names in out if names] if lists else None


def mask_names(folder: Path) -> list[str]:
    """Every ``SegmentationClass/**/*.png`` as a name without extension, sorted (no lists present)."""
    return [p.relative_to(folder / "SegmentationClass").with_suffix("").as_posix()
            for p in sorted((folder / "SegmentationClass").rglob("*.png"))]


def find_image(folder: Path, name: str, *, where: Path, element: str) -> Path:
    """``JPEGImages/<name>.<ext>`` of an export (any extension), checked to lie inside ``folder``."""
    # The listed name (or a symlink on the way) must not lead out of the export.
    parent = contained(folder, (folder / "JPEGImages" / name).parent, where=where, element=element)
    stem = Path(name).name
    # The usual extensions first: listing the folder for every item is quadratic in the images.
    images = [p for p in (parent / f"{stem}{ext}" for ext in _USUAL) if p.is_file()][:1]
    if not images and parent.is_dir():
        # Compared by stem rather than globbed: names may hold glob characters such as '['.
        images = sorted(p for p in parent.iterdir() if p.is_file() and p.stem == stem)
    if not images:
        raise SourceItemError("image not in the export (JPEGImages/)", path=folder / "JPEGImages" / name, reason="missing image")
    return contained(folder, images[0], where=where, element=element)


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
        self.table = ClassTable(self.labels, mapping, self.ids)
        self._items: list[tuple[str, str]] | None = None

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """``labelmap.txt`` and ``SegmentationClass/`` or ``ImageSets/Segmentation/``."""
        unmet = []
        if not (path / "labelmap.txt").is_file():
            unmet.append("labelmap.txt")
        if not (path / "SegmentationClass").is_dir():
            if not (path / "ImageSets" / "Segmentation").is_dir():
                unmet.append("SegmentationClass/ or ImageSets/Segmentation/")
            elif (path / "Annotations").is_dir():
                # A Pascal VOC export with boxes only: the voc builder says so in one line.
                unmet.append("SegmentationClass/ (Annotations/ alone holds boxes, not masks)")
        return Detection.missing(*unmet) if unmet else Detection.match(0.85)

    def items(self) -> list[tuple[str, str]]:
        """``(subset, name)`` pairs from the ImageSets lists (or every class mask), sorted."""
        if self._items is not None:
            return self._items
        lists = segmentation_lists(self.folder)
        if lists is None:
            items = [("", n) for n in mask_names(self.folder)]
        else:
            items = [(subset, n) for subset, names in lists for n in names]
        self._items = items
        for label, _ in self.labels:
            self.inv.labels[label] += 0
        return items

    def inventory(self) -> Inventory:
        """The labels of labelmap.txt (no per-shape counts exist in this format)."""
        self.items()
        self.inv.labels.update({name: 1 for name, _ in self.labels if name.strip().lower() not in BACKGROUND})
        return self.inv

    def load(self, item: tuple[str, str]) -> Record:
        """Decode one class mask through labelmap.txt."""
        subset, name = item
        key = f"{subset}/{name}" if subset and subset != "default" else name
        where = self.folder / "ImageSets" / "Segmentation" / f"{subset}.txt" if subset else self.folder / "SegmentationClass"
        element = f"image {name[:200]!r}"
        mask_path = contained(self.folder, self.folder / "SegmentationClass" / f"{name}.png", where=where, element=element)
        record = Record(key=key, image=find_image(self.folder, name, where=where, element=element))
        if not mask_path.is_file():
            return record
        header_size(mask_path, what="mask")
        self.table.fill(record, _read_mask(mask_path), mask_path)
        return record
