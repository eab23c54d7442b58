"""Pascal-Context objects and Pascal-Part parts, joined per VOC2010 image (FORMATS.md B.4, B.5).

One record per VOC id found in either annotation set; each category is present only when its
annotation exists, so Context-only or Part-only folders work too. Looked up under the given folder
(up to four levels deep): ``JPEGImages/`` (VOC2010), Context's ``trainval/*.mat`` with
``labels.txt``, Part's ``Annotations_Part/*.mat`` with ``part2ind.m``.

* object: Context ``LabelMap`` (uint16 indices into ``labels.txt``; 0 and ``unknown`` unlabeled).
  All 459 classes, or with option ``pascal_context_classes=59`` the common 59 (Appendix 2 names,
  every other class unlabeled).
* part: one layer painted from the Pascal-Part struct ``anno.objects``: objects in file order, each
  clearing its silhouette (later objects occlude earlier ones) and painting its parts. Part names
  come from ``part2ind.m``, made readable, with left/right/front/back/upper/lower/side dropped and
  numbered parts (``wheel_3``) merged; silhouette-only classes add no part pixels. Source ids are
  per (class, part name) as Broden had them, so ``wheel`` of car and of bus merge by name.
  The file's indices are honoured as the devkit's ``mat2map`` uses them: keys a class gives one
  index are one part, named after the first of them (in file order) with a readable name, and
  index 0 is background (unlabeled). See docs/decisions/pascal-part-names.md.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from concepts.builders import register
from concepts.builders._raster import inside_input
from concepts.builders.base import Builder, Detection
from concepts.errors import SourceError, SourceItemError, UsageError
from concepts.labelcount import intp_scratch, present_ids
from concepts.limits import check_pixels
from concepts.records import Record

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: labels.txt indices of the 59 common Pascal-Context classes (codes 1..59 in this order).
CONTEXT_59_INDICES = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
    144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
    354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)
CONTEXT_59_NAMES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
    "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road",
    "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
    "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
#: Largest labels.txt index a (uint16) LabelMap can hold.
MAX_CONTEXT_INDEX = 65535
ADJECTIVES = frozenset({"left", "right", "front", "back", "upper", "lower", "side"})
# Short part codes that part2ind.m leaves without a comment.
SHORT_NAMES = {
    "lfho": "left front hoof", "rfho": "right front hoof", "lbho": "left back hoof", "rbho": "right back hoof",
    "fwheel": "front wheel", "bwheel": "back wheel", "frontside": "front side", "leftside": "left side",
    "rightside": "right side", "backside": "back side", "roofside": "roof side",
    "leftmirror": "left mirror", "rightmirror": "right mirror",
}
_LEAF_DIRS = {"JPEGImages", "Annotations_Part", "Annotations", "SegmentationClass", "SegmentationObject", "ImageSets"}


@dataclass
class PartTable:
    """part2ind.m read for Broden: part ids per (class index, part code) and their names."""

    codes: dict[tuple[int, str], int] = field(default_factory=dict)
    names: dict[int, tuple[str, ...]] = field(default_factory=dict)
    silhouette: set[int] = field(default_factory=set)
    classes: dict[int, str] = field(default_factory=dict)


def readable(name: str) -> str:
    """Broden's part name: expand short codes, aeroplane -> airplane, drop the adjectives."""
    words = SHORT_NAMES.get(name, name).replace("_", " ").replace("aeroplane", "airplane").lower().split()
    return " ".join(w for w in words if w not in ADJECTIVES)


def _split_comment(line: str) -> tuple[str, str]:
    """MATLAB code and trailing comment; a ``%`` inside a quoted string (sprintf) is code."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == "'":
            quoted = not quoted
        elif ch == "%" and not quoted:
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


_HEADER = re.compile(r"^\[\s*(\w+)\s*\]")
_SILHOUETTE = re.compile(r"only has si\w*ouette", re.I)
_ASSIGN = re.compile(r"^pimap\{([0-9]{1,4})\}\(\s*'([^']+)'\s*\)\s*=\s*([^;]*);$")
_LOOP_ASSIGN = re.compile(r"^pimap\{([0-9]{1,4})\}\(\s*sprintf\(\s*'([^']*%d[^']*)'\s*,\s*(\w+)\s*\)\s*\)\s*=\s*([^;]*);$")
_FOR = re.compile(r"^for\s+(\w+)\s*=\s*([0-9]{1,4})\s*:\s*([0-9]{1,4})\s*$")
_KEYS = re.compile(r"^(key|value)Set\s*=\s*\1s\(\s*pimap\{([0-9]{1,4})\}\s*\)\s*;$")
_COPY = re.compile(r"^pimap\{([0-9]{1,4})\}\s*=\s*containers\.Map\(\s*keySet\s*,\s*valueSet\s*\)\s*;$")
_REMOVE = re.compile(r"^remove\(\s*pimap\{([0-9]{1,4})\}\s*,\s*\{([^}]*)\}\s*\)\s*;$")
_IGNORED = re.compile(r"^(function\b|end\b|pimap\s*=|pimap\{[A-Za-z_]\w*\}\s*=)")
_NUMBER = re.compile(r"^[0-9]{1,4}$")
_OFFSET = re.compile(r"^(?:([0-9]{1,4})\s*\+\s*(\w+)|(\w+)\s*\+\s*([0-9]{1,4}))$")


@dataclass
class _Entry:
    """One key of one class map: its part index, readable source name and where it was assigned."""

    index: int
    name: str
    order: tuple[int, int]


def _index_value(text: str, loop: tuple[str, int, int] | None, k: int, path: Path, row: int) -> int:
    """The part index an assignment gives: ``N``, or in a loop ``N + ii``, ``ii + N`` or ``ii``."""
    text = text.strip()
    if _NUMBER.match(text):
        return int(text)
    if loop is not None:
        if text == loop[0]:
            return k
        if (m := _OFFSET.match(text)) and (m[2] or m[3]) == loop[0]:
            return int(m[1] or m[4]) + k
    allowed = "a whole number" + (f", {loop[0]}, or N + {loop[0]}" if loop else "")
    raise SourceError(f"part index {text[:40]!r} is not {allowed}", path=path, row=row)


def parse_part2ind(path: Path) -> PartTable:
    """Read part2ind.m's MATLAB statements (maps, loops, copies, removals) into a :class:`PartTable`.

    Keys that one class gives the same index are one part, named after the first of them in file
    order that has a readable name (docs/decisions/pascal-part-names.md); index 0 is unlabeled.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise SourceError(f"cannot read part2ind.m: {e}", path=path) from None
    entries: dict[int, dict[str, _Entry]] = {}
    table = PartTable()
    header = 0
    loop: tuple[str, int, int] | None = None
    sources: dict[str, int] = {}
    for row, line in enumerate(lines, start=1):
        code, comment = _split_comment(line)
        if not code:
            if m := _HEADER.match(comment):
                # Headers name the VOC classes in order; trust the name where it is a VOC class.
                header = VOC_CLASSES.index(m[1]) + 1 if m[1] in VOC_CLASSES else header + 1
                table.classes[header] = m[1]
            elif _SILHOUETTE.search(comment) and header:
                table.silhouette.add(header)
            continue
        if m := _FOR.match(code):
            loop = (m[1], int(m[2]), int(m[3]))
        elif re.match(r"for\b", code):
            raise SourceError(f"loop {code[:60]!r} not understood: expected 'for ii = A:B' with A and B up to 9999", path=path, row=row)
        elif code.rstrip(";") == "end":
            loop = None
        elif m := _ASSIGN.match(code):
            index = _index_value(m[3], None, 0, path, row)
            entries.setdefault(int(m[1]), {})[m[2]] = _Entry(index, comment or SHORT_NAMES.get(m[2], m[2]), (row, 0))
        elif (m := _LOOP_ASSIGN.match(code)) and loop and m[3] == loop[0]:
            base = m[2].replace("_%d", "").replace("%d", "")
            name = comment if comment and "multiple" not in comment.lower() else base
            for k in range(loop[1], loop[2] + 1):
                index = _index_value(m[4], loop, k, path, row)
                entries.setdefault(int(m[1]), {})[m[2].replace("%d", str(k))] = _Entry(index, name, (row, k))
        elif m := _KEYS.match(code):
            sources[m[1]] = int(m[2])
        elif m := _COPY.match(code):
            if set(sources) != {"key", "value"} or sources["key"] != sources["value"]:
                raise SourceError("containers.Map(keySet, valueSet) without keySet and valueSet of one pimap{N} before it",
                                  path=path, row=row)
            entries[int(m[1])] = dict(entries.get(sources["key"], {}))
        elif m := _REMOVE.match(code):
            for key in re.findall(r"'([^']*)'", m[2]):
                entries.get(int(m[1]), {}).pop(key, None)
        elif "pimap" in code and not _IGNORED.match(code):
            raise SourceError(f"unsupported statement {code[:60]!r}", path=path, row=row)
    if not entries:
        raise SourceError("no part definitions (pimap{N}('name') = ...) found", path=path)
    ids: dict[tuple[int, str], int] = {}
    for cls in sorted(entries):
        names = _index_names(cls, entries[cls], path)
        for short, entry in entries[cls].items():
            name = names[entry.index]
            if not name:
                table.codes[(cls, short)] = 0  # index 0, or e.g. bus 'frontside': nothing left once adjectives go
                continue
            ident = ids.setdefault((cls, name), len(ids) + 1)
            table.codes[(cls, short)] = ident
            table.names[ident] = (name,)
    return table


def _index_names(cls: int, entries: dict[str, _Entry], path: Path) -> dict[int, str]:
    """The readable name of each part index of one class ('' = unlabeled)."""
    members: dict[int, list[tuple[tuple[int, int], str, str]]] = {}
    for short, entry in entries.items():
        members.setdefault(entry.index, []).append((entry.order, short, readable(entry.name)))
    names: dict[int, str] = {}
    for index, group in members.items():
        group.sort()
        # The devkit paints index 0 into a zero-filled part mask: background.
        names[index] = "" if index == 0 else next((name for _, _, name in group if name), "")
        merged = sorted({name for _, _, name in group if name and name != names[index]})
        if merged and index == 0:
            log.info("%s: class %d parts at index 0 are unlabeled: %s", path, cls, ", ".join(merged))
        elif merged:
            log.info("%s: class %d part index %d is %r, merging %s", path, cls, index, names[index], ", ".join(merged))
    return names


def read_context_labels(path: Path) -> dict[int, str]:
    """labels.txt: ``index: name`` per line, split at the first ``": "``."""
    out: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise SourceError(f"cannot read labels.txt: {e}", path=path) from None
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index, sep, name = line.strip().partition(": ")
        index = index.strip()
        # ASCII digits only (int() also takes '²' and Arabic-Indic digits); a LabelMap is uint16.
        if not sep or not (index.isascii() and index.isdigit()) or not name.strip():
            raise SourceError(f"expected 'index: name', got {line.strip()[:60]!r}", path=path, row=row)
        if len(index) > 5 or int(index) > MAX_CONTEXT_INDEX:
            raise SourceError(f"index {index[:40]} is above {MAX_CONTEXT_INDEX} (LabelMap values are 16-bit)", path=path, row=row)
        out[int(index)] = name.strip()
    if not out:
        raise SourceError("no labels listed", path=path)
    return out


def _scan(root: Path, depth: int = 4, budget: int = 2000) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Folders and the two helper files under ``root``: breadth first, sorted, not inside image
    folders, at most ``budget`` folders listed (detection runs on whatever path a user names)."""
    dirs: dict[str, list[Path]] = {}
    files: dict[str, list[Path]] = {}
    level = [root]
    for _ in range(depth + 1):
        deeper = []
        for folder in level:
            budget -= 1
            if budget < 0:
                return dirs, files
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir():
                    dirs.setdefault(entry.name, []).append(Path(entry.path))
                    if entry.name not in _LEAF_DIRS:
                        deeper.append(Path(entry.path))
                elif entry.name in ("labels.txt", "part2ind.m"):
                    files.setdefault(entry.name, []).append(Path(entry.path))
        level = deeper
    return dirs, files


def _has_mat(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(e.name.endswith(".mat") for e in it)


def _nearest(candidates: list[Path], anchor: Path) -> Path | None:
    """The candidate sharing the longest path prefix with ``anchor`` (then the first)."""
    if not candidates:
        return None
    return max(candidates, key=lambda p: (len(os.path.commonpath([p, anchor])), -candidates.index(p)))


def locate(root: Path) -> dict[str, Path | None]:
    """Find JPEGImages, the Context and Part annotation folders and their helper files."""
    if not root.is_dir():
        return {"jpeg": None, "context": None, "labels": None, "parts": None, "part2ind": None}
    dirs, files = _scan(root)
    jpegs = dirs.get("JPEGImages", [])
    jpeg = next((p for p in jpegs if p.parent.name == "VOC2010"), jpegs[0] if jpegs else None)
    context = next((p for p in dirs.get("trainval", []) if _has_mat(p)), None)
    parts = next(iter(dirs.get("Annotations_Part", [])), None)
    return {
        "jpeg": jpeg,
        "context": context,
        "labels": _nearest(files.get("labels.txt", []), context) if context else None,
        "parts": parts,
        "part2ind": _nearest(files.get("part2ind.m", []), parts) if parts else None,
    }


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "".join(str(v) for v in value.ravel())
    return str(value)


def _records(value: Any) -> list:
    """The elements of a MATLAB struct array (empty ones load as 0x0 arrays without fields)."""
    arr = np.asarray(value)
    return list(arr.ravel()) if arr.dtype.names and arr.size else []


@register
class PascalBuilder(Builder):
    """VOC2010 images with Pascal-Context objects and Pascal-Part parts."""

    NAME = "pascal"
    DESCRIPTION = "VOC2010 JPEGImages/ + Pascal-Context trainval/*.mat, labels.txt and/or Pascal-Part Annotations_Part/, part2ind.m"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """VOC2010 ``JPEGImages/`` plus Context (``trainval/*.mat`` + ``labels.txt``) or Part annotations."""
        found = locate(path)
        unmet = [] if found["jpeg"] else ["VOC2010/JPEGImages/"]
        context = bool(found["context"] and found["labels"])
        parts = bool(found["parts"] and found["part2ind"])
        if not (context or parts):
            unmet.append("Pascal-Context trainval/*.mat + labels.txt, or Pascal-Part Annotations_Part/ + part2ind.m")
        return Detection.missing(*unmet) if unmet else Detection.match(1.0 if context and parts else 0.9)

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        found = locate(self.root)
        if not found["jpeg"]:
            raise SourceError("no VOC2010 JPEGImages/ folder found", path=self.root)
        self.jpeg_dir: Path = found["jpeg"]
        self.context_dir = found["context"] if found["labels"] else None
        self.parts_dir = found["parts"] if found["part2ind"] else None
        if not (self.context_dir or self.parts_dir):
            raise SourceError("neither Pascal-Context (trainval/*.mat + labels.txt) nor Pascal-Part (Annotations_Part/ + part2ind.m) found", path=self.root)
        classes = self.options.get("pascal_context_classes") or 459
        if classes not in (59, 459):
            raise UsageError(f"--pascal-context-classes {classes}: expected 59 or 459")
        self.context_lut: np.ndarray | None = None
        self.context_take: np.ndarray | None = None
        self.context_names: dict[int, tuple[str, ...]] = {}
        if self.context_dir:
            self._context_table(read_context_labels(found["labels"]), classes, found["labels"])
        self.parts = parse_part2ind(found["part2ind"]) if self.parts_dir else None

    def _context_table(self, labels: dict[int, str], classes: int, path: Path) -> None:
        # lut: labels.txt index -> source id (0 unlabeled, -1 not in labels.txt).
        lut = np.full(max(labels) + 1, -1, dtype=np.int32)
        lut[0] = 0
        if classes == 459:
            for index, name in labels.items():
                lut[index] = 0 if name == "unknown" else index
                if name != "unknown":
                    self.context_names[index] = (name,)
        else:
            lut[list(labels)] = 0
            for code, (index, name) in enumerate(zip(CONTEXT_59_INDICES, CONTEXT_59_NAMES), start=1):
                if labels.get(index) != name:
                    log.warning("%s: index %d is %r, the 59-class subset expects %r", path, index, labels.get(index), name)
                if index < len(lut):
                    lut[index] = code
                self.context_names[code] = (name,)
        self.context_lut = lut
        # Source ids are labels.txt indices (at most 459): uint16 halves the memory traffic of
        # every later pass. Indices absent from labels.txt (-1) wrap to 0xFFFF, above any id.
        self.context_take = lut.astype(np.uint16) if len(lut) < 0xFFFF else lut

    def items(self) -> list[str]:
        """VOC ids with a Context or a Part annotation, sorted."""
        ids: set[str] = set()
        for folder in (self.context_dir, self.parts_dir):
            if folder:
                ids.update(n[:-4] for n in os.listdir(folder) if n.endswith(".mat"))
        return sorted(ids)

    def load(self, item: str) -> Record:
        """The Context objects and Pascal-Part parts of one VOC image."""
        image = inside_input(self.root, self.jpeg_dir / f"{item}.jpg", what="image", item=item)
        if not image.is_file():
            raise SourceItemError("image is missing", path=image, reason="missing image")
        record = Record(key=item, image=image)
        if self.context_dir and (path := self.context_dir / f"{item}.mat").is_file():
            objects = self._load_context(inside_input(self.root, path, what="Context annotation", item=item))
            ids = present_ids(objects)
            for ident in ids:
                record.names[("object", ident)] = self.context_names[ident]
            if ids:
                record.pixel["object"] = [objects]
        if self.parts_dir and (path := self.parts_dir / f"{item}.mat").is_file():
            layer, skipped = self._load_parts(inside_input(self.root, path, what="Part annotation", item=item))
            record.skipped.update(skipped)
            ids = present_ids(layer) if layer is not None else []
            if ids:
                for ident in ids:
                    record.names[("part", ident)] = self.parts.names[ident]
                record.pixel["part"] = [layer]
        return record

    def _load_context(self, path: Path) -> np.ndarray:
        _check_declared_size(path, "LabelMap")
        label_map = _loadmat(path, "LabelMap")
        if label_map.ndim != 2 or label_map.dtype.kind not in "ui":
            raise SourceItemError(f"LabelMap must be a 2-D integer array, got {label_map.shape} {label_map.dtype}", path=path, reason="bad annotation")
        lut = self.context_lut
        mapped = None
        if label_map.min(initial=0) >= 0 and int(label_map.max(initial=0)) < len(lut):
            mapped = self.context_take.take(intp_scratch(label_map))
        if mapped is None or (mapped.min(initial=0) < 0 if mapped.dtype.kind == "i" else int(mapped.max(initial=0)) == 0xFFFF):
            bad = sorted({int(v) for v in np.unique(label_map) if v < 0 or v >= len(lut) or lut[v] < 0})
            raise SourceItemError(f"LabelMap value(s) {bad[:5]} are not in labels.txt", path=path, reason="unknown label id")
        return mapped

    def _load_parts(self, path: Path) -> tuple[np.ndarray | None, Counter]:
        anno = _loadmat(path, "anno")
        if not anno.dtype.names or "objects" not in anno.dtype.names or not anno.size:
            raise SourceItemError("struct 'anno' has no 'objects' field", path=path, reason="bad annotation")
        layer = None
        skipped: Counter = Counter()
        for obj in _records(anno.ravel()[0]["objects"]):
            cls = self._class_index(obj, path)
            mask = np.asarray(obj["mask"]).astype(bool)
            if layer is None:
                # Part ids number the (class, part name) pairs of part2ind.m: a few hundred.
                layer = np.zeros(mask.shape, dtype=np.uint16)
            if mask.shape != layer.shape:
                raise SourceItemError(f"object masks differ in size ({mask.shape} vs {layer.shape})", path=path, reason="bad annotation")
            np.copyto(layer, 0, where=mask)  # a later object occludes what earlier ones painted
            for part in _records(obj["parts"]) if "parts" in obj.dtype.names else []:
                name = _text(part["part_name"])
                code = self.parts.codes.get((cls, name))
                pmask = np.asarray(part["mask"]).astype(bool)
                if code is None or pmask.shape != layer.shape:
                    if code is not None:
                        why = "part mask size differs"
                    else:
                        why = "part of a silhouette-only class" if cls in self.parts.silhouette else "unknown part name"
                    log.warning("%s: %s %r of class %d; left unlabeled", path, why, name, cls)
                    skipped[why] += 1
                    continue
                np.copyto(layer, code, where=pmask)
        return layer, skipped

    def _class_index(self, obj: np.void, path: Path) -> int:
        names = obj.dtype.names
        if "class_ind" in names and np.asarray(obj["class_ind"]).size:
            return int(np.asarray(obj["class_ind"]).ravel()[0])
        name = _text(obj["class"]) if "class" in names else ""
        if name in VOC_CLASSES:
            return VOC_CLASSES.index(name) + 1
        raise SourceItemError(f"object without class_ind or a VOC class name ({name!r})", path=path, reason="bad annotation")


def _check_declared_size(path: Path, variable: str) -> None:
    """Refuse a 2-D variable whose declared size exceeds the pixel limit, reading only the .mat headers."""
    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except Exception:  # noqa: BLE001 - _loadmat reports unreadable files with their message
        return
    shape = shapes.get(variable)
    if shape is not None and len(shape) == 2:
        try:
            check_pixels(shape[1], shape[0], what=variable, path=path, error=SourceItemError)
        except SourceItemError as e:
            raise SourceItemError(e.message, path=path, reason="image too large") from None


def _loadmat(path: Path, variable: str) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(path, variable_names=[variable])
    except NotImplementedError:
        raise SourceItemError("MATLAB v7.3 (HDF5) files are not supported", path=path, reason="unsupported .mat") from None
    except Exception as e:  # noqa: BLE001 - scipy reports corrupt files with many exception types
        raise SourceItemError(f"cannot read .mat ({type(e).__name__}: {e})", path=path, reason="unreadable annotation") from None
    if variable not in mat:
        raise SourceItemError(f"no variable {variable!r}", path=path, reason="bad annotation")
    return np.asarray(mat[variable])
