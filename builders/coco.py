"""COCO instance-style annotations: the COCO release, COCO-Stuff, COCO panoptic and CVAT's "COCO 1.0".

Layouts (a folder, or a .zip; FORMATS.md B.11, Precisions 9)::

    annotations/instances_<subset>.json     things (instances_default.json: a CVAT task)
    annotations/stuff_<subset>.json         COCO-Stuff: the same schema, RLE segmentations
    annotations/panoptic_<subset>.json      COCO panoptic, PNGs in annotations/panoptic_<subset>/
    <subset>/<file_name>                    the COCO release (val2017/, train2017/)
    images/<subset>/<file_name>             CVAT; or a flat images/<file_name>, or beside the JSON

Which files are read: ``instances_*``, ``stuff_*`` and ``panoptic_*`` always (a malformed one is
an error naming it); ``captions_*``, ``person_keypoints_*`` (its people repeat the person
instances of ``instances_*``, with keypoints this format cannot carry) and ``image_info_*`` never;
a file of another name when its content is an instances or panoptic file. The files skipped are
counted in one log line. An image listed by several files (instances and stuff of one subset) is
painted by all of them; their sizes must agree.

Categories: instances' categories are ``object``; COCO-Stuff's and panoptic stuff (``isthing``
0) are ``stuff``; panoptic things are ``object``; the concept mapping can move any label. A
category's ``supercategory`` is offered to the mapping as the attribute ``supercategory`` of
every annotation (``attributes: {supercategory: {category: ...}}`` paints it). COCO-Stuff's
``other`` (id 183) is, by its README, the union of all thing pixels, not a stuff class: it is
skipped (counted) unless the mapping names it.

Polygons (several per object allowed), RLE (uncompressed counts lists and compressed strings) and
bbox-only annotations (empty ``segmentation``, rotated by ``attributes.rotation`` when CVAT wrote
one) are decoded with pycocotools and painted in annotation order (COCO has no stacking order).
Category ids need not be contiguous; image ids may clash between files (keys use the subset).

Everything the JSON says is checked before it is used: ids are whole numbers, names are valid
label names, sizes (image and RLE) pass the pixel limit, RLE runs are non-negative and cover the
mask exactly (compressed strings are decoded here, never by pycocotools, whose decoder trusts them),
and ``file_name`` must name a file inside the export (symlinks resolved).
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as cocomask

from concepts.broden.format import check_label_name, shown
from concepts.builders import register
from concepts.builders._raster import COCO_SANE_MARGIN, Shape, box_points, check_canvas, finite_points, paint_record, polygon_mask, shape_mask
from concepts.builders import coco_panoptic as panoptic
from concepts.builders._export import ExportBuilder, contained
from concepts.builders.base import Detection
from concepts.errors import SourceError, SourceItemError
from concepts.limits import check_pixels
from concepts.mapping import DEFAULT_SHAPE, Concept
from concepts.records import Record
from concepts.vocabulary import normalize_name

log = logging.getLogger(__name__)

_NOT_CONCEPTS = {"occluded", "rotation", "track_id", "keyframe", "z_order"}


@dataclass
class _Image:
    key: str
    subset: str
    file_name: str
    size: tuple[int, int]
    shapes: list[Shape] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    error: tuple[str, str] | None = None
    json: str = ""
    element: str = ""
    #: Panoptic PNGs painting this image: (JSON path, PNG name, every segment id it lists).
    pngs: list[tuple[str, str, frozenset[int]]] = field(default_factory=list)


#: What each file-name prefix of an ``annotations/`` folder holds; None: not instance annotations.
_PREFIXES = (("instances_", "instances"), ("stuff_", "stuff"), ("panoptic_", "panoptic"),
             ("captions_", None), ("person_keypoints_", None), ("image_info_", None))
STUFF = "stuff"
#: COCO-Stuff's catch-all class: every thing pixel (its README), so not a stuff concept.
_STUFF_OTHER = "other"


def _kind(path: Path) -> str | None:
    """``instances``, ``stuff`` or ``panoptic`` by the file's name, None for other COCO files, ``?``: read it."""
    return next((kind for prefix, kind in _PREFIXES if path.name.startswith(prefix)), "?")


def _json_files(folder: Path) -> list[Path]:
    found = sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
    return found or sorted(p for p in folder.glob("*.json") if _kind(p) in ("instances", "stuff", "panoptic"))


def _subset(path: Path) -> str:
    stem = path.stem
    prefix = next((p for p, kind in _PREFIXES if kind and stem.startswith(p)), "")
    subset = stem[len(prefix):]
    return "" if subset == "default" else subset


def _content_kind(data: Any) -> str | None:
    """What a file of no known name holds: ``panoptic``, ``instances`` or None (captions, keypoints, other)."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        return None
    if panoptic.is_panoptic(data):
        return "panoptic"
    anns = [a for a in data["annotations"][:50] if isinstance(a, dict)]
    if any("keypoints" in a or "caption" in a or "category_id" not in a for a in anns):
        return None
    return "instances" if all("segmentation" in a or "bbox" in a for a in anns) else None


def _ident(value: Any, where: str, path: Path) -> int:
    """A COCO id: a JSON whole number (not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"{where} {shown(value)} is not a whole number", path=path)
    return value


def rle_counts(seg: dict[str, Any]) -> tuple[int, int, list[int]]:
    """``(height, width, runs)`` of a COCO RLE, checked; a ValueError says what is wrong in one line."""
    size = seg.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"RLE size {shown(size)} is not [height, width] in whole numbers")
    h, w = check_pixels(size[1], size[0], what="RLE", error=SourceItemError)
    counts = seg.get("counts")
    if isinstance(counts, str):
        runs = _decode_counts(counts)
    elif isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            bad = next(c for c in counts if not isinstance(c, int) or isinstance(c, bool))
            raise ValueError(f"RLE counts hold {shown(bad)}, not a whole number")
        runs = counts
    else:
        raise ValueError(f"RLE counts {shown(counts)} are neither a list of runs nor a compressed string")
    negative = next((c for c in runs if c < 0), None)
    if negative is not None:
        raise ValueError(f"RLE counts hold a negative run ({negative})")
    total = sum(runs)
    if total != h * w:
        raise ValueError(f"RLE counts add up to {total}, not {h} x {w} = {h * w}")
    return h, w, runs


def _decode_counts(text: str) -> list[int]:
    """The runs of a compressed COCO RLE string (pycocotools' rleFrString, which checks nothing)."""
    runs: list[int] = []
    p = 0
    data = text.encode("ascii", "replace")
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("RLE counts string ends in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string holds {chr(data[p])!r}, not a COCO RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
            if k > 13:
                raise ValueError("RLE counts string holds a number too long to be a run")
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _decode_rle(h: int, w: int, runs: list[int]) -> np.ndarray:
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    # COCO runs are column-major.
    return np.repeat(values, np.asarray(runs, dtype=np.int64)).reshape(w, h).T


def coco_mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
    """Rasterise a COCO segmentation (polygons with pycocotools, checked RLE runs); other kinds as usual."""
    if shape.kind != "coco":
        return shape_mask(shape, height, width, path)
    seg = shape.data
    if isinstance(seg, list):
        reach = COCO_SANE_MARGIN * max(height, width) + 16
        if all(max(abs(v) for v in poly) <= reach for poly in seg):
            rles = cocomask.frPyObjects(seg, height, width)
            return cocomask.decode(cocomask.merge(rles)).astype(bool)
        out = np.zeros((height, width), dtype=bool)
        for poly in seg:
            out |= polygon_mask(np.asarray(poly, dtype=np.float64).reshape(-1, 2), height, width)  # a union, as merge()
        return out
    h, w, runs = seg
    decoded = _decode_rle(h, w, runs)
    if decoded.shape != (height, width):
        log.warning("%s: RLE size %dx%d differs from the image %dx%d; resampled", path, h, w, height, width)
        rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.intp), h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.intp), w - 1)
        decoded = decoded[np.ix_(rows, cols)]
    return decoded


@register
class CocoBuilder(ExportBuilder):
    """COCO instance-style JSON: the COCO release (instances, stuff, panoptic) or CVAT COCO 1.0."""

    NAME = "coco"
    DESCRIPTION = ("COCO: annotations/{instances,stuff,panoptic}_<subset>.json with <subset>/ or images/<subset>/ "
                   "images, folder or .zip")

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder (or .zip) whose ``annotations/`` holds an instances, stuff or panoptic file."""
        try:
            if path.is_file() and zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    names = [Path(n) for n in zf.namelist() if n.lower().endswith(".json")]
                if any(_kind(n) in ("instances", "stuff", "panoptic") for n in names):
                    return Detection.match(0.8)
                return Detection.missing("annotations/instances_<subset>.json in the zip")
            files = [path] if path.is_file() and path.suffix == ".json" else _json_files(path) if path.is_dir() else []
            for f in files:
                kind = _kind(f)
                if kind in ("instances", "stuff", "panoptic") and f.is_file():
                    # A named file in annotations/ is the release's own layout: surer than stray files beside it.
                    return Detection.match(0.9 if f.parent.name == "annotations" else 0.8)
                if kind == "?" and f.is_file():
                    with open(f, "rb") as fh:
                        head = fh.read(65536)
                    if b'"annotations"' in head and (b'"segmentation"' in head or b'"segments_info"' in head):
                        return Detection.match(0.6)
        except (OSError, zipfile.BadZipFile, ValueError):
            pass  # unreadable: not recognisably COCO
        return Detection.missing("annotations/instances_<subset>.json (COCO: images, annotations, categories)")

    def _files(self) -> list[tuple[Path, str, dict[str, Any] | None]]:
        """The files to read, each with its kind (and its parsed JSON when reading it was needed to tell)."""
        if self.folder.is_file():
            candidates = [self.folder]
        else:
            candidates = _json_files(self.folder)
        out: list[tuple[Path, str, dict[str, Any] | None]] = []
        skipped = []
        for path in candidates:
            kind = _kind(path)
            data = None
            if kind == "?":
                data = self._load_json(path, check=False)
                kind = _content_kind(data)
                if kind is None and self.folder.is_file():
                    raise SourceError("not a COCO instances or panoptic file (needs lists 'images', 'annotations', "
                                      "'categories' with segmentations)", path=path)
            if kind is None:
                skipped.append(path.name)
            else:
                out.append((path, kind, data))
        if skipped:
            log.info("skipped %d COCO file%s that %s not instance annotations: %s", len(skipped), "s" * (len(skipped) > 1),
                     "are" if len(skipped) > 1 else "is", ", ".join(skipped))
        if not out:
            also = f" (skipped: {', '.join(skipped)})" if skipped else ""
            raise SourceError(f"no COCO instance annotations found (annotations/instances_<subset>.json, stuff_ or "
                              f"panoptic_){also}", path=self.folder)
        return out

    def _base(self) -> Path:
        base = self.folder.parent if self.folder.is_file() else self.folder
        return base.parent if base.name == "annotations" else base

    def read_export(self) -> list[_Image]:
        """Every image of every COCO file, in first-listed order; an image several files list is merged."""
        images: dict[str, _Image] = {}
        for path, kind, data in self._files():
            data = self._load_json(path) if data is None else data
            for image in self._parse_file(path, kind, data):
                known = images.get(image.key)
                if known is None:
                    images[image.key] = image
                elif known.size != image.size and known.error is None and image.error is None:
                    known.error = (f"{path.name} says the image is {image.size[1]} x {image.size[0]}, "
                                   f"{Path(known.json).name} {known.size[1]} x {known.size[0]}", "bad image size")
                else:
                    # Panoptic shapes name their PNG by its place in the list they join.
                    offset = len(known.pngs)
                    known.shapes.extend(Shape(s.kind, (s.data[0] + offset, s.data[1]), s.concepts) if s.kind == "panoptic"
                                        else s for s in image.shapes)
                    known.pngs.extend(image.pngs)
                    known.skipped.update(image.skipped)
                    known.error = known.error or image.error
        return list(images.values())

    def _load_json(self, path: Path, check: bool = True) -> Any:
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise SourceError(f"not valid JSON: {' '.join(str(e).split())[:200]}", path=path) from None
        except RecursionError:
            raise SourceError("not a usable COCO file: JSON nested too deeply", path=path) from None
        except OSError as e:
            raise SourceError(f"cannot read: {e.strerror or e}", path=path) from None
        if check and (not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories"))):
            raise SourceError("not a COCO instances file (needs lists 'images', 'annotations', 'categories')", path=path)
        return data

    def _categories(self, data: dict[str, Any], path: Path, kind: str) -> dict[int, tuple[str, str, str]]:
        """``id -> (name, supercategory, default category)`` of a file's categories, checked."""
        categories = {}
        for n, c in enumerate(data["categories"]):
            if not isinstance(c, dict):
                raise SourceError(f"categories[{n}] is not an object", path=path)
            name = c.get("name")
            if not isinstance(name, str):
                raise SourceError(f"categories[{n}].name {shown(name)} is not text", path=path)
            name = check_label_name(name.strip(), path=path, item=f"categories[{n}].name", error=SourceError)
            parent = c.get("supercategory")
            parent = parent.strip() if isinstance(parent, str) and parent.strip().isprintable() else ""
            if kind == "panoptic":
                default = DEFAULT_SHAPE if panoptic.isthing(c, f"categories[{n}]", path) else STUFF
            else:
                default = STUFF if kind == "stuff" else DEFAULT_SHAPE
            categories[_ident(c.get("id"), f"categories[{n}].id", path)] = (name, parent, default)
        return categories

    def _concept(self, name: str, default: str) -> Concept | None:
        if default != DEFAULT_SHAPE:
            self.inv.categories[name] = default
        return self.mapping.shape(name, default=default)

    def _painted(self, category: tuple[str, str, str], attrs: dict[str, Any], cache: dict) -> tuple[tuple[str, int], ...] | None:
        """The ``(category, id)`` pairs one annotation paints (None: its label is dropped); counts the inventory."""
        name, parent, default = category
        self.inv.labels[name] += 1
        if (name, default) not in cache:
            cache[(name, default)] = self._concept(name, default)
        concept = cache[(name, default)]
        if concept is None:
            return None
        painted = [(concept.category, self.ids.get(concept))]
        values = [("supercategory", parent)] if parent else []
        values += [(k, v) for k, v in attrs.items() if k not in _NOT_CONCEPTS and isinstance(v, (str, int, float))]
        for attr, value in values:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            self.inv.add_attribute(attr, text)
            extra = self.mapping.attribute(attr, text)
            if extra is not None:
                painted.append((extra.category, self.ids.get(extra)))
        return tuple(painted)

    def _images(self, data: dict[str, Any], path: Path, subset: str) -> tuple[list[_Image], dict[int, _Image]]:
        by_image: dict[int, _Image] = {}
        out = []
        keys: set[str] = set()
        for n, im in enumerate(data["images"]):
            if not isinstance(im, dict):
                raise SourceError(f"images[{n}] is not an object", path=path)
            image_id = _ident(im.get("id"), f"images[{n}].id", path)
            file_name = im.get("file_name")
            if not isinstance(file_name, str) or not file_name.strip():
                raise SourceError(f"images[{n}].file_name {shown(file_name)} is not a file name", path=path)
            file_name = file_name.replace("\\", "/")
            stem = file_name.rsplit(".", 1)[0]
            key = f"{subset}/{stem}" if subset else stem
            if key in keys:
                raise SourceError(f"image {key!r} is listed twice (images[{n}])", path=path)
            keys.add(key)
            try:
                if "\0" in file_name:
                    raise SourceItemError(f"file_name {file_name[:80]!r} holds a NUL byte", path=path, reason="bad path")
                size = check_canvas(im.get("width"), im.get("height"), path, what=f"image {file_name[:200]!r}")
                image = _Image(key, subset, file_name, size)
            except SourceItemError as e:
                image = _Image(key, subset, file_name, (0, 0), error=(e.message, e.reason))
            image.json, image.element = str(path), f"images[{n}].file_name"
            by_image[image_id] = image
            out.append(image)
        return out, by_image

    def _parse_file(self, path: Path, kind: str, data: dict[str, Any]) -> list[_Image]:
        subset = _subset(path)
        categories = self._categories(data, path, kind)
        out, by_image = self._images(data, path, subset)
        cache: dict = {}
        if kind == "panoptic":
            self._parse_panoptic(data, path, categories, by_image, cache)
            return out
        # COCO-Stuff's "other" is thing pixels; a mapping that names it decides for itself.
        other_mapped = any(normalize_name(k) == _STUFF_OTHER for k in self.mapping.labels)
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                raise SourceError(f"annotations[{n}] is not an object", path=path)
            image = by_image.get(_ident(ann.get("image_id"), f"annotations[{n}].image_id", path))
            category = categories.get(_ident(ann.get("category_id"), f"annotations[{n}].category_id", path))
            if image is None or category is None:
                raise SourceError(f"annotations[{n}] refers to an unknown image or category", path=path)
            if kind == "stuff" and normalize_name(category[0]) == _STUFF_OTHER and not other_mapped:
                image.skipped["COCO-Stuff 'other' (thing pixels)"] += 1
                continue
            attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            painted = self._painted(category, attrs, cache)
            if painted is None:
                continue
            try:
                shape = self._shape(ann, attrs)
            except (ValueError, SourceItemError) as e:
                if image.error is None:
                    image.error = (f"{path.name}: annotations[{n}]: {getattr(e, 'message', e)}", "bad mask")
                continue
            if shape is None:
                image.skipped["degenerate shape"] += 1
                continue
            image.shapes.append(Shape(shape[0], shape[1], painted))
        return out

    def _parse_panoptic(self, data: dict[str, Any], path: Path, categories: dict, by_image: dict[int, _Image], cache: dict) -> None:
        for entry in panoptic.entries(data, path):
            image = by_image.get(entry.image_id)
            if image is None:
                raise SourceError(f"annotations[{entry.index}] refers to an unknown image {entry.image_id}", path=path)
            slot = len(image.pngs)
            image.pngs.append((str(path), entry.png, frozenset(s for s, _ in entry.segments)))
            for k, (segment, category_id) in enumerate(entry.segments):
                category = categories.get(category_id)
                if category is None:
                    raise SourceError(f"annotations[{entry.index}].segments_info[{k}] refers to unknown category "
                                      f"{category_id}", path=path)
                painted = self._painted(category, {}, cache)
                if painted is not None:
                    image.shapes.append(Shape("panoptic", (slot, segment), painted))

    @staticmethod
    def _shape(ann: dict[str, Any], attrs: dict[str, Any]) -> tuple[str, Any] | None:
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            polys = [finite_points(p) if isinstance(p, list) else None for p in seg]
            polys = [p.ravel().tolist() for p in polys if p is not None and len(p) >= 3]
            return ("coco", polys) if polys else None
        if isinstance(seg, dict):
            return ("coco", rle_counts(seg))
        bbox = finite_points(ann.get("bbox"))
        if bbox is None or bbox.size != 4 or bbox[1, 0] <= 0 or bbox[1, 1] <= 0:
            return None
        (x, y), (w, h) = bbox
        try:
            rotation = float(attrs.get("rotation", 0.0) or 0.0)
        except (TypeError, ValueError, OverflowError):
            rotation = 0.0
        if not math.isfinite(rotation) or not math.isfinite(x + w) or not math.isfinite(y + h):
            return None
        return ("polygon", box_points(x, y, x + w, y + h, rotation))

    def image_folders(self, image: _Image) -> list[Path]:
        """Where an image's ``file_name`` is looked for, in order (the release, CVAT, flat, beside)."""
        base = self._base()
        subset = [base / image.subset, base / "images" / image.subset] if image.subset else []
        return list(dict.fromkeys(subset + [base / "images" / "default", base / "images", base]))

    def load(self, item: int) -> Record:
        """Decode one image's annotations into label layers."""
        image = self._parse()[item]
        base = self._base()
        if image.error:
            raise SourceItemError(image.error[0], path=base, item=image.file_name[:200], reason=image.error[1])
        folders = self.image_folders(image)
        path = next((f / image.file_name for f in folders if (f / image.file_name).is_file()), None)
        if path is None:
            looked = ", ".join(panoptic.relative(f, base) for f in folders)
            # The message names the image itself: the build's summary keeps only path and message.
            raise SourceItemError(f"image {image.file_name[:200]!r} is missing; looked in {looked} (relative to the input)",
                                  path=base, reason="missing image")
        contained(base, path, where=Path(image.json), element=image.element)
        shapes = image.shapes
        if image.pngs:
            ids = {}
            for slot, (json_path, png, listed) in enumerate(image.pngs):
                ids[slot] = panoptic.segment_ids(base, Path(json_path), png, image.size)
                panoptic.check_listed(ids[slot], set(listed), png)
            shapes = [Shape("bitmap", (0, 0, ids[s.data[0]] == s.data[1]), s.concepts) if s.kind == "panoptic" else s
                      for s in shapes]
        return paint_record(image.key, path, image.size, shapes, {}, self.ids.names, image.skipped, path, mask_fn=coco_mask)
