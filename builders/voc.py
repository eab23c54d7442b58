"""Pascal VOC segmentation (VOC2007-2012 devkit releases and VOC-style exports).

Layout (``VOCdevkit/VOC2012/``, that folder itself, or any folder shaped like it)::

    SegmentationClass/<id>.png           class indices: 0 background, 1..20 the classes, 255 void
    SegmentationObject/<id>.png          instance indices (not read, see below)
    ImageSets/Segmentation/<subset>.txt  ids, one a line: train.txt, val.txt, trainval.txt (= both)
    JPEGImages/<id>.jpg
    Annotations/<id>.xml                 detection boxes (not read: they hold no pixel labels)
    labelmap.txt                         optional (VOC-style exports): "name:R,G,B:parts:actions"

Without ``labelmap.txt`` the classes are the devkit's 21 (``background``, ``aeroplane`` ...
``tvmonitor``) and a mask is read as the devkit and torchvision's ``VOCSegmentation`` read it: the
palette PNG's indices are the classes. Index 0 (background) and 255 (void, colour 224,224,192,
drawn along object boundaries and over uncertain regions) are unlabeled; other indices are
counted as skipped. A palette whose colour for a used index is not the devkit colour map's is
refused for that image: indices and colours would name different classes. RGB masks (re-saved
releases) are read by colour through the devkit colour map.

With ``labelmap.txt`` the masks are decoded exactly as the ``cvat-mask`` builder decodes them
(colours through labelmap.txt, :class:`concepts.builders.cvat_mask.ClassTable`), so both builders
give the same labels; detection prefers ``cvat-mask`` for such folders.

Every image listed in ``ImageSets/Segmentation/*.txt`` is read once, keyed by its id (VOC ids are
unique across subsets; ``trainval`` only repeats ``train`` and ``val``); without lists, every mask
is. The output's train/val split is assigned by the build, not taken from the subset: records carry
no split. A listed image without a mask (a test-set image) is skipped as ``no segmentation mask``.

``SegmentationObject/`` is not read: records hold per-category class labels, and the class of
each instance is already in ``SegmentationClass/``; instance numbers would add nothing a concept
dataset stores. A folder with ``Annotations/`` boxes but no ``SegmentationClass/`` is recognised
and refused with one line: boxes are not pixel labels.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.archive import export_folder
from concepts.builders import register
from concepts.builders._export import contained
from concepts.builders._raster import header_size, read_image_array
from concepts.builders.base import Builder, Detection
from concepts.builders.cvat_mask import (BACKGROUND, VOID_INDEX, ClassTable, _read_mask, find_image, mask_names,
                                         read_labelmap, segmentation_lists)
from concepts.builders.labelme import annotation_kind
from concepts.errors import SourceError, SourceItemError
from concepts.mapping import Inventory, LabelIds, load_mapping
from concepts.records import Record

log = logging.getLogger(__name__)

#: The devkit's classes in index order (VOCinit.m's VOCopts.classes, after index 0 background).
DEVKIT_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: Folders of a VOC release that never hold another release: detection does not look inside them.
_CONTENT = {"JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject", "ImageSets",
            "SegmentationClassAug", "VOCcode", "results", "local"}
#: How deep below the given folder a release is looked for (``x/VOCtrainval_11-May-2012/VOCdevkit/VOC2012``).
_DEPTH = 3
#: At most this many folders are looked into, so detection stays cheap on a large tree.
_VISITS = 300


def devkit_colour(index: int) -> tuple[int, int, int]:
    """The devkit colour map (VOClabelcolormap.m): bits 0, 1, 2 of the index go to R, G, B, from the top bit down."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= (index & 1) << shift
        g |= ((index >> 1) & 1) << shift
        b |= ((index >> 2) & 1) << shift
        index >>= 3
    return r, g, b


def _is_segmentation(folder: Path) -> bool:
    if not (folder / "SegmentationClass").is_dir():
        return False
    return (folder / "JPEGImages").is_dir() or (folder / "ImageSets" / "Segmentation").is_dir()


def _is_detection(folder: Path) -> bool:
    ann = folder / "Annotations"
    if not (ann.is_dir() and (folder / "JPEGImages").is_dir()):
        return False
    first = next((p for p in sorted(ann.glob("*.xml")) if p.is_file()), None)
    return annotation_kind(first) == "voc"


def _search(path: Path) -> tuple[list[Path], list[Path]]:
    """The shallowest VOC segmentation folders under ``path`` (or itself), else detection-only ones."""
    if not path.is_dir():
        return [], []
    queue: deque[tuple[Path, int]] = deque([(path, 0)])
    seen = 0
    found: dict[int, tuple[list[Path], list[Path]]] = {}
    while queue and seen < _VISITS:
        folder, depth = queue.popleft()
        seen += 1
        if found and depth > min(found):
            break
        if _is_segmentation(folder):
            found.setdefault(depth, ([], []))[0].append(folder)
            continue
        if _is_detection(folder):
            found.setdefault(depth, ([], []))[1].append(folder)
            continue
        if depth < _DEPTH:
            try:
                # scandir's entry types avoid a stat per file in folders holding thousands of images.
                with os.scandir(folder) as entries:
                    children = sorted(Path(e.path) for e in entries if e.is_dir() and e.name not in _CONTENT
                                      and not e.name.startswith("."))
            except OSError:
                continue
            queue.extend((child, depth + 1) for child in children)
    if not found:
        return [], []
    return found[min(found)]


@register
class VocBuilder(Builder):
    """Pascal VOC SegmentationClass masks (devkit classes, or labelmap.txt when present)."""

    NAME = "voc"
    DESCRIPTION = "Pascal VOC segmentation: VOCdevkit/VOC20xx/ SegmentationClass/*.png + JPEGImages/ + ImageSets/Segmentation/"
    EXPECTS = "SegmentationClass/*.png with JPEGImages/ or ImageSets/Segmentation/ (VOCdevkit/VOC2012)"
    RELEASE = "a Pascal VOC segmentation folder"

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The shallowest VOC segmentation folder: ``path`` itself, ``VOC2012/``, ``VOCdevkit/VOC2012/`` ..."""
        segmentation, _ = _search(path)
        return segmentation[0] if segmentation else None

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A VOC segmentation folder (0.88; 0.8 with labelmap.txt, which cvat-mask reads), or a boxes-only one (0.7)."""
        segmentation, detection = _search(path)
        if segmentation:
            return Detection.match(0.8 if (segmentation[0] / "labelmap.txt").exists() else 0.88)
        if detection:
            # Matched so that building says in one line why it cannot be built.
            return Detection.match(0.7)
        return Detection.missing(cls.EXPECTS)

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        folder = export_folder(self.root)
        segmentation, detection = _search(folder)
        if not segmentation:
            if detection:
                raise SourceError(
                    "Pascal VOC with detection boxes only: Annotations/*.xml hold <bndbox> rectangles and there is no "
                    "SegmentationClass/, so there are no pixel labels to build concepts from",
                    path=detection[0],
                    hint="add the segmentation masks (SegmentationClass/*.png and ImageSets/Segmentation/ of the VOC "
                         "trainval release), or annotate masks and export them as CVAT 'Segmentation mask 1.1'")
            raise SourceError(f"not {self.RELEASE}: expected {self.EXPECTS}", path=self.root)
        if len(segmentation) > 1:
            shown = ", ".join(str(p.relative_to(folder)) for p in segmentation[:5])
            raise SourceError(f"holds {len(segmentation)} VOC segmentation folders ({shown})", path=self.root,
                              hint=f"build one per --from, e.g. --from voc={segmentation[0]}")
        self.base = base = segmentation[0]
        self.mapping = mapping = load_mapping(self.options.get("concepts"))
        labelmap = base / "labelmap.txt"
        # Present but unreadable (a folder, binary) is an error naming it, never the devkit table.
        self.devkit = not (labelmap.exists() or labelmap.is_symlink())
        if self.devkit:
            self.labels = [(name, devkit_colour(i)) for i, name in enumerate(DEVKIT_CLASSES)]
            self.ids = LabelIds(base)
            self.table = ClassTable(self.labels, mapping, self.ids, unknown="value not a VOC class or colour")
        else:
            self.labels = read_labelmap(labelmap, base)
            self.ids = LabelIds(labelmap)
            self.table = ClassTable(self.labels, mapping, self.ids)
        self._items: list[str] | None = None
        self._where: dict[str, Path] = {}

    def items(self) -> list[str]:
        """Image ids from ``ImageSets/Segmentation/*.txt`` (each once), or every mask's; sorted."""
        if self._items is None:
            lists = segmentation_lists(self.base)
            if lists is None:
                self._items = mask_names(self.base)
            else:
                sets = self.base / "ImageSets" / "Segmentation"
                self._where = {n: sets / f"{subset}.txt" for subset, names in lists for n in names}
                self._items = sorted(self._where)
        return self._items

    def inventory(self) -> Inventory:
        """The class names (no per-shape counts exist in this format)."""
        inv = Inventory()
        inv.labels.update({name: 1 for name, _ in self.labels if name.strip().lower() not in BACKGROUND})
        return inv

    def _devkit_mask(self, path: Path) -> np.ndarray:
        """Indices of a palette or 1-channel mask (the devkit's reading); RGB masks stay colours."""
        try:
            with Image.open(path) as im:
                palette = im.getpalette() if im.mode == "P" else None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            palette = None  # read_image_array reports it with the reason
        if palette is None:
            return _read_mask(path)
        arr = read_image_array(path, what="mask")
        for index in np.unique(arr).tolist():
            if index < len(DEVKIT_CLASSES) or index == VOID_INDEX:
                colour = tuple(palette[3 * index:3 * index + 3])
                expected = devkit_colour(index)
                if len(colour) == 3 and colour != expected:
                    name = DEVKIT_CLASSES[index] if index < len(DEVKIT_CLASSES) else "void"
                    raise SourceItemError(
                        f"palette colour of index {index} is {colour}, not the VOC devkit colour {expected} of "
                        f"{name!r}; indices and colours name different classes (add a labelmap.txt naming the classes "
                        "by colour)", path=path, reason="palette not the VOC colour map")
        return arr

    def load(self, item: str) -> Record:
        """The class mask of one image, through the devkit classes or labelmap.txt."""
        self.items()
        where = self._where.get(item, self.base / "SegmentationClass")
        element = f"image {item[:200]!r}"
        mask_path = contained(self.base, self.base / "SegmentationClass" / f"{item}.png", where=where, element=element)
        record = Record(key=item, image=find_image(self.base, item, where=where, element=element))
        if not mask_path.is_file():
            raise SourceItemError("no SegmentationClass mask for this image (a test-set image?)", path=mask_path,
                                  reason="no segmentation mask")
        header_size(mask_path, what="mask")
        arr = self._devkit_mask(mask_path) if self.devkit else _read_mask(mask_path)
        self.table.fill(record, arr, mask_path)
        return record
