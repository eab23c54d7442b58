"""COCO instances files, as CVAT's "COCO 1.0" export writes them (FORMATS.md B.11, Precisions 9).

Layout (a folder, or the .zip CVAT downloads)::

    annotations/instances_<subset>.json     one or more (instances_default.json for a task)
    images/<subset>/<file_name>             or images/<file_name>, or beside the JSON

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
from concepts.builders._raster import Shape, box_points, check_canvas, finite_points, paint_record, polygon_mask, shape_mask
from concepts.builders._export import ExportBuilder, contained
from concepts.builders.base import Detection
from concepts.errors import SourceError, SourceItemError
from concepts.limits import check_pixels
from concepts.records import Record

log = logging.getLogger(__name__)

_NOT_CONCEPTS = {"occluded", "rotation", "track_id", "keyframe", "z_order"}
#: Polygons whose vertices lie this far outside the canvas are rasterised here, not by pycocotools
#: (whose rasteriser allocates per unit of outline length and overflows on huge coordinates).
_SANE_MARGIN = 4


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


def _json_files(folder: Path) -> list[Path]:
    found = sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
    return found or sorted(folder.glob("instances_*.json"))


def _subset(path: Path) -> str:
    stem = path.stem
    subset = stem[len("instances_"):] if stem.startswith("instances_") else stem
    return "" if subset == "default" else subset


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
        reach = _SANE_MARGIN * max(height, width) + 16
        if all(max(abs(v) for v in poly) <= reach for poly in seg):
            rles = cocomask.frPyObjects(seg, height, width)
            return cocomask.decode(cocomask.merge(rles)).astype(bool)
        out = np.zeros((height, width), dtype=bool)
        for poly in seg:
            out ^= polygon_mask(np.asarray(poly, dtype=np.float64).reshape(-1, 2), height, width)
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
    """COCO instances JSON (CVAT COCO 1.0 or any COCO-style file)."""

    NAME = "coco"
    DESCRIPTION = "COCO instances: annotations/instances_<subset>.json (+ images/<subset>/), folder or .zip"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder (or .zip) with ``annotations/*.json`` holding images, annotations and categories."""
        try:
            if path.is_file() and zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    names = [n for n in zf.namelist() if n.lower().endswith(".json") and "instances" in n.rsplit("/", 1)[-1]]
                return Detection.match(0.8) if names else Detection.missing("annotations/instances_<subset>.json in the zip")
            files = [path] if path.is_file() and path.suffix == ".json" else _json_files(path) if path.is_dir() else []
            for f in files:
                if not f.is_file():
                    continue
                with open(f, "rb") as fh:
                    head = fh.read(65536)
                if b'"annotations"' in head or b'"categories"' in head or b'"images"' in head:
                    return Detection.match(0.8)
        except (OSError, zipfile.BadZipFile, ValueError):
            pass  # unreadable: not recognisably COCO
        return Detection.missing("annotations/instances_<subset>.json (COCO: images, annotations, categories)")

    def _files(self) -> list[Path]:
        if self.folder.is_file():
            return [self.folder]
        files = _json_files(self.folder)
        if not files:
            raise SourceError("no COCO JSON found (annotations/instances_<subset>.json)", path=self.folder)
        return files

    def _base(self) -> Path:
        base = self.folder.parent if self.folder.is_file() else self.folder
        return base.parent if base.name == "annotations" else base

    def read_export(self) -> list[_Image]:
        """Every image of every COCO file, in file then list order."""
        images: list[_Image] = []
        for path in self._files():
            images.extend(self._parse_file(path))
        keys = Counter(i.key for i in images)
        dupes = [k for k, n in keys.items() if n > 1]
        if dupes:
            raise SourceError(f"image {dupes[0]!r} is listed {keys[dupes[0]]} times", path=self._files()[0])
        return images

    def _load_json(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise SourceError(f"not valid JSON: {' '.join(str(e).split())[:200]}", path=path) from None
        except RecursionError:
            raise SourceError("not a usable COCO file: JSON nested too deeply", path=path) from None
        except OSError as e:
            raise SourceError(f"cannot read: {e.strerror or e}", path=path) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise SourceError("not a COCO instances file (needs lists 'images', 'annotations', 'categories')", path=path)
        return data

    def _parse_file(self, path: Path) -> list[_Image]:
        data = self._load_json(path)
        subset = _subset(path)
        categories: dict[int, str] = {}
        for n, c in enumerate(data["categories"]):
            if not isinstance(c, dict):
                raise SourceError(f"categories[{n}] is not an object", path=path)
            name = c.get("name")
            if not isinstance(name, str):
                raise SourceError(f"categories[{n}].name {shown(name)} is not text", path=path)
            categories[_ident(c.get("id"), f"categories[{n}].id", path)] = check_label_name(
                name.strip(), path=path, item=f"categories[{n}].name", error=SourceError)
        concepts = {}
        by_image: dict[int, _Image] = {}
        out = []
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
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                raise SourceError(f"annotations[{n}] is not an object", path=path)
            image = by_image.get(_ident(ann.get("image_id"), f"annotations[{n}].image_id", path))
            label = categories.get(_ident(ann.get("category_id"), f"annotations[{n}].category_id", path))
            if image is None or label is None:
                raise SourceError(f"annotations[{n}] refers to an unknown image or category", path=path)
            self.inv.labels[label] += 1
            if label not in concepts:
                concepts[label] = self.mapping.shape(label)
            concept = concepts[label]
            if concept is None:
                continue
            painted = [(concept.category, self.ids.get(concept))]
            attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            for name, value in attrs.items():
                if name in _NOT_CONCEPTS or not isinstance(value, (str, int, float)):
                    continue
                text = str(value).lower() if isinstance(value, bool) else str(value)
                self.inv.add_attribute(name, text)
                extra = self.mapping.attribute(name, text)
                if extra is not None:
                    painted.append((extra.category, self.ids.get(extra)))
            try:
                shape = self._shape(ann, attrs)
            except (ValueError, SourceItemError) as e:
                if image.error is None:
                    image.error = (f"annotations[{n}]: {getattr(e, 'message', e)}", "bad mask")
                continue
            if shape is None:
                image.skipped["degenerate shape"] += 1
                continue
            image.shapes.append(Shape(shape[0], shape[1], tuple(painted)))
        return out

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

    def load(self, item: int) -> Record:
        """Decode one image's annotations into label layers."""
        image = self._parse()[item]
        base = self._base()
        if image.error:
            raise SourceItemError(image.error[0], path=base, item=image.file_name[:200], reason=image.error[1])
        candidates = ([base / "images" / image.subset / image.file_name] if image.subset else []) + [
            base / "images" / "default" / image.file_name, base / "images" / image.file_name, base / image.file_name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SourceItemError("image file not in the export", path=candidates[0], reason="missing image")
        contained(base, path, where=Path(image.json), element=image.element)
        return paint_record(image.key, path, image.size, image.shapes, {}, self.ids.names, image.skipped, path, mask_fn=coco_mask)
