"""Helpers shared by the builders: decoding annotation images into label-id arrays, and finding
where a release sits inside the folder a user named (or an archive was extracted to).

Every failure to read one item's file becomes a :class:`~concepts.errors.SourceItemError`, so the
unifier skips that item (or stops under ``--strict``) with one line naming the file.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from concepts.broden.reader import is_inside
from concepts.errors import SourceItemError
from concepts.labelcount import present_ids
from concepts.limits import check_pixels
from concepts.records import Record

log = logging.getLogger(__name__)


def read_image_array(path: Path, *, what: str = "annotation") -> np.ndarray:
    """Decode an image file into an array as stored (no mode conversion)."""
    try:
        with Image.open(path) as im:
            im.load()
            # Palette images stay indices (the ids); nothing is converted here.
            return np.asarray(im)
    except FileNotFoundError:
        raise SourceItemError(f"{what} is missing", path=path, reason=f"missing {what}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SourceItemError(f"cannot decode {what}: {e}", path=path, reason=f"unreadable {what}") from None


def read_rgb_channels(path: Path, *, what: str = "annotation") -> np.ndarray:
    """Decode an RGB(A) label image into an ``H x W x 3`` uint8 array; other modes skip the item."""
    arr = read_image_array(path, what=what)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        shape = "x".join(str(s) for s in arr.shape)
        raise SourceItemError(
            f"{what} must be an 8-bit RGB image (colour-encoded ids), got {shape} {arr.dtype}",
            path=path,
            reason=f"bad {what}",
        )
    return arr[..., :3]


def read_id_channel(path: Path, *, what: str = "annotation") -> np.ndarray:
    """Decode a single-channel (8/16-bit or palette) label image into an ``H x W`` int32 id array."""
    arr = read_image_array(path, what=what)
    if arr.ndim != 2 or arr.dtype.kind not in "uib" or (arr.dtype.kind == "i" and arr.min(initial=0) < 0):
        shape = "x".join(str(s) for s in arr.shape)
        raise SourceItemError(
            f"{what} must be a single-channel image of class ids, got {shape} {arr.dtype}",
            path=path,
            reason=f"bad {what}",
        )
    return arr.astype(np.int32)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image header without decoding it, or None when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def candidate_dirs(path: Path, preferred: str) -> list[Path]:
    """``path``, its conventional child ``preferred``, then its other sub-folders, in that order.

    Releases are often named by their parent folder, or extracted from an archive into one.
    """
    out = [path, path / preferred]
    if path.is_dir():
        out += sorted(p for p in path.iterdir() if p.is_dir() and p.name not in (preferred, "images"))
    return out


def inside_input(root: Path, path: Path, *, what: str = "file", item: str | None = None, where: Path | None = None) -> Path:
    """``path`` if it (symlinks resolved) lies inside the input ``root``; else a SourceItemError to skip it.

    The error names ``where`` (the annotation file that named the path; default the input root)
    and is counted as ``path outside the input`` (skipped, or fatal under ``--strict``).
    """
    text = str(path)
    if "\0" in text:
        raise SourceItemError(f"{what}: path {text[:200]!r} holds a NUL byte", path=where or root, item=item, reason="bad path")
    if not is_inside(Path(root), Path(path)):
        raise SourceItemError(f"{what}: {text[:200]!r} lies outside the input {str(root)[:200]!r}; not read",
                              path=where or root, item=item, reason="path outside the input")
    return path


# --- Vector shapes (CVAT, COCO, LabelMe, labelme) -------------------------------------------------
#
# Fill rule, used for every polygon of every format: a pixel belongs to a shape when its CENTRE
# (x + 0.5, y + 0.5) lies inside the outline by the EVEN-ODD rule. Self-intersecting outlines
# therefore leave their doubly-covered lobes empty, as PIL's and pycocotools' rasterisers do.
# Coordinates are in pixels with the origin at the top-left corner of the top-left pixel, so a box
# from (2, 1) to (6, 4) covers columns 2..5 and rows 1..3 (4 x 3 = its area).


def check_canvas(width: object, height: object, path: Path, *, what: str = "image") -> tuple[int, int]:
    """Validate a declared ``width x height`` before allocating anything; return ``(height, width)``."""
    # The one pixel limit (concepts.limits); non-numbers, inf and 1e400 are refused there too.
    try:
        return check_pixels(width, height, what=what, path=path, error=SourceItemError)
    except SourceItemError as e:
        reason = "image too large" if "exceeds the limit" in e.message else "bad image size"
        raise SourceItemError(e.message, path=path, reason=reason) from None


def header_size(path: Path, *, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an image file from its header only, refusing pixel bombs."""
    if not path.is_file():
        raise SourceItemError(f"{what} is missing", path=path, reason=f"missing {what}")
    try:
        with Image.open(path) as im:
            size = im.size
    except Image.DecompressionBombError as e:
        raise SourceItemError(f"refused {what}: {e}", path=path, reason="image too large") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceItemError(f"cannot read the {what} header: {e}", path=path, reason=f"unreadable {what}") from None
    return check_canvas(size[0], size[1], path, what=what)


def finite_points(points: object) -> np.ndarray | None:
    """``N x 2`` float array of a vertex list, or None when it is malformed or not finite."""
    try:
        arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    return arr if arr.size and np.isfinite(arr).all() else None


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a closed polygon (``N x 2`` x, y) with the even-odd rule at pixel centres, clipped."""
    out = np.zeros((height, width), dtype=bool)
    if len(points) < 3:
        return out
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.concatenate([x0[1:], x0[:1]]), np.concatenate([y0[1:], y0[:1]])
    xs, ys = sorted(set(x0.tolist())), sorted(set(y0.tolist()))
    corners = len(points) == 4 and len(xs) == len(ys) == 2 and len(set(zip(x0.tolist(), y0.tolist()))) == 4
    if corners and ((x0 == x1) | (y0 == y1)).all():
        # An axis-aligned box (the common CVAT shape): the same pixels as the general rule below
        # (centres in [left, right) x [top, bottom)), without its per-shape array work.
        c0, c1 = (min(max(math.ceil(x - 0.5), 0), width) for x in xs)
        r0, r1 = (min(max(math.ceil(y - 0.5), 0), height) for y in ys)
        out[r0:r1, c0:c1] = True
        return out
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # Row r (centre r + 0.5) crosses an edge when lo <= r + 0.5 < hi (half-open: vertices count once).
    first = np.ceil(lo - 0.5).clip(0, height).astype(np.int64)
    last = np.ceil(hi - 0.5).clip(0, height).astype(np.int64)
    counts = np.maximum(last - first, 0)
    if not counts.any():
        return out
    edge = np.repeat(np.arange(len(points)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + first[edge]
    yc = rows + 0.5
    with np.errstate(over="ignore", invalid="ignore"):
        t = (yc - y0[edge]) / (y1[edge] - y0[edge])
        xc = x0[edge] + t * (x1[edge] - x0[edge])
        bad = ~np.isfinite(xc)
        if bad.any():
            # Huge finite coordinates (1e308) overflow x1 - x0; the weighted mean cannot give inf - inf.
            xc[bad] = np.nan_to_num((1 - t[bad]) * x0[edge][bad] + t[bad] * x1[edge][bad], nan=0.0)
    # Toggle from the first column whose centre lies right of the crossing; parity of the running sum.
    cols = np.ceil(xc - 0.5).clip(0, width).astype(np.int64)
    # Only the polygon's bounding box is accumulated, so a small shape on a large canvas costs little.
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max())
    if c0 >= c1:
        return out
    box = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.uint8)
    np.add.at(box, (rows - r0, cols - c0), 1)
    out[r0:r1, c0:c1] = (np.cumsum(box, axis=1, dtype=np.int64)[:, : c1 - c0] & 1).astype(bool)
    return out


#: Vertices farther than this many canvas sizes outside the image are not given to pycocotools,
#: whose rasteriser allocates per unit of outline length and overflows C ints on huge coordinates.
COCO_SANE_MARGIN = 4


def pycocotools_polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise one polygon as pycocotools (``frPyObjects`` + ``decode``) does: COCO's and CVAT's exporters' rule.

    Polygons reaching beyond :data:`COCO_SANE_MARGIN` canvas sizes fall back to :func:`polygon_mask`.
    """
    if len(points) < 3:
        return np.zeros((height, width), dtype=bool)
    reach = COCO_SANE_MARGIN * max(height, width) + 16
    if float(np.abs(points).max()) > reach:
        return polygon_mask(points, height, width)
    from pycocotools import mask as cocomask

    # Three or more vertices: pycocotools reads a list of > 4 numbers as a polygon, never a box.
    rles = cocomask.frPyObjects([np.asarray(points, dtype=np.float64).ravel().tolist()], height, width)
    return cocomask.decode(rles)[:, :, 0].astype(bool)


def rotate_points(points: np.ndarray, cx: float, cy: float, degrees: float) -> np.ndarray:
    """Rotate points about (cx, cy) clockwise on screen (y down), as CVAT's ``rotation`` (Precisions 8)."""
    a = np.deg2rad(degrees)
    dx, dy = points[:, 0] - cx, points[:, 1] - cy
    return np.stack([cx + dx * np.cos(a) - dy * np.sin(a), cy + dx * np.sin(a) + dy * np.cos(a)], axis=1)


def box_points(xtl: float, ytl: float, xbr: float, ybr: float, rotation: float = 0.0) -> np.ndarray:
    """The four corners of a box, rotated about its centre by ``rotation`` degrees."""
    pts = np.array([[xtl, ytl], [xbr, ytl], [xbr, ybr], [xtl, ybr]], dtype=np.float64)
    if rotation:
        pts = rotate_points(pts, (xtl + xbr) / 2, (ytl + ybr) / 2, rotation)
    return pts


def ellipse_mask(cx: float, cy: float, rx: float, ry: float, rotation: float, height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside an ellipse rotated by ``rotation`` degrees (CVAT convention)."""
    out = np.zeros((height, width), dtype=bool)
    if not (rx > 0 and ry > 0):
        return out
    reach = max(rx, ry)
    r0, r1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, height)
    c0, c1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, width)
    if r0 >= r1 or c0 >= c1:
        return out
    yy, xx = np.mgrid[r0:r1, c0:c1]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    a = np.deg2rad(rotation)
    # Undo the clockwise rotation to express each centre in the ellipse's own axes.
    u = dx * np.cos(a) + dy * np.sin(a)
    v = -dx * np.sin(a) + dy * np.cos(a)
    out[r0:r1, c0:c1] = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return out


def cvat_rle_mask(rle: str, left: object, top: object, box_w: object, box_h: object, height: int, width: int, path: Path) -> np.ndarray:
    """Decode a CVAT XML mask (runs over the box, row-major, background first), clipped to the image."""
    try:
        x0, y0, bw, bh = (int(float(str(v))) for v in (left, top, box_w, box_h))
        runs = [int(r) for r in str(rle).replace(" ", "").split(",") if r != ""]
    except (ValueError, OverflowError):
        raise SourceItemError(f"mask rle {str(rle)[:40]!r} or its box is not a list of integers", path=path, reason="bad mask") from None
    check_canvas(bw, bh, path, what="mask")
    if any(r < 0 for r in runs):
        raise SourceItemError(f"mask rle has a negative run ({min(runs)})", path=path, reason="bad mask")
    if sum(runs) != bw * bh:
        raise SourceItemError(
            f"mask runs add up to {sum(runs)}, not width x height = {bw} x {bh} = {bw * bh}",
            path=path,
            reason="bad mask",
        )
    runs = np.array(runs, dtype=np.int64)
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs).reshape(bh, bw)
    out = np.zeros((height, width), dtype=bool)
    r0, c0 = max(y0, 0), max(x0, 0)
    r1, c1 = min(y0 + bh, height), min(x0 + bw, width)
    if r0 < r1 and c0 < c1:
        out[r0:r1, c0:c1] = flat[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
    return out


class LayerStack:
    """Label layers of one category, painted shape by shape (later shapes on top).

    A painted shape takes the first (dominant) layer; whatever label it covers moves one layer
    down, pushing the labels below it further down in turn, so no label is lost. A label covered
    by itself (two instances of one label) is not duplicated: the older copy is removed.
    """

    def __init__(self, height: int, width: int, dtype: type = np.uint16) -> None:
        self.shape = (height, width)
        self.dtype = dtype
        self.layers: list[np.ndarray] = []

    def paint(self, mask: np.ndarray, value: int) -> None:
        """Paint ``value`` over ``mask``, pushing covered labels down one layer."""
        if not mask.any():
            return
        if not self.layers:
            self.layers.append(np.zeros(self.shape, dtype=self.dtype))
        carry = np.where(mask, value, 0).astype(self.dtype)
        for layer in self.layers:
            where = carry != 0
            old = layer[where]
            layer[where] = carry[where]
            # The covered label continues down, unless it is the label just painted (a duplicate).
            carry[where] = np.where(old == value, 0, old)
            if not carry.any():
                return
        self.layers.append(carry)

    def result(self) -> list[np.ndarray]:
        """The layers, dominant first (empty when nothing was painted)."""
        return [layer for layer in self.layers if layer.any()]


# --- Shapes to records (shared by the CVAT, COCO, LabelMe and labelme builders) ---------------------


@dataclass
class Shape:
    """One area shape in painting order, with the concepts it paints (plain, picklable data).

    kind: ``polygon`` (data: N x 2 points), ``ellipse`` (cx, cy, rx, ry, rotation), ``cvat_rle``
    (rle, left, top, width, height), ``bitmap`` (left, top, bool array), ``erase`` (data: another
    Shape, whose pixels become unlabeled in every category for the shapes painted before it; no
    concepts), or a builder-specific kind its own ``mask_fn`` understands. ``concepts``: ``(category, id)`` pairs, the shape's label
    first, then concepts from its attributes, all painted over the same pixels.
    """

    kind: str
    data: Any
    concepts: tuple[tuple[str, int], ...]


def shape_mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
    """Rasterise one shape onto an ``height x width`` canvas."""
    if shape.kind == "polygon":
        return polygon_mask(shape.data, height, width)
    if shape.kind == "ellipse":
        return ellipse_mask(*shape.data, height, width)
    if shape.kind == "cvat_rle":
        return cvat_rle_mask(*shape.data, height, width, path)
    if shape.kind == "bitmap":
        left, top, patch = shape.data
        out = np.zeros((height, width), dtype=bool)
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + patch.shape[0], height), min(left + patch.shape[1], width)
        if r0 < r1 and c0 < c1:
            out[r0:r1, c0:c1] = patch[r0 - top : r1 - top, c0 - left : c1 - left]
        return out
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def paint_layers(
    shapes: Sequence[Shape],
    height: int,
    width: int,
    path: Path,
    mask_fn: Callable[[Shape, int, int, Path], np.ndarray] = shape_mask,
    skip: Counter | None = None,
) -> dict[str, list[np.ndarray]]:
    """The layers :class:`LayerStack` gives for shapes painted in order, in time linear in the shapes.

    At each pixel the layers list the labels covering it from the most recently painted down, each
    label once. Painting in reverse order computes exactly that without pushing every layer down
    for every shape (which is quadratic when thousands of shapes overlap): a shape fills the next
    free layer of its pixels, except where a later shape of the same label already did.
    """
    remaining = Counter(c for shape in shapes for c in shape.concepts)
    covered: dict[tuple[str, int], np.ndarray] = {}  # flat pixels a later shape of that label holds
    depth: dict[str, np.ndarray] = {}  # per category: how many layers each pixel has filled
    stacks: dict[str, np.ndarray] = {}  # per category: layers x (height * width)
    erased: np.ndarray | None = None  # flat pixels an ``erase`` shape painted later has cleared
    for shape in reversed(shapes):
        eraser = shape.kind == "erase"
        idx = np.flatnonzero(mask_fn(shape.data if eraser else shape, height, width, path))
        if not idx.size:
            if skip is not None and not eraser:
                skip["no pixels inside the image"] += 1
            continue
        if erased is not None:
            idx = idx[~erased[idx]]
        if eraser:
            # Walking backwards, every shape still to come was painted before the eraser.
            if erased is None:
                erased = np.zeros(height * width, dtype=bool)
            erased[idx] = True
            continue
        for key in reversed(shape.concepts):
            category, ident = key
            remaining[key] -= 1
            seen = covered.get(key)
            own = idx if seen is None else idx[~np.isin(idx, seen, assume_unique=True)]
            if own.size:
                filled = depth.setdefault(category, np.zeros(height * width, dtype=np.int32))
                levels = filled[own]
                need = int(levels.max()) + 1
                stack = stacks.get(category)
                if stack is None or stack.shape[0] < need:
                    grown = np.zeros((max(need, 2 * (0 if stack is None else stack.shape[0])), height * width), dtype=np.uint16)
                    if stack is not None:
                        grown[: stack.shape[0]] = stack
                    stack = stacks[category] = grown
                stack[levels, own] = ident
                filled[own] += 1
            if remaining[key]:
                covered[key] = idx if seen is None else np.union1d(seen, idx)
            else:
                covered.pop(key, None)
    return {c: [stacks[c][k].reshape(height, width) for k in range(int(depth[c].max()))] for c in stacks}


def paint_record(
    key: str,
    image: Any,
    size: tuple[int, int],
    shapes: Sequence[Shape],
    image_level: Mapping[str, Sequence[int]],
    names: Mapping[tuple[str, int], tuple[str, ...]],
    skipped: Mapping[str, int],
    path: Path,
    mask_fn: Callable[[Shape, int, int, Path], np.ndarray] = shape_mask,
) -> Record:
    """Paint shapes in order into per-category :class:`LayerStack` s and assemble the record."""
    height, width = size
    skip = Counter(skipped)
    pixel = paint_layers(shapes, height, width, path, mask_fn, skip)
    levels = {c: list(dict.fromkeys(ids)) for c, ids in image_level.items() if ids}
    used = {(c, int(i)) for c, layers in pixel.items() for layer in layers for i in present_ids(layer)}
    used |= {(c, int(i)) for c, ids in levels.items() for i in ids}
    return Record(
        key=key,
        image=image,
        pixel=pixel,
        image_level=levels,
        names={k: names[k] for k in sorted(used)},
        skipped=dict(skip),
    )
