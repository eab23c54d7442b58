"""wkentaro/labelme JSON files (FORMATS.md B.9): one ``<stem>.json`` per image, in any folder tree.

Read as labelme itself reads them (``labelme/_label_file.py``) and painted as its exporters paint
them (``shape_to_mask`` with PIL ImageDraw, in file order, later over earlier; see
docs/decisions/rasterisation.md): polygons filled with their outline, rectangles with both
corner pixels, circles as PIL's ellipse, ``line``/``linestrip`` 10 pixels wide, ``point`` a disc of
radius 5, ``mask`` patches at their truncated top-left point. Lines and points are painted (and
counted in a note); drop their labels in the concept mapping to leave them out. ``_background_``
and ``__ignore__`` shapes are not labels: they make their pixels unlabeled for the shapes before
them, as labelme2voc paints them 0 and -1. ``points`` (prompt) shapes are counted as skipped.
Image-level ``flags`` that are true become tags (``scene`` by default, see the concept mapping).

The image is the embedded ``imageData`` whenever it is not null, else ``imagePath`` relative to the
JSON (backslashes allowed), with its EXIF orientation applied, as labelme does, since the points
refer to it. An ``imagePath`` that leads outside the input (``../``, absolute, a symlink) is never
read (the file is skipped, "path outside the input"). JSON files that are not labelme files (a
config, a dataset summary) are ignored with a note. Declared and decoded sizes pass the one pixel
limit; a file whose JSON has the wrong shape or types is skipped with one line naming it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from concepts.builders import register
from concepts.broden.format import check_label_name
from concepts.builders._raster import Shape, box_points, check_canvas, ellipse_mask, finite_points, paint_record, polygon_mask, shape_mask
from concepts.builders._export import ExportBuilder, contained
from concepts.builders.base import Detection
from concepts import progress
from concepts.errors import SourceItemError
from concepts.records import Record

log = logging.getLogger(__name__)

#: Labels labelme2voc paints 0 (``_background_``) and -1 (``__ignore__``): unlabeled here.
ERASERS = ("_background_", "__ignore__")
#: ``shape_to_mask``'s defaults, which labelme2voc and ``shapes_to_label`` use.
LINE_WIDTH = 10
POINT_SIZE = 5
#: Shape types and how many points each needs (labelme asserts these); None: three or more, 0: two or more.
KINDS = {"polygon": None, "oriented_rectangle": None, "rectangle": 2, "circle": 2, "line": 2, "linestrip": 0,
         "point": 1, "mask": 2}
#: Shapes without area that labelme's exporters paint anyway, counted in a note.
THIN = ("line", "linestrip", "point")
#: How many JSON files detection reads before deciding a folder holds no labelme file.
DETECT_FILES = 64
#: Vertices farther than this many canvas sizes outside the image are not given to PIL, whose
#: ellipse costs time in proportion to the radius and whose integer coordinates overflow.
SANE_MARGIN = 4


@dataclass
class _Item:
    key: str
    json: str
    image_path: str | None
    size: tuple[int, int] | None
    embedded: bool = False
    shapes: list[Shape] = field(default_factory=list)
    tags: dict[str, list[int]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    thin: Counter = field(default_factory=Counter)
    error: tuple[str, str] | None = None


#: Patch offsets beyond this are off any canvas the pixel limit allows; clipping keeps them machine ints.
_FAR = 1 << 40


def _looks_like_labelme(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return b'"shapes"' in head and (b'"imagePath"' in head or b'"imageData"' in head)


def _json_files(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.rglob("*.json") if p.is_file()) if root.is_dir() else [root] if root.suffix == ".json" else []
    except OSError:
        return []


def _read_json(path: Path) -> object:
    """The parsed file; ValueError (one line) when it cannot be."""
    try:
        return json.loads(path.read_bytes())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(" ".join(str(e).split())[:200]) from None
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None


def _decode_png(data: str, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as im:
            check_canvas(im.width, im.height, path, what="mask patch")
            # labelme: img_b64_to_arr(mask).astype(bool), so any non-zero value is inside.
            return np.asarray(im.convert("L")) > 0
    except SourceItemError:
        raise
    except Image.DecompressionBombError as e:
        raise SourceItemError(f"refused a mask shape: {e}", path=path, reason="image too large") from None
    except (OSError, SyntaxError, ValueError, binascii.Error) as e:
        raise SourceItemError(f"cannot decode a mask shape: {e}", path=path, reason="bad mask") from None


def _clip_segment(p: np.ndarray, q: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The part of segment p-q inside the square [lo, hi]^2 (Liang-Barsky), or None."""
    t0, t1 = 0.0, 1.0
    d = q - p
    for k in (0, 1):
        for num, den in ((p[k] - lo, -d[k]), (hi - p[k], d[k])):
            if den == 0:
                if num < 0:
                    return None
                continue
            t = num / den
            if den < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    if t0 > t1:
        return None
    return p + t0 * d, p + t1 * d


def labelme_mask(kind: str, points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels of one labelme shape as labelme's ``shape_to_mask`` paints them with PIL ImageDraw."""
    reach = SANE_MARGIN * max(height, width) + 16
    far = float(np.abs(points).max()) > reach
    if kind == "circle":
        (cx, cy), (px, py) = points.tolist()
        d = math.hypot(cx - px, cy - py)
        far = far or d > reach
    if far:
        return _far_mask(kind, points, height, width, reach)
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    xy = [(float(x), float(y)) for x, y in points]
    if kind == "circle":
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "rectangle":
        # Pillow refuses corners given right-to-left; labelme stores them in drawing order.
        (x0, y0), (x1, y1) = points.min(axis=0).tolist(), points.max(axis=0).tolist()
        draw.rectangle([x0, y0, x1, y1], outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        draw.line(xy, fill=1, width=LINE_WIDTH)
    elif kind == "point":
        (cx, cy), r = xy[0], POINT_SIZE
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.asarray(im, dtype=bool)


def _far_mask(kind: str, points: np.ndarray, height: int, width: int, reach: float) -> np.ndarray:
    """Shapes reaching far outside the canvas (labelme's canvas never makes them): the same geometry, safely."""
    if kind == "circle":
        (cx, cy), (px, py) = points.tolist()
        d = math.hypot(cx - px, cy - py)
        return ellipse_mask(cx, cy, d, d, 0.0, height, width) if math.isfinite(d) else np.zeros((height, width), dtype=bool)
    if kind == "rectangle":
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        # Both corner pixels included, as PIL's rectangle.
        return polygon_mask(box_points(x0, y0, x1 + 1, y1 + 1), height, width)
    if kind in ("line", "linestrip"):
        im = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(im)
        # PIL draws a wide polyline segment by segment; each is clipped to a square far around the
        # canvas (the same line; Pillow rounds the new end points, which can move an edge pixel of
        # a sloped line by one).
        for p, q in zip(points[:-1], points[1:]):
            part = _clip_segment(p, q, -reach, reach)
            if part is not None:
                draw.line([tuple(map(float, part[0])), tuple(map(float, part[1]))], fill=1, width=LINE_WIDTH)
        return np.asarray(im, dtype=bool)
    if kind == "point":
        return np.zeros((height, width), dtype=bool)  # a radius-5 disc that far out misses the canvas
    return polygon_mask(points, height, width)


def _mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
    """Rasterise a labelme shape (``labelme`` and ``labelme_patch`` kinds), others as usual."""
    if shape.kind == "labelme":
        kind, points = shape.data
        return labelme_mask(kind, points, height, width)
    if shape.kind != "labelme_patch":
        return shape_mask(shape, height, width, path)
    n, (x1, y1, x2, y2), data = shape.data
    patch = _decode_png(data, path)
    if patch.shape != (y2 - y1 + 1, x2 - x1 + 1):
        raise SourceItemError(f"shapes[{n}]: the mask is {patch.shape[1]} x {patch.shape[0]} pixels but its points span "
                              f"{x2 - x1 + 1} x {y2 - y1 + 1} (labelme places it over points[0]..points[1], both included)",
                              path=path, reason="bad mask")
    return shape_mask(Shape("bitmap", (x1, y1, patch), shape.concepts), height, width, path)


@register
class LabelmeJsonBuilder(ExportBuilder):
    """labelme (wkentaro) JSON annotations."""

    NAME = "labelme-json"
    KEY = "labelme_json"
    DESCRIPTION = "labelme JSON: <stem>.json per image with shapes and imagePath/imageData"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder holding labelme JSON files (``shapes`` and ``imagePath``/``imageData``); other JSON files may sit beside them."""
        if any(_looks_like_labelme(p) for p in _json_files(path)[:DETECT_FILES]):
            return Detection.match(0.8)
        return Detection.missing("labelme *.json files (keys shapes, imagePath)")

    def read_export(self) -> list[_Item]:
        """Every labelme JSON file, sorted by path; other JSON files are ignored with a note."""
        files = _json_files(self.root)
        base = self.root if self.root.is_dir() else self.root.parent
        self.base = base
        items, others = [], []
        for p in progress.progress(files, desc="reading labelme JSON", unit="file"):
            if _looks_like_labelme(p):
                items.append(self._parse_file(p, base))
            else:
                others.append(p)
        if others:
            log.info("%s: ignored %d JSON file(s) that are not labelme files (no shapes and imagePath/imageData), "
                     "for example %s", base, len(others), others[0].relative_to(base).as_posix())
        thin = sum((i.thin for i in items), Counter())
        if thin:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(thin.items()))
            log.info("%s: painted %s shape(s) as labelme's exporter does (lines %d pixels wide, points discs of "
                     "radius %d); drop their labels in the concept mapping to leave them out", base, counts, LINE_WIDTH, POINT_SIZE)
        return items

    def _parse_file(self, path: Path, base: Path) -> _Item:
        key = path.relative_to(base).with_suffix("").as_posix()
        try:
            contained(base, path, where=path, element="the file")
            data = _read_json(path)
            if not isinstance(data, dict):
                raise ValueError("the top level is not an object")
            shapes = data.get("shapes")
            flags = data.get("flags") or {}
            image_path = data.get("imagePath")
            if not isinstance(shapes, list):
                raise ValueError(f"shapes is {type(shapes).__name__}, not a list")
            if not isinstance(flags, dict):
                raise ValueError(f"flags is {type(flags).__name__}, not an object")
            if image_path is not None and not isinstance(image_path, str):
                raise ValueError(f"imagePath is {type(image_path).__name__}, not text")
        except SourceItemError as e:
            return _Item(key, str(path), None, None, error=(e.message, e.reason))
        except ValueError as e:
            return _Item(key, str(path), None, None, error=(f"not a labelme JSON file: {e}", "broken annotation"))
        item = _Item(key, str(path), image_path.replace("\\", "/") if image_path else None, None,
                     embedded=data.get("imageData") is not None)
        try:
            # labelme writes both; other tools leave them null or 0 (unknown), which is not checked.
            if data.get("imageHeight") and data.get("imageWidth"):
                item.size = check_canvas(data.get("imageWidth"), data.get("imageHeight"), path)
            for name, value in sorted(flags.items()):
                if value is True:
                    check_label_name(name.strip(), path=path, item=f"flag {name[:40]!r}", error=SourceItemError)
                    self.inv.tags[name] += 1
                    concept = self.mapping.tag(name)
                    if concept is not None:
                        item.tags.setdefault(concept.category, []).append(self.ids.get(concept))
            for n, shape in enumerate(shapes):
                if not isinstance(shape, dict):
                    item.skipped["malformed shape"] += 1
                    continue
                self._shape(shape, item, n, path)
        except SourceItemError as e:
            item.error = (f"{e.item}: {e.message}" if e.item else e.message, e.reason if e.reason != "unreadable" else "bad label name")
        return item

    def _shape(self, shape: dict, item: _Item, n: int, path: Path) -> None:
        kind = shape.get("shape_type") or "polygon"
        raw = shape.get("label")
        if not isinstance(kind, str) or not isinstance(raw, (str, type(None))):
            item.skipped["malformed shape"] += 1
            return
        label = (raw or "").strip()
        if label:
            check_label_name(label, path=path, item=f"shapes[{n}].label", error=SourceItemError)
        if kind not in KINDS:
            # "points" (AI prompt points) included: labelme's shape_to_mask refuses them.
            item.skipped["points" if kind == "points" else f"unknown shape type {kind}"] += 1
            return
        if not label:
            item.skipped["empty label"] += 1
            return
        concepts: tuple[tuple[str, int], ...] = ()
        if label not in ERASERS:
            self.inv.labels[label] += 1
            concept = self.mapping.shape(label)
            if concept is None:
                return
            concepts = ((concept.category, self.ids.get(concept)),)
        geometry = self._geometry(kind, shape, n)
        if geometry is None:
            item.skipped["degenerate shape"] += 1
            return
        if kind in THIN:
            item.thin[kind] += 1
        item.shapes.append(Shape(*geometry, concepts) if concepts else Shape("erase", Shape(*geometry, ()), ()))

    @staticmethod
    def _geometry(kind: str, shape: dict, n: int) -> tuple[str, object] | None:
        pts = finite_points(shape.get("points"))
        if pts is None:
            return None
        need = KINDS[kind]
        if (need is None and len(pts) < 3) or (need == 0 and len(pts) < 2) or (need and len(pts) != need):
            return None
        if kind != "mask":
            return "labelme", (kind, pts)
        if not isinstance(shape.get("mask"), str):
            return None
        # labelme: (x1, y1), (x2, y2) = np.asarray(points).astype(int), the patch over [y1:y2+1, x1:x2+1].
        (x1, y1), (x2, y2) = ((int(min(max(v, -_FAR), _FAR)) for v in p) for p in pts.tolist())
        return "labelme_patch", (n, (x1, y1, x2, y2), shape["mask"])

    def _image(self, entry: _Item) -> tuple[object, tuple[int, int]]:
        json_path = Path(entry.json)
        if entry.embedded:
            return self._embedded(json_path)
        if not entry.image_path:
            raise SourceItemError("neither imageData nor imagePath is given", path=json_path, reason="missing image")
        disk = json_path.parent / entry.image_path
        # Never read, whether it exists or not.
        contained(self.base, disk, where=json_path, element="imagePath")
        if not disk.is_file():
            raise SourceItemError("image file not found and no imageData embedded", path=disk, reason="missing image")
        try:
            with Image.open(disk) as im:
                check_canvas(im.width, im.height, disk)
                if im.getexif().get(0x0112, 1) == 1:
                    return disk, (im.height, im.width)
                log.debug("%s: EXIF orientation applied, as labelme does", disk)
                rotated = ImageOps.exif_transpose(im)
                return rotated, (rotated.height, rotated.width)
        except SourceItemError:
            raise
        except Image.DecompressionBombError as e:
            raise SourceItemError(f"refused: {e}", path=disk, reason="image too large") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise SourceItemError(f"cannot decode image: {e}", path=disk, reason="unreadable image") from None

    @staticmethod
    def _embedded(json_path: Path) -> tuple[bytes, tuple[int, int]]:
        """The embedded ``imageData``: labelme uses it whenever it is not null, whatever imagePath says."""
        try:
            data = _read_json(json_path).get("imageData")  # a dict: checked when the export was read
        except ValueError as e:
            raise SourceItemError(f"not a labelme JSON file: {e}", path=json_path, reason="broken annotation") from None
        if not isinstance(data, str):
            raise SourceItemError(f"imageData is {type(data).__name__}, not base64 text", path=json_path, reason="unreadable image")
        try:
            raw = base64.b64decode(data)
            with Image.open(io.BytesIO(raw)) as im:
                check_canvas(im.width, im.height, json_path, what="embedded image")
                return raw, (im.height, im.width)
        except SourceItemError:
            raise
        except Image.DecompressionBombError as e:
            raise SourceItemError(f"refused embedded image: {e}", path=json_path, reason="image too large") from None
        except (OSError, SyntaxError, ValueError, binascii.Error) as e:
            raise SourceItemError(f"cannot decode imageData: {e}", path=json_path, reason="unreadable image") from None

    def load(self, item: int) -> Record:
        """Paint one JSON file's shapes into label layers."""
        entry = self._parse()[item]
        if entry.error:
            raise SourceItemError(entry.error[0], path=entry.json, reason=entry.error[1])
        image, size = self._image(entry)
        if entry.size and entry.size != size:
            raise SourceItemError(
                f"imageHeight x imageWidth {entry.size[0]} x {entry.size[1]} disagree with the image {size[0]} x {size[1]}",
                path=entry.json, reason="image size mismatch",
            )
        return paint_record(entry.key, image, size, entry.shapes, entry.tags, self.ids.names, entry.skipped, Path(entry.json),
                            mask_fn=_mask)
