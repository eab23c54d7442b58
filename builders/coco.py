"""COCO instances files, as CVAT's "COCO 1.0" export writes them (FORMATS.md B.11, Precisions 9).

Layout (a folder, or the .zip CVAT downloads)::

    annotations/instances_<subset>.json     one or more (instances_default.json for a task)
    images/<subset>/<file_name>             or images/<file_name>, or beside the JSON

Polygons (several per object allowed), RLE (uncompressed counts lists and compressed strings) and
bbox-only annotations (empty ``segmentation``, rotated by ``attributes.rotation`` when CVAT wrote
one) are decoded with pycocotools and painted in annotation order (COCO has no stacking order).
Category ids need not be contiguous; image ids may clash between files (keys use the subset).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as cocomask

from concepts.builders import register
from concepts.builders._raster import Shape, box_points, check_canvas, finite_points, paint_record, shape_mask
from concepts.builders._export import ExportBuilder
from concepts.builders.base import Detection
from concepts.errors import SourceError, SourceItemError
from concepts.records import Record

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


def _json_files(folder: Path) -> list[Path]:
    found = sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
    return found or sorted(folder.glob("instances_*.json"))


def _subset(path: Path) -> str:
    stem = path.stem
    subset = stem[len("instances_"):] if stem.startswith("instances_") else stem
    return "" if subset == "default" else subset


def coco_mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
    """Decode a COCO segmentation (polygons or RLE) with pycocotools; other kinds as usual."""
    if shape.kind != "coco":
        return shape_mask(shape, height, width, path)
    seg = shape.data
    if isinstance(seg, list):
        rles = cocomask.frPyObjects(seg, height, width)
        return cocomask.decode(cocomask.merge(rles)).astype(bool)
    h, w = (int(v) for v in seg["size"])
    counts = seg["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise SourceItemError(f"RLE counts add up to {sum(counts)}, not {h} x {w} = {h * w}", path=path, reason="bad mask")
        rle = cocomask.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
    else:
        rle = {"counts": counts.encode("ascii") if isinstance(counts, str) else counts, "size": [h, w]}
    try:
        decoded = cocomask.decode(rle).astype(bool)
    except (TypeError, ValueError) as e:
        raise SourceItemError(f"cannot decode RLE: {e}", path=path, reason="bad mask") from None
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
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.lower().endswith(".json") and "instances" in n.rsplit("/", 1)[-1]]
            return Detection.match(0.8) if names else Detection.missing("annotations/instances_<subset>.json in the zip")
        files = [path] if path.is_file() and path.suffix == ".json" else _json_files(path) if path.is_dir() else []
        for f in files:
            with open(f, "rb") as fh:
                head = fh.read(65536)
            if b'"annotations"' in head or b'"categories"' in head or b'"images"' in head:
                return Detection.match(0.8)
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

    def _parse_file(self, path: Path) -> list[_Image]:
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise SourceError(f"not valid JSON: {e}", path=path) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise SourceError("not a COCO instances file (needs lists 'images', 'annotations', 'categories')", path=path)
        subset = _subset(path)
        try:
            categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            records = [(int(im["id"]), str(im["file_name"]).replace("\\", "/"), im.get("width"), im.get("height")) for im in data["images"]]
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"malformed category or image entry: {e!r}", path=path) from None
        concepts = {}
        by_image: dict[int, _Image] = {}
        out = []
        for image_id, file_name, w, h in records:
            stem = file_name.rsplit(".", 1)[0]
            key = f"{subset}/{stem}" if subset else stem
            try:
                size = check_canvas(w, h, path, what=f"image {file_name!r}")
                image = _Image(key, subset, file_name, size)
            except SourceItemError as e:
                image = _Image(key, subset, file_name, (0, 0), error=(e.message, e.reason))
            by_image[image_id] = image
            out.append(image)
        for n, ann in enumerate(data["annotations"]):
            try:
                image = by_image[int(ann["image_id"])]
                label = categories[int(ann["category_id"])]
            except (KeyError, TypeError, ValueError):
                raise SourceError(f"annotation {n} refers to an unknown image or category", path=path) from None
            self.inv.labels[label] += 1
            if label not in concepts:
                concepts[label] = self.mapping.shape(label)
            concept = concepts[label]
            if concept is None:
                continue
            painted = [(concept.category, self.ids.get(concept))]
            attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            for name, value in attrs.items():
                if name in _NOT_CONCEPTS:
                    continue
                self.inv.add_attribute(name, str(value).lower() if isinstance(value, bool) else str(value))
                extra = self.mapping.attribute(name, str(value).lower() if isinstance(value, bool) else str(value))
                if extra is not None:
                    painted.append((extra.category, self.ids.get(extra)))
            shape = self._shape(ann, attrs)
            if shape is None:
                image.skipped["degenerate shape"] += 1
                continue
            image.shapes.append(Shape(shape[0], shape[1], tuple(painted)))
        return out

    @staticmethod
    def _shape(ann: dict[str, Any], attrs: dict[str, Any]) -> tuple[str, Any] | None:
        seg = ann.get("segmentation")
        if isinstance(seg, list) and seg:
            polys = [finite_points(p) for p in seg]
            polys = [p.ravel().tolist() for p in polys if p is not None and len(p) >= 3]
            return ("coco", polys) if polys else None
        if isinstance(seg, dict):
            ok = isinstance(seg.get("size"), list) and len(seg["size"]) == 2 and isinstance(seg.get("counts"), (list, str))
            return ("coco", {"size": seg["size"], "counts": seg["counts"]}) if ok else None
        bbox = finite_points(ann.get("bbox"))
        if bbox is None or bbox.size != 4 or bbox[1, 0] <= 0 or bbox[1, 1] <= 0:
            return None
        (x, y), (w, h) = bbox
        try:
            rotation = float(attrs.get("rotation", 0.0) or 0.0)
        except (TypeError, ValueError):
            rotation = 0.0
        return ("polygon", box_points(x, y, x + w, y + h, rotation))

    def load(self, item: int) -> Record:
        """Decode one image's annotations into label layers."""
        image = self._parse()[item]
        base = self._base()
        if image.error:
            raise SourceItemError(image.error[0], path=base, item=image.file_name, reason=image.error[1])
        candidates = ([base / "images" / image.subset / image.file_name] if image.subset else []) + [
            base / "images" / "default" / image.file_name, base / "images" / image.file_name, base / image.file_name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise SourceItemError("image file not in the export", path=candidates[0], reason="missing image")
        return paint_record(image.key, path, image.size, image.shapes, {}, self.ids.names, image.skipped, path, mask_fn=coco_mask)
