"""wkentaro/labelme JSON files (FORMATS.md B.9): one ``<stem>.json`` per image, in any folder tree.

Area shapes (``polygon``, ``rectangle``, ``oriented_rectangle``, ``circle``, ``mask`` patches) are
painted in file order (later over earlier); ``line``, ``linestrip``, ``point`` and ``points`` have
no area and are counted as skipped; ``_background_`` and ``__ignore__`` are not labels. Image-level
``flags`` that are true become tags (``scene`` by default, see the concept mapping). The image is
``imagePath`` relative to the JSON (backslashes allowed), else the embedded ``imageData``; an image
read from disk gets its EXIF orientation applied, as labelme does, since the points refer to it.
An ``imagePath`` that leads outside the input (``../``, absolute, a symlink) is not read: the
embedded ``imageData`` is used if there is one, else the file is skipped ("path outside the input").
Declared and decoded sizes pass the one pixel limit; a file whose JSON has the wrong shape or types
is skipped with one line naming it.
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
from PIL import Image, ImageOps

from concepts.builders import register
from concepts.broden.format import check_label_name
from concepts.builders._raster import Shape, box_points, check_canvas, finite_points, paint_record, shape_mask
from concepts.builders._export import ExportBuilder, contained
from concepts.builders.base import Detection
from concepts import progress
from concepts.errors import SourceItemError
from concepts.records import Record

log = logging.getLogger(__name__)

NO_AREA = ("line", "linestrip", "point", "points")
NOT_LABELS = ("_background_", "__ignore__")


@dataclass
class _Item:
    key: str
    json: str
    image_path: str | None
    size: tuple[int, int] | None
    shapes: list[Shape] = field(default_factory=list)
    tags: dict[str, list[int]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
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
            return np.asarray(im.convert("L")) > 0
    except SourceItemError:
        raise
    except Image.DecompressionBombError as e:
        raise SourceItemError(f"refused a mask shape: {e}", path=path, reason="image too large") from None
    except (OSError, SyntaxError, ValueError, binascii.Error) as e:
        raise SourceItemError(f"cannot decode a mask shape: {e}", path=path, reason="bad mask") from None


@register
class LabelmeJsonBuilder(ExportBuilder):
    """labelme (wkentaro) JSON annotations."""

    NAME = "labelme-json"
    KEY = "labelme_json"
    DESCRIPTION = "labelme JSON: <stem>.json per image with shapes and imagePath/imageData"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder whose first JSON file (sorted) has ``shapes`` and ``imagePath``/``imageData``."""
        try:
            files = sorted(p for p in path.rglob("*.json") if p.is_file()) if path.is_dir() else [path] if path.suffix == ".json" else []
        except OSError:
            files = []
        if files and _looks_like_labelme(files[0]):
            return Detection.match(0.8)
        return Detection.missing("labelme *.json files (keys shapes, imagePath)")

    def read_export(self) -> list[_Item]:
        """Every labelme JSON file, sorted by path."""
        files = sorted(p for p in self.root.rglob("*.json") if p.is_file()) if self.root.is_dir() else [self.root]
        base = self.root if self.root.is_dir() else self.root.parent
        self.base = base
        return [self._parse_file(p, base) for p in progress.progress(files, desc="reading labelme JSON", unit="file")
                if _looks_like_labelme(p)]

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
        item = _Item(key, str(path), image_path.replace("\\", "/") if image_path else None, None)
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
        if kind in NO_AREA:
            item.skipped[kind] += 1
            return
        if not label or label in NOT_LABELS:
            item.skipped["empty label" if not label else label] += 1
            return
        self.inv.labels[label] += 1
        concept = self.mapping.shape(label)
        if concept is None:
            return
        concepts = ((concept.category, self.ids.get(concept)),)
        pts = finite_points(shape.get("points"))
        geometry = None
        if pts is not None:
            if kind in ("polygon", "oriented_rectangle") and len(pts) >= 3:
                geometry = Shape("polygon", pts, concepts)
            elif kind == "rectangle" and len(pts) == 2:
                (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
                geometry = Shape("polygon", box_points(x0, y0, x1, y1), concepts) if x1 > x0 and y1 > y0 else None
            elif kind == "circle" and len(pts) == 2:
                with np.errstate(over="ignore", invalid="ignore"):
                    r = float(np.hypot(*(pts[1] - pts[0])))
                geometry = Shape("ellipse", (pts[0][0], pts[0][1], r, r, 0.0), concepts) if math.isfinite(r) and r > 0 else None
            elif kind == "mask" and len(pts) == 2 and isinstance(shape.get("mask"), str):
                left, top = (int(round(min(max(v, -_FAR), _FAR))) for v in pts.min(axis=0))
                geometry = Shape("labelme_patch", (left, top, shape["mask"]), concepts)
            elif kind not in ("polygon", "oriented_rectangle", "rectangle", "circle", "mask"):
                item.skipped[f"unknown shape type {kind}"] += 1
                return
        if geometry is None:
            item.skipped["degenerate shape"] += 1
            return
        item.shapes.append(geometry)

    @staticmethod
    def _mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
        if shape.kind != "labelme_patch":
            return shape_mask(shape, height, width, path)
        left, top, data = shape.data
        return shape_mask(Shape("bitmap", (left, top, _decode_png(data, path)), shape.concepts), height, width, path)

    def _image(self, entry: _Item) -> tuple[object, tuple[int, int]]:
        json_path = Path(entry.json)
        disk = (json_path.parent / entry.image_path) if entry.image_path else None
        outside = None
        if disk is not None and disk.is_file():
            try:
                contained(self.base, disk, where=json_path, element="imagePath")
            except SourceItemError as e:
                # Never read it; the embedded image, when there is one, is what the points refer to.
                outside, disk = e, None
        if disk is not None and disk.is_file():
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
        try:
            data = _read_json(json_path).get("imageData")  # a dict: checked when the export was read
        except ValueError as e:
            raise SourceItemError(f"not a labelme JSON file: {e}", path=json_path, reason="broken annotation") from None
        if not data and outside is not None:
            raise SourceItemError(f"{outside.message} and no imageData is embedded", path=json_path, reason=outside.reason)
        if not data:
            raise SourceItemError("image file not found and no imageData embedded", path=disk or json_path, reason="missing image")
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
                            mask_fn=self._mask)
