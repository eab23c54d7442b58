"""Cityscapes: street scenes with dense fine (and coarse) class labels.

Layout (the release zips ``leftImg8bit_trainvaltest``, ``gtFine_trainvaltest``, ``gtCoarse``
extracted into one folder)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png     the images
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      8-bit class ids (json2labelImg)
                                                 _gtFine_instanceIds.png  16-bit: class * 1000 + instance,
                                                                          or a plain class id (< 1000)
                                                 _gtFine_polygons.json    the source polygons (not needed)
                                                 _gtFine_color.png        a visualisation (ignored)
    gtCoarse/<split>/<city>/..._gtCoarse_labelIds.png (and the same siblings)

Splits are ``train``, ``val`` and ``test`` (``train_extra`` with coarse labels only). Ids are those
of cityscapesScripts' ``helpers/labels.py``, restated in :data:`LABELS`; the preparation scripts'
``_labelTrainIds.png`` renumbering is not read.

Decisions:

* gtFine wins: an image with both a fine and a coarse annotation uses the fine one only; coarse
  labels serve the images that have no fine annotation (``train_extra``).
* ``_labelIds.png`` is the label source; ``_instanceIds.png`` is read only where it is missing
  (class id = value // 1000 from 1000 up, the value itself below). Instances are not parts of
  anything, so no part layer is made.
* The ``void`` category (unlabeled, ego vehicle, rectification border, out of roi, static,
  dynamic, ground) is unlabeled. The other labels the benchmark ignores (parking, rail track,
  guard rail, bridge, tunnel, polegroup, caravan, trailer) are ignored only because they are rare
  in evaluation; they are annotated like the rest and are kept as concepts (drop them through
  the concept mapping). License plate (id -1) is never drawn in the label images.
* Concepts: every label is an ``object`` named by the table, unless the concept mapping says
  otherwise (``labels: {car: {category: vehicle}}``). The Cityscapes category of each label
  (``flat``, ``construction``, ``object``, ``nature``, ``sky``, ``human``, ``vehicle``) is offered
  to the mapping as the attribute ``category`` (``attributes: {category: street}`` adds the label
  ``flat`` over every road and sidewalk pixel, in the category ``street``).
* The ``test`` split's labels are withheld by the benchmark (the release holds placeholders with
  void ids only): the split is left out when listing, with one warning and a count. Another image
  without any label file is left out the same way; one whose labels are all void is skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from concepts.builders import register
from concepts.builders._raster import candidate_dirs, header_size, inside_input, read_id_channel
from concepts.builders.base import Builder
from concepts.errors import SourceError, SourceItemError
from concepts.mapping import Inventory, LabelIds, load_mapping
from concepts.records import Record

log = logging.getLogger(__name__)


class Label(NamedTuple):
    """One row of the Cityscapes label table."""

    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool
    ignore_in_eval: bool


#: cityscapesScripts ``helpers/labels.py``: name, id, trainId, category, hasInstances, ignoreInEval.
LABELS: tuple[Label, ...] = tuple(Label(*row) for row in (
    ("unlabeled", 0, 255, "void", False, True),
    ("ego vehicle", 1, 255, "void", False, True),
    ("rectification border", 2, 255, "void", False, True),
    ("out of roi", 3, 255, "void", False, True),
    ("static", 4, 255, "void", False, True),
    ("dynamic", 5, 255, "void", False, True),
    ("ground", 6, 255, "void", False, True),
    ("road", 7, 0, "flat", False, False),
    ("sidewalk", 8, 1, "flat", False, False),
    ("parking", 9, 255, "flat", False, True),
    ("rail track", 10, 255, "flat", False, True),
    ("building", 11, 2, "construction", False, False),
    ("wall", 12, 3, "construction", False, False),
    ("fence", 13, 4, "construction", False, False),
    ("guard rail", 14, 255, "construction", False, True),
    ("bridge", 15, 255, "construction", False, True),
    ("tunnel", 16, 255, "construction", False, True),
    ("pole", 17, 5, "object", False, False),
    ("polegroup", 18, 255, "object", False, True),
    ("traffic light", 19, 6, "object", False, False),
    ("traffic sign", 20, 7, "object", False, False),
    ("vegetation", 21, 8, "nature", False, False),
    ("terrain", 22, 9, "nature", False, False),
    ("sky", 23, 10, "sky", False, False),
    ("person", 24, 11, "human", True, False),
    ("rider", 25, 12, "human", True, False),
    ("car", 26, 13, "vehicle", True, False),
    ("truck", 27, 14, "vehicle", True, False),
    ("bus", 28, 15, "vehicle", True, False),
    ("caravan", 29, 255, "vehicle", True, True),
    ("trailer", 30, 255, "vehicle", True, True),
    ("train", 31, 16, "vehicle", True, False),
    ("motorcycle", 32, 17, "vehicle", True, False),
    ("bicycle", 33, 18, "vehicle", True, False),
    ("license plate", -1, -1, "vehicle", False, True),
))
#: The category whose labels are unlabeled pixels.
VOID = "void"
#: The attribute through which the concept mapping sees a label's Cityscapes category.
CATEGORY_ATTRIBUTE = "category"
#: The annotation kinds, preferred first.
ANNOTATIONS = ("gtFine", "gtCoarse")
#: The split whose labels the benchmark withholds.
TEST_SPLIT = "test"
IMAGE_SUFFIX = "_leftImg8bit.png"
#: Label ids that can appear in a label image (license plate's -1 is never drawn).
_DRAWN = {label.id: label for label in LABELS if label.id >= 0}
_INSTANCE_FACTOR = 1000


@register
class CityscapesBuilder(Builder):
    """Cityscapes fine (and coarse) class labels, objects by default, categories for the mapping."""

    NAME = "cityscapes"
    DESCRIPTION = "Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/ (or gtCoarse/) *_labelIds.png"
    EXPECTS = "leftImg8bit/ beside gtFine/ or gtCoarse/ (Cityscapes)"
    RELEASE = "a Cityscapes release"

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The folder holding ``leftImg8bit/`` and ``gtFine/`` or ``gtCoarse/``: ``path`` or a sub-folder."""
        for cand in candidate_dirs(path, "cityscapes"):
            if (cand / "leftImg8bit").is_dir() and any((cand / a).is_dir() for a in ANNOTATIONS):
                return cand
        return None

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.base = self.located()
        self.mapping = mapping = load_mapping(self.options.get("concepts"))
        self.ids = LabelIds(mapping.source)
        # Per drawn label id: the (category, id) targets its pixels get, dominant first.
        self.targets: dict[int, list[tuple[str, int]]] = {}
        for label in _DRAWN.values():
            if label.category == VOID:
                continue
            concepts = [mapping.shape(label.name)]
            if concepts[0] is not None:  # a dropped label's attributes go with it
                concepts.append(mapping.attribute(CATEGORY_ATTRIBUTE, label.category))
            self.targets[label.id] = [(c.category, self.ids.get(c)) for c in concepts if c is not None]
        self._items: list[tuple[str, str]] | None = None
        self._left_out: Counter = Counter()

    def _label_file(self, split: str, city: str, stem: str) -> tuple[Path, bool] | None:
        """The label image of an image, fine before coarse; ``(path, is_instance_ids)`` or None."""
        for kind in ANNOTATIONS:
            folder = self.base / kind / split / city
            for suffix, instance in (("labelIds", False), ("instanceIds", True)):
                path = folder / f"{stem}_{kind}_{suffix}.png"
                if path.is_file():
                    return path, instance
        return None

    def items(self) -> list[tuple[str, str]]:
        """``(split/city, stem)`` of every image with a label file, sorted; the test split left out."""
        if self._items is not None:
            return self._items
        images = self.base / "leftImg8bit"
        items = []
        left_out: Counter = Counter()
        for path in sorted(images.glob(f"*/*/*{IMAGE_SUFFIX}")):
            split, city = path.parent.parent.name, path.parent.name
            stem = path.name[: -len(IMAGE_SUFFIX)]
            if split == TEST_SPLIT:
                left_out[f"{TEST_SPLIT} split (labels withheld by the benchmark)"] += 1
            elif self._label_file(split, city, stem) is None:
                left_out[f"no {' or '.join(ANNOTATIONS)} label file ({split} split)"] += 1
            else:
                items.append((f"{split}/{city}", stem))
        for reason, count in sorted(left_out.items()):
            log.warning("%s: %d image(s) left out: %s", images, count, reason)
        if not items:
            found = "; ".join(f"{n} left out: {reason}" for reason, n in sorted(left_out.items())) or f"no *{IMAGE_SUFFIX}"
            raise SourceError(f"no labelled image under leftImg8bit/<split>/<city>/ ({found})", path=self.base,
                              hint="extract leftImg8bit_trainvaltest and gtFine_trainvaltest (or gtCoarse) into one folder")
        self._left_out = left_out
        self._items = items
        return items

    def summary(self) -> dict[str, int]:
        """Images left out while listing, by reason (the test split, images without labels)."""
        self.items()
        return dict(self._left_out)

    def inventory(self) -> Inventory:
        """The table's labels and their Cityscapes categories (counts: labels per category)."""
        inv = Inventory()
        for label in _DRAWN.values():
            if label.category != VOID:
                inv.labels[label.name] += 0
                inv.add_attribute(CATEGORY_ATTRIBUTE, label.category)
        return inv

    def load(self, item: tuple[str, str]) -> Record:
        """Decode one image's label ids through the label table and the concept mapping."""
        folder, stem = item
        split, city = folder.split("/")
        image = self.base / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}"
        inside_input(self.base, image, what="image", item=stem)
        if not image.is_file():
            raise SourceItemError("image is missing", path=image, reason="missing image")
        found = self._label_file(split, city, stem)
        if found is None:
            raise SourceItemError("label file is missing", path=self.base / ANNOTATIONS[0] / split / city,
                                  reason="missing annotation")
        path, instance = found
        inside_input(self.base, path, what="annotation", item=stem)
        header_size(path, what="annotation")
        raw = read_id_channel(path, what="annotation")
        classes = np.where(raw >= _INSTANCE_FACTOR, raw // _INSTANCE_FACTOR, raw) if instance else raw
        present = np.flatnonzero(np.bincount(classes.ravel()))
        unknown = [int(v) for v in present if int(v) not in _DRAWN]
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:5])
            raise SourceItemError(f"label id(s) {shown} not in the Cityscapes label table (ids 0..33)",
                                  path=path, reason="unknown label id")
        record = Record(key=f"{folder}/{stem}", image=image)
        used = [int(v) for v in present if int(v) in self.targets]
        if not any(_DRAWN[v].category != VOID for v in present):
            raise SourceItemError("labels are all void (unlabeled, ego vehicle, borders, out of roi, ...)",
                                  path=path, reason="no labels (all void)")
        # One lookup table per category and layer: class id -> source id.
        tables: dict[str, list[np.ndarray]] = {}
        for ident in used:
            depth: Counter = Counter()
            for category, target in self.targets[ident]:
                layers = tables.setdefault(category, [])
                if depth[category] == len(layers):
                    layers.append(np.zeros(len(_DRAWN), np.uint16))
                layers[depth[category]][ident] = target
                depth[category] += 1
                record.names[(category, target)] = self.ids.names[(category, target)]
        record.pixel = {category: [lut[classes] for lut in layers] for category, layers in tables.items()}
        return record
