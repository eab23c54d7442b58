"""Check a concept dataset against the Broden format and report every problem and weak spot.

:func:`validate` never stops at the first problem: it reads the tables leniently, records a
:class:`Finding` for each rule a file breaks (with the file and, for tables, the row), then decodes
every image and label PNG in a thread pool (Pillow and NumPy release the GIL while decoding) and
checks pixels against the tables. Nothing outside the dataset is read: a symlink leading out of it
is an error (``symlink-outside``) and is never followed, and an invalid category name (``bad-name``)
never becomes a ``c_<name>.csv`` path. Numbers are ASCII only, coverages finite, declared sizes within
the pixel limit (``too-large``), label PNGs 8 bits per channel. From the pixels it recounts each
label's statistics (images holding it per category and in all, the pixel fraction it covers) and
flags table rows that disagree (``frequency-recount``, ``coverage-recount``). Findings about a row
of ``index.csv``, or a file it lists, name the row's image too. Errors make the dataset unusable
by NetDissect-Lite or by `concepts dissect`; warnings flag what makes dissection results unreliable (FORMATS.md A.13 and the
concept set's weak spots). A published Hugging Face folder (``tables/`` + ``data/*.parquet``) or
``hf://REPO`` is checked the same way, reading pixels from its Parquet rows.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from concepts.broden import format as fmt
from concepts.broden.reader import bad_relpath, is_inside, is_label_number, parse_float, parse_int, png_bit_depth
from concepts.errors import ConceptsError, UsageError
from concepts.limits import check_pixels as check_size
from concepts.listing import shorten
from concepts.progress import progress

ERROR = "error"
WARNING = "warning"

# NetDissect-Lite turns coverage into a float only when it looks like this (A.13.5).
_FIXED_POINT = re.compile(r"^[0-9]+\.[0-9]+$")
_PLURAL = re.compile(r"(?<=[a-z])(es|s)$")


@dataclass(frozen=True)
class Finding:
    """One problem: its severity, a stable rule code, the file (and row) and what is wrong."""

    severity: str
    code: str
    message: str
    path: str | None = None
    row: int | None = None
    image: str | None = None  # the image of the index.csv row a finding is about

    def __str__(self) -> str:
        where = self.path or ""
        if self.row is not None:
            where += f", row {self.row}"
        if self.image:
            where += f" ({self.image})"
        return f"{where}: {self.message}" if where else self.message


@dataclass
class ValidationReport:
    """Everything :func:`validate` found, plus counts of what it checked."""

    root: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        """Findings that make the dataset invalid."""
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that leave the dataset valid but weaken results."""
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        """Whether the dataset has no errors."""
        return not self.errors

    def codes(self, severity: str | None = None) -> set[str]:
        """The rule codes found (of one severity when given)."""
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the report."""
        return {
            "dataset": self.root,
            "valid": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "stats": self.stats,
            "findings": [asdict(f) for f in self.findings],
        }


@dataclass
class _Table:
    path: Path
    header: list[str]
    rows: list[dict[str, str]]


@dataclass
class _LabelRow:
    number: int
    name: str
    categories: dict[str, int]
    syns: tuple[str, ...]
    row: int = 0
    frequency: int | None = None
    coverage: float | None = None


@dataclass
class _Item:
    """One file to decode: an image or one PNG layer, with what the tables say about it."""

    kind: str  # "image" | "png"
    rel: str
    row: int
    size: tuple[int, int]  # expected (height, width)
    category: str | None = None


@dataclass
class _Seen:
    """What the pixel pass learnt about one file."""

    size: tuple[int, int] | None = None
    mode: str | None = None
    numbers: np.ndarray | None = None  # label numbers present (PNG)
    counts: np.ndarray | None = None  # their pixel counts


class _Validator:
    def __init__(self, spec: str | Path, min_images: int, min_area: float, workers: int | None) -> None:
        self.spec = str(spec)
        self.min_images = min_images
        self.min_area = min_area
        self.workers = workers
        self.findings: list[Finding] = []
        self.stats: dict[str, Any] = {}
        self.hub: Any = None
        self.lock = threading.Lock()
        self.index_path: Path | None = None
        self.row_images: dict[int, str] = {}

    # -- recording ------------------------------------------------------------------------------
    def add(self, severity: str, code: str, message: str, path: Path | str | None = None, row: int | None = None,
            image: str | None = None) -> None:
        self.findings.append(Finding(severity, code, message, str(path) if path is not None else None, row, image))

    def error(self, code: str, message: str, path: Path | str | None = None, row: int | None = None,
              image: str | None = None) -> None:
        self.add(ERROR, code, message, path, row, image)

    def warn(self, code: str, message: str, path: Path | str | None = None, row: int | None = None,
             image: str | None = None) -> None:
        self.add(WARNING, code, message, path, row, image)

    # -- where the files are --------------------------------------------------------------------
    def locate(self) -> bool:
        from concepts import hub

        if self.spec.startswith(hub.HF_PREFIX):
            folder = hub.download(self.spec)
            return self._locate_hub(folder)
        path = Path(self.spec)
        if not path.exists():
            self.error("missing-dataset", "no such dataset folder", path)
            return False
        if not path.is_dir():
            self.error("missing-dataset", "not a directory", path)
            return False
        if not (path / fmt.INDEX_FILE).is_file() and hub.is_hf_folder(path):
            return self._locate_hub(path)
        self.root = path
        self.link_root = path
        self.tables = path
        self.images = path / fmt.IMAGES_DIR
        if not self.images.is_dir():
            self.error("missing-file", "images/ folder is missing", self.images)
        return True

    def _locate_hub(self, folder: Path) -> bool:
        from concepts.hub import TABLES_DIR, _input_root

        self.root = folder
        # A Hub download's files link into the cache's blobs/, which belong to the same download.
        self.link_root = _input_root(folder, self.spec)
        self.tables = folder / TABLES_DIR
        self.images = folder / fmt.IMAGES_DIR  # only for naming items in messages
        self.hub_folder = folder
        return True

    def _open_hub(self) -> None:
        from concepts.hub import HubDataset

        try:
            self.hub = HubDataset(self.hub_folder)
        except ConceptsError as e:
            self.error("unreadable-shards", e.message, e.path, e.row)
            self.hub = False
        self._hub_samples = {s.image: s for s in self.hub.samples} if self.hub else {}

    def read_bytes(self, item: _Item) -> bytes:
        if self.hub is None:
            return (self.images / item.rel).read_bytes()
        with self.lock:
            if item.kind == "image":
                return self.hub.image_bytes(self._hub_samples[item.rel])
            return self.hub.png_bytes(item.rel)

    # -- tables ---------------------------------------------------------------------------------
    def read_table(self, name: str, columns: Iterable[str]) -> _Table | None:
        path = self.tables / name
        if path.is_symlink() and not is_inside(self.link_root, path):
            # Reported by the link scan; never read.
            return None
        if path.is_dir():
            self.error("missing-file", "is a directory, expected a CSV file", path)
            return None
        reader = None
        try:
            # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name.
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = list(reader)
        except FileNotFoundError:
            self.error("missing-file", "file is missing", path)
            return None
        except UnicodeDecodeError as e:
            self.error("not-utf8", f"not UTF-8 text ({e.reason} at byte {e.start})", path)
            return None
        except csv.Error as e:
            self.error("bad-csv", f"not a readable CSV ({e})", path, reader.line_num if reader is not None and reader.line_num else None)
            return None
        except OSError as e:
            self.error("unreadable", f"cannot read ({e.strerror or e})", path)
            return None
        if not header:
            self.error("bad-header", "file is empty (no header row)", path)
            return None
        twice = sorted({c for c in header if c and header.count(c) > 1})
        if twice:
            self.error("bad-header", f"column(s) {_clip(', '.join(twice))} appear twice in the header (only the last "
                       "would be read)", path)
            return None
        missing = [c for c in columns if c not in header]
        if missing:
            self.error("bad-header", f"header lacks column(s) {', '.join(missing)} (has {_clip(','.join(header))})", path)
            return None
        for i, row in enumerate(rows, start=2):
            if None in row:
                self.error("bad-row", f"{len(header) + len(row[None])} fields but the header has {len(header)}", path, i)
        return _Table(path, header, rows)

    def integer(self, table: _Table, row: dict[str, str], i: int, column: str, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        value = row.get(column) or ""
        number = parse_int(value)
        if number is None:
            self.error("bad-value", f"{column} is not an integer in ASCII digits: {_clip(value)}", table.path, i)
            return None
        if minimum is not None and number < minimum:
            self.error("bad-value", f"{column} must be at least {minimum}, got {number}", table.path, i)
            return None
        if maximum is not None and number > maximum:
            self.error("bad-value", f"{column} must be at most {maximum}, got {number}", table.path, i)
            return None
        return number

    def check_tables(self) -> bool:
        cat_table = self.read_table(fmt.CATEGORY_FILE, fmt.CATEGORY_COLUMNS)
        label_table = self.read_table(fmt.LABEL_FILE, fmt.LABEL_COLUMNS)
        index_table = self.read_table(fmt.INDEX_FILE, fmt.INDEX_FIXED_COLUMNS)
        if cat_table is None or label_table is None or index_table is None:
            return False
        self.categories = self._categories(cat_table)
        self.labels = self._labels(label_table)
        self._category_totals(cat_table)
        self._codes()
        self.samples = self._index(index_table)
        return True

    def _categories(self, table: _Table) -> dict[str, dict[str, int | None]]:
        out: dict[str, dict[str, int | None]] = {}
        self.bad_categories: set[str] = set()
        firsts = []
        for i, row in enumerate(table.rows, start=2):
            name = row.get("name") or ""
            if not name:
                self.error("bad-value", "category name is empty", table.path, i)
                continue
            if name in out:
                self.error("duplicate-row", f"category {name!r} is listed twice", table.path, i)
                continue
            try:
                fmt.check_category_name(name, path=table.path, row=i, error=ConceptsError)
            except ConceptsError as e:
                # Its c_<name>.csv is never opened: a name like ../x would reach outside the dataset.
                self.error("bad-name", e.message, table.path, i)
                self.bad_categories.add(name)
            values = {c: self.integer(table, row, i, c, 0) for c in ("first", "last", "count", "frequency")}
            values["row"] = i
            out[name] = values
            firsts.append(values["first"])
        if not out:
            self.error("empty-table", "lists no category", table.path)
        if all(f is not None for f in firsts) and firsts != sorted(firsts):
            self.warn("category-order", "rows are not sorted by `first` (the Broden builder's order)", table.path)
        self.category_path = table.path
        return out

    def _labels(self, table: _Table) -> dict[int, _LabelRow]:
        out: dict[int, _LabelRow] = {}
        names: dict[str, int] = {}
        for i, row in enumerate(table.rows, start=2):
            number = self.integer(table, row, i, "number", 1)
            if number is None:
                continue
            if number > fmt.MAX_RG:
                self.error("label-too-large", f"label number {number} exceeds {fmt.MAX_RG} (the most R + 256 * G "
                           "can hold)", table.path, i)
                continue
            if number > fmt.MAX_LABEL:
                self.error("label-too-large", f"label number {number} exceeds {fmt.MAX_LABEL} "
                           "(NetDissect-Lite decodes label PNGs as int16)", table.path, i)
            if number in out:
                self.error("duplicate-row", f"label number {number} is listed twice", table.path, i)
                continue
            name = row.get("name") or ""
            bad_name = _name_problem(name)
            if not name:
                self.error("bad-value", f"label {number} has an empty name", table.path, i)
            elif bad_name:
                self.error("bad-name", bad_name, table.path, i)
            elif name in names:
                self.error("duplicate-name", f"label name {name!r} is used by labels {names[name]} and {number}", table.path, i)
            else:
                names[name] = number
            cell = row.get("category") or ""
            cats: dict[str, int] = {}
            if not cell:
                self.error("bad-value", f"label {number} has an empty category cell (NetDissect-Lite fails on it)", table.path, i)
            else:
                try:
                    if not cell.isascii():
                        raise ValueError(f"{_clip(cell)} is not ASCII")
                    cats = fmt.parse_category_cell(cell)
                except ValueError as e:
                    self.error("bad-value", f"category cell of label {number}: {e}", table.path, i)
            unknown = [c for c in cats if c not in self.categories]
            if unknown:
                self.error("unknown-category", f"label {number} ({name}) names categor{'y' if len(unknown) == 1 else 'ies'} "
                           f"{', '.join(unknown)} absent from category.csv", table.path, i)
            freq = self.integer(table, row, i, "frequency", 0)
            # frequency counts images holding the label in any category: no fewer than its largest
            # category count and no more than their sum (an image holding it in two categories is one image).
            if freq is not None and cats and not max(cats.values()) <= freq <= sum(cats.values()):
                bound = f"at least {max(cats.values())}" if freq < max(cats.values()) else f"at most {sum(cats.values())}"
                self.error("frequency-mismatch", f"frequency {freq} of label {number} does not fit its category cell "
                           f"{cell} (images holding it in any category: {bound})", table.path, i)
            coverage = row.get("coverage") or ""
            value = parse_float(coverage)
            if value is None or value < 0:
                # NaN, infinity or a negative coverage would rank concepts arbitrarily in dissection.
                self.error("bad-value", f"coverage of label {number} is not a finite non-negative number: "
                           f"{_clip(coverage)}", table.path, i)
            elif not _FIXED_POINT.match(coverage):
                self.warn("coverage-format", f"coverage {coverage!r} of label {number} is not fixed-point "
                          "(NetDissect-Lite keeps it as text)", table.path, i)
            syns = tuple(s for s in (row.get("syns") or "").split(";") if s)
            out[number] = _LabelRow(number, name, cats, syns, i, freq, value if value is not None and value >= 0 else None)
        if not out:
            self.warn("empty-table", "lists no label", table.path)
        self.label_path = table.path
        return out

    def _category_totals(self, table: _Table) -> None:
        members: dict[str, list[int]] = defaultdict(list)
        freq: Counter[str] = Counter()
        for number, label in self.labels.items():
            for cat, f in label.categories.items():
                members[cat].append(number)
                freq[cat] += f
        for name, values in self.categories.items():
            numbers = members.get(name, [])
            if not numbers:
                self.warn("empty-category", f"category {name!r} has no label in label.csv", table.path, values["row"])
                continue
            expected = {"first": min(numbers), "last": max(numbers), "count": len(numbers), "frequency": freq[name]}
            wrong = [f"{k} is {values[k]}, label.csv gives {v}" for k, v in expected.items()
                     if values[k] is not None and values[k] != v]
            if wrong:
                self.error("category-mismatch", f"category {name!r}: {'; '.join(wrong)}", table.path, values["row"])
        self.members = members

    def _codes(self) -> None:
        self.code_numbers: dict[str, set[int]] = {}
        self.code_coverage: dict[str, dict[int, float]] = {}
        self.code_rows: dict[str, dict[int, int]] = {}
        self.code_paths: dict[str, Path] = {}
        for cat in self.categories:
            if cat in self.bad_categories:
                continue
            table = self.read_table(fmt.code_file(cat), fmt.CODE_COLUMNS)
            if table is None:
                continue
            if not table.rows:
                self.error("empty-table", "has no rows (NetDissect-Lite needs at least one)", table.path)
            codes: dict[int, int] = {}
            numbers: set[int] = set()
            order: list[tuple[int, int, float]] = []
            coverage: dict[int, float] = {}
            rows: dict[int, int] = {}
            for i, row in enumerate(table.rows, start=2):
                code = self.integer(table, row, i, "code", 1)
                number = self.integer(table, row, i, "number", 1, fmt.MAX_RG)
                freq = self.integer(table, row, i, "frequency", 0)
                cov_text = row.get("coverage") or ""
                cov = None
                if _FIXED_POINT.match(cov_text) and parse_float(cov_text) is not None:
                    cov = float(cov_text)
                else:
                    self.error("bad-value", f"coverage must be a fixed-point number like 0.5 "
                               f"(NetDissect-Lite compares it), got {cov_text!r}", table.path, i)
                if code is None or number is None:
                    continue
                if code in codes:
                    self.error("duplicate-row", f"code {code} is listed twice", table.path, i)
                codes[code] = number
                if number in numbers:
                    self.error("duplicate-row", f"label {number} is listed twice", table.path, i)
                numbers.add(number)
                if cov is not None:
                    coverage[number] = cov
                rows.setdefault(number, i)
                label = self.labels.get(number)
                if label is None:
                    self.error("unknown-label", f"label {number} is not in label.csv", table.path, i)
                    continue
                if cat not in label.categories:
                    self.error("wrong-category", f"label {number} ({label.name}) is not in category {cat!r} according to "
                               "label.csv", table.path, i)
                elif freq is not None and freq != label.categories[cat]:
                    self.error("frequency-mismatch", f"frequency {freq} of label {number} differs from label.csv's "
                               f"{cat}({label.categories[cat]})", table.path, i)
                if row.get("name") != label.name:
                    self.error("name-mismatch", f"name {row.get('name')!r} of label {number} differs from label.csv's "
                               f"{label.name!r}", table.path, i)
                if freq is not None and cov is not None:
                    order.append((code, freq, cov))
            if codes and sorted(codes) != list(range(1, len(codes) + 1)):
                self.error("sparse-codes", f"codes are not dense 1..{len(codes)}", table.path)
            missing = sorted(set(self.members.get(cat, ())) - numbers)
            if missing:
                self.error("missing-code", f"label(s) {shorten(missing)} of category {cat!r} in label.csv have no code",
                           table.path)
            ranked = [c for c, _, _ in sorted(order, key=lambda t: (-t[1], -t[2], t[0]))]
            if order and ranked != sorted(c for c, _, _ in order):
                self.warn("code-order", "codes are not ordered by descending frequency, then coverage", table.path)
            self.code_numbers[cat] = numbers
            self.code_coverage[cat] = coverage
            self.code_rows[cat] = rows
            self.code_paths[cat] = table.path

    def _index(self, table: _Table) -> list[tuple[int, str, dict[str, list[str]]]]:
        header = table.header
        cats = [c for c in self.categories if c not in self.bad_categories]
        missing = [c for c in cats if c not in header]
        for c in missing:
            self.error("missing-column", f"no column for category {c!r} of category.csv", table.path)
        extra = [c for c in header if c not in fmt.INDEX_FIXED_COLUMNS and c not in self.categories and c]
        if extra:
            self.warn("extra-column", f"column(s) {', '.join(extra)} are not categories of category.csv (ignored)", table.path)
        expected = list(fmt.INDEX_FIXED_COLUMNS) + [c for c in cats if c in header]
        present = [c for c in header if c in expected]
        if present != expected:
            self.warn("column-order", f"columns are not `{','.join(expected)}` in that order", table.path)
        self.index_path = table.path
        self.row_images = {i: _image_tag(row.get("image") or "") for i, row in enumerate(table.rows, start=2)
                           if row.get("image")}
        out = []
        images: dict[str, int] = {}
        pngs: dict[str, int] = {}
        sizes: Counter[tuple[int, int]] = Counter()
        self.items: list[_Item] = []
        self.image_labels: dict[int, dict[str, list[int]]] = {}
        self.no_png_rows = 0
        for i, row in enumerate(table.rows, start=2):
            image = row.get("image") or ""
            problem = bad_relpath(image)
            if problem:
                self.error("bad-path", f"image {_clip(image)}: {problem}", table.path, i)
                image = ""
            elif image in images:
                self.error("duplicate-row", f"image {image} is also on row {images[image]}", table.path, i)
                image = ""
            else:
                images[image] = i
                if not image.isascii():
                    self.warn("non-ascii-path", f"image {image!r} has non-ASCII characters (the split hash "
                              "and old tools assume ASCII)", table.path, i)
            split = row.get("split") or ""
            if not split:
                self.error("bad-value", "split is empty", table.path, i)
            dims = [self.integer(table, row, i, c, 1) for c in ("ih", "iw", "sh", "sw")]
            ih, iw, sh, sw = dims
            # A declared size beyond the pixel limit is what a bomb looks like: its files are not decoded.
            if not self._size_ok("image (ih x iw)", ih, iw, table, i):
                ih = iw = None
            if not self._size_ok("segmentation (sh x sw)", sh, sw, table, i):
                sh = sw = None
            if image and ih and iw:
                self.items.append(_Item("image", image, i, (ih, iw)))
                sizes[(ih, iw)] += 1
            cells: dict[str, list[str]] = {}
            levels: dict[str, list[int]] = {}
            has_png = False
            for cat in cats:
                pieces = [p for p in (row.get(cat) or "").split(";") if p]
                if not pieces:
                    continue
                cells[cat] = pieces
                numbers = [p for p in pieces if is_label_number(p)]
                paths = [p for p in pieces if not is_label_number(p)]
                if numbers and paths:
                    self.warn("mixed-cell", f"{cat} cell mixes label numbers and PNG paths", table.path, i)
                for n in map(int, numbers):
                    if n > fmt.MAX_RG:
                        self.error("label-too-large", f"{cat} cell lists label {_clip(str(n))}, above {fmt.MAX_RG} "
                                   "(the most R + 256 * G can hold)", table.path, i)
                    elif n == 0:
                        self.warn("zero-label", f"{cat} cell lists label 0 (unlabeled; writers omit it)", table.path, i)
                    elif n not in self.labels:
                        self.error("unknown-label", f"{cat} cell lists label {n}, which is not in label.csv", table.path, i)
                    elif cat not in self.labels[n].categories:
                        self.error("wrong-category", f"{cat} cell lists label {n} ({self.labels[n].name}), which "
                                   f"label.csv puts in {_cats(self.labels[n])}", table.path, i)
                    else:
                        levels.setdefault(cat, []).append(n)
                for p in paths:
                    problem = bad_relpath(p, ".png")
                    if problem:
                        self.error("bad-path", f"{cat} cell: {_clip(p)}: {problem}", table.path, i)
                        continue
                    if p in pngs:
                        self.error("duplicate-row", f"{cat} cell: {p} is also listed on row {pngs[p]}", table.path, i)
                        continue
                    pngs[p] = i
                    has_png = True
                    if sh and sw:
                        self.items.append(_Item("png", p, i, (sh, sw), cat))
            if cells and not has_png:
                self.no_png_rows += 1
                self.warn("no-png-row", "row has image-level labels but no PNG (NetDissect-Lite's category tally "
                          "misreads such rows; a color layer avoids it)", table.path, i)
            self.image_labels[i] = levels
            out.append((i, image, cells))
        if not table.rows:
            self.error("empty-table", "lists no image", table.path)
        if len(sizes) > 1:
            common = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sizes.most_common(4))
            self.warn("mixed-sizes", f"images come in {len(sizes)} sizes ({common}); NetDissect-Lite and concepts dissect "
                      "need one size (rebuild with --size)", table.path)
        splits = Counter(row.get("split") or "" for row in table.rows)
        self.stats["images"] = len(table.rows)
        self.stats["splits"] = dict(sorted(splits.items()))
        return out

    def _size_ok(self, what: str, h: int | None, w: int | None, table: _Table, i: int) -> bool:
        if not (h and w):
            return True
        try:
            check_size(w, h, what=what, error=ConceptsError)
        except ConceptsError as e:
            self.error("too-large", e.message, table.path, i)
            return False
        return True

    # -- pixels ---------------------------------------------------------------------------------
    def check_pixels(self) -> None:
        if self.hub is None and hasattr(self, "hub_folder"):
            self._open_hub()
            if self.hub is False:
                return
        workers = self.workers or min(8, (_cpu_count() or 1) * 2)
        results: dict[int, _Seen | None] = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            done = pool.map(self._decode, self.items, chunksize=16)
            for k, (problems, seen) in enumerate(progress(done, total=len(self.items), desc="validating", unit="file")):
                for code, message in problems:
                    item = self.items[k]
                    self.error(code, message, self.images / item.rel, item.row, self.row_images.get(item.row))
                results[k] = seen
        self.stats["files_checked"] = len(self.items)
        self._pixel_labels(results)

    def _decode(self, item: _Item) -> tuple[list[tuple[str, str]], _Seen | None]:
        if self.hub is None and not is_inside(self.root, self.images / item.rel):
            # The link scan reports the link itself; what it points to is never read.
            return [], None
        try:
            data = self.read_bytes(item)
        except FileNotFoundError:
            what = "image" if item.kind == "image" else f"{item.category} label PNG"
            return [("missing-file", f"{what} is missing (index.csv row {item.row})")], None
        except ConceptsError as e:
            return [("missing-file", e.message)], None
        except OSError as e:
            return [("unreadable", f"cannot read: {e.strerror or e}")], None
        problems: list[tuple[str, str]] = []
        if item.kind == "png":
            depth = png_bit_depth(data[:26])
            if depth is not None and depth != 8:
                # Pillow keeps only the high byte of 16-bit samples: small label numbers would read as 0.
                return [("bad-mode", f"label PNG has {depth} bits per channel; needs 8-bit RGB (label = R + 256*G)")], None
        try:
            with Image.open(io.BytesIO(data)) as im:
                try:
                    check_size(im.width, im.height, what=item.kind if item.kind == "image" else "label PNG",
                               error=ConceptsError)
                except ConceptsError as e:
                    return [("too-large", e.message)], None
                im.load()
                seen = _Seen(size=(im.height, im.width), mode=im.mode)
                h, w = item.size
                if item.kind == "image":
                    if (im.height, im.width) != (h, w):
                        problems.append(("size-mismatch", f"image is {im.width}x{im.height}, index.csv row {item.row} "
                                         f"says iw={w}, ih={h}"))
                    if im.mode not in ("RGB", "L"):
                        problems.append(("bad-mode", f"image mode is {im.mode}; needs 8-bit RGB (or grayscale)"))
                    return problems, seen
                if im.format != "PNG":
                    problems.append(("bad-mode", f"label file is {im.format}, not PNG"))
                if im.mode != "RGB":
                    kind = "grayscale" if im.mode in ("L", "I", "I;16", "1", "LA") else f"mode {im.mode}"
                    problems.append(("bad-mode", f"label PNG is {kind}; needs 8-bit RGB (label = R + 256*G)"))
                    return problems, seen
                if (im.height, im.width) != (h, w):
                    problems.append(("size-mismatch", f"segmentation is {im.width}x{im.height}, index.csv row {item.row} "
                                     f"says sw={w}, sh={h}"))
                rgb = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            return [("undecodable", f"does not decode: {_clip(str(e))}")], None
        except Image.DecompressionBombError as e:
            return [("undecodable", f"refused: {e}")], None
        if rgb[..., 2].any():
            problems.append(("blue-channel", f"blue channel is non-zero in {int(np.count_nonzero(rgb[..., 2]))} pixel(s); "
                             "label PNGs keep blue 0"))
        values, counts = np.unique(fmt.decode_rg(rgb), return_counts=True)
        seen.numbers, seen.counts = values, counts
        return problems, seen

    def _pixel_labels(self, results: dict[int, _Seen | None]) -> None:
        images_of: dict[int, set[int]] = defaultdict(set)
        area: Counter[int] = Counter()
        labelled_rows: set[int] = set()
        # Per (label, category): the rows holding it and the pixel fraction it covers, for the recount.
        rows_in: dict[tuple[int, str], set[int]] = defaultdict(set)
        cover: Counter[tuple[int, str]] = Counter()
        for row, levels in self.image_labels.items():
            for cat, numbers in levels.items():
                for n in dict.fromkeys(numbers):  # an image-level label covers its image once
                    images_of[n].add(row)
                    area[n] += 1.0
                    labelled_rows.add(row)
                    rows_in[(n, cat)].add(row)
                    cover[(n, cat)] += 1.0
        wrong: dict[tuple[str, int], list[_Item]] = defaultdict(list)
        unread = 0
        for k, seen in results.items():
            item = self.items[k]
            if item.kind != "png":
                continue
            if seen is None or seen.numbers is None:
                unread += 1
                continue
            total = float(seen.counts.sum())
            for n, c in zip(seen.numbers.tolist(), seen.counts.tolist()):
                if n == 0:
                    continue
                label = self.labels.get(n)
                if label is None:
                    wrong[("unknown-label", n)].append(item)
                    continue
                if item.category not in label.categories:
                    wrong[("wrong-category", n)].append(item)
                    continue
                images_of[n].add(item.row)
                area[n] += c / total
                labelled_rows.add(item.row)
                rows_in[(n, item.category)].add(item.row)
                cover[(n, item.category)] += c / total
        for (code, n), where in sorted(wrong.items()):
            for item in where:
                if code == "unknown-label":
                    message = f"holds label number {n}, which is not in label.csv"
                else:
                    label = self.labels[n]
                    message = f"holds label {n} ({label.name}) in the {item.category} column, but label.csv puts it in {_cats(label)}"
                self.error(code, message + f" (index.csv row {item.row})", self.images / item.rel, item.row,
                           self.row_images.get(item.row))
        self.stats["labels"] = len(self.labels)
        self.stats["categories"] = len(self.categories)
        if self.errors_found():
            # Unreadable or misplaced files would make every count they touch disagree: say so once.
            self.stats["statistics_recounted"] = False
            unreadable = f" ({unread} label PNG(s) unreadable)" if unread else ""
            self.warn("recount-skipped", f"label statistics were not recounted: the errors reported{unreadable} leave "
                      "the data incomplete", self.label_path)
        else:
            self.stats["statistics_recounted"] = True
            self._recount(images_of, rows_in, cover)
        self._weak_spots(images_of, area, labelled_rows)

    def errors_found(self) -> bool:
        return any(f.severity == ERROR for f in self.findings)

    # -- statistics -----------------------------------------------------------------------------
    def _recount(self, images_of: dict[int, set[int]], rows_in: dict[tuple[int, str], set[int]],
                 cover: Counter[tuple[int, str]]) -> None:
        """Compare each label's table statistics with the ones its images give (Broden README: images per label)."""
        by_label: dict[int, list[str]] = defaultdict(list)
        for n, cat in rows_in:
            by_label[n].append(cat)
        for number, label in sorted(self.labels.items()):
            where = f"label {number} ({label.name})"
            cats = list(label.categories) + [c for c in sorted(by_label.get(number, ())) if c not in label.categories]
            wrong = []
            for cat in cats:
                told, found = label.categories.get(cat, 0), len(rows_in.get((number, cat), ()))
                if told != found:
                    wrong.append(f"{cat}({told}) but {found} image(s) hold it in {cat}")
            found = len(images_of.get(number, ()))
            if label.frequency is not None and label.frequency != found:
                wrong.append(f"frequency {label.frequency} but {found} image(s) hold it")
            if wrong:
                self.warn("frequency-recount", f"{where}: {'; '.join(wrong)}", self.label_path, label.row)
            recounted = sum(cover.get((number, cat), 0.0) for cat in cats)
            if label.coverage is not None and not _close(label.coverage, recounted):
                self.warn("coverage-recount", f"{where}: coverage {label.coverage:.6f} but its pixels in the images "
                          f"add up to {recounted:.6f}", self.label_path, label.row)
        for cat, coverage in self.code_coverage.items():
            for number, told in coverage.items():
                if number not in self.labels:
                    continue
                recounted = cover.get((number, cat), 0.0)
                if not _close(told, recounted):
                    self.warn("coverage-recount", f"label {number} ({self.labels[number].name}): {cat} coverage {told:.6f} "
                              f"but its {cat} pixels in the images add up to {recounted:.6f}",
                              self.code_paths[cat], self.code_rows[cat].get(number))

    # -- weak spots -----------------------------------------------------------------------------
    def _weak_spots(self, images_of: dict[int, set[int]], area: Counter[int], labelled_rows: set[int]) -> None:
        unlabeled = [row for row, _, _ in self.samples if row not in labelled_rows]
        if unlabeled:
            self.warn("unlabeled-image", f"{len(unlabeled)} image(s) carry no label at all, e.g. row {unlabeled[0]}"
                      + (f" ({self.row_images[unlabeled[0]]})" if unlabeled[0] in self.row_images else ""),
                      self.index_path)
        used_cats = {c for _, _, cells in self.samples for c in cells}
        for cat in self.categories:
            if cat in self.members and cat not in used_cats:
                self.warn("empty-category", f"category {cat!r} has labels but no image carries data for it", self.index_path)
        rare = []
        tiny = []
        unused = []
        for number, label in sorted(self.labels.items()):
            n = len(images_of.get(number, ()))
            if n == 0:
                unused.append(f"{label.name} ({number})")
            elif n < self.min_images:
                rare.append(f"{label.name} ({n})")
            if n and area[number] < self.min_area:
                tiny.append(f"{label.name} ({area[number]:.4f})")
        if unused:
            self.warn("unused-label", f"{len(unused)} label(s) appear in no image: {shorten(unused)}", self.label_path)
        if rare:
            self.warn("rare-concept", f"{len(rare)} concept(s) are in fewer than {self.min_images} images (their IoU is "
                      f"unreliable): {shorten(rare)}", self.label_path)
        if tiny:
            self.warn("tiny-concept", f"{len(tiny)} concept(s) cover less than {self.min_area} of an image in total: "
                      f"{shorten(tiny)}", self.label_path)
        multi = [f"{label.name} ({', '.join(label.categories)})" for label in self.labels.values() if len(label.categories) > 1]
        if multi:
            self.warn("multi-category", f"{len(multi)} label(s) belong to several categories (dissection attributes each "
                      f"to its primary one): {shorten(multi)}", self.label_path)
        groups: dict[str, list[str]] = defaultdict(list)
        for label in self.labels.values():
            for name in {label.name, *label.syns}:
                groups[_near_key(name)].append(label.name)
        dups = sorted({" / ".join(sorted(set(v))) for v in groups.values() if len(set(v)) > 1})
        if dups:
            self.warn("near-duplicate", f"{len(dups)} group(s) of labels have near-identical names or synonyms: "
                      f"{shorten(dups)}", self.label_path)
        self.stats["rare_concepts"] = len(rare)
        self.stats["unlabeled_images"] = len(unlabeled)

    def check_links(self) -> None:
        """Report every symlink under the dataset that resolves outside it (such files are never read)."""
        # scandir's d_type answers is_symlink without a system call per file (Broden has 300k files).
        stack = [self.root]
        while stack:
            try:
                entries = sorted(os.scandir(stack.pop()), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.is_symlink():
                    if not is_inside(self.link_root, Path(entry.path)):
                        self.error("symlink-outside", "is a symlink leading outside the dataset (not followed)", entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))

    def run(self) -> ValidationReport:
        if self.locate():
            self.check_links()
        if hasattr(self, "root") and self.check_tables():
            self.check_pixels()
        if self.index_path is not None:
            # Findings recorded before index.csv's rows were known (its CSV-level checks) name their image too.
            index = str(self.index_path)
            self.findings = [f if f.image or f.row is None or f.path != index else replace(f, image=self.row_images.get(f.row))
                             for f in self.findings]
        return ValidationReport(str(getattr(self, "root", self.spec)), self.findings, self.stats)


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def _close(told: float, recounted: float) -> bool:
    """Whether a table's coverage (printed with six decimals) is the recounted one."""
    return abs(told - recounted) <= 2e-6 + 1e-9 * abs(recounted)


def _image_tag(text: str, limit: int = 80) -> str:
    """An index.csv image cell as it appears in a finding: plain when printable, else its repr; cut short."""
    short = text[:limit] + ("..." if len(text) > limit else "")
    return short if short.isprintable() else repr(short)


def _clip(text: str, limit: int = 80) -> str:
    """``repr`` of a cell, cut short: a finding stays one readable line whatever the cell holds."""
    return repr(text[:limit]) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def _name_problem(name: str) -> str | None:
    try:
        fmt.check_label_name(name, path=None, error=ConceptsError)
    except ConceptsError as e:
        return e.message
    return None


def _cats(label: _LabelRow) -> str:
    return ", ".join(label.categories) or "no category"


def _near_key(name: str) -> str:
    """A name folded so that case, spacing, separators and a plural ending do not matter."""
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    key = re.sub(r" (s|c)$", "", key)  # Broden's -s (scene) and -c (colour) suffixes
    return _PLURAL.sub("", key)


def validate(
    spec: str | Path,
    *,
    min_images: int = 10,
    min_area: float = 0.01,
    workers: int | None = None,
) -> ValidationReport:
    """Check a dataset (Broden folder, published folder or ``hf://REPO``) and report every finding."""
    if min_images < 0:
        raise UsageError(f"--min-images {min_images}: expected 0 or more images")
    # `not >= 0` also refuses NaN, which every later comparison would silently pass.
    if not min_area >= 0 or min_area == float("inf"):
        raise UsageError(f"--min-area {min_area}: expected a finite number, 0 or more")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: expected 1 or more threads")
    return _Validator(spec, min_images, min_area, workers).run()


def format_report(report: ValidationReport, *, max_per_rule: int = 20, echo: Callable[[str], None] = print) -> None:
    """Print a report as text: findings grouped by rule (at most ``max_per_rule`` each), then a verdict."""
    by_code: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in report.findings:
        by_code[(f.severity, f.code)].append(f)
    for (severity, code), findings in sorted(by_code.items(), key=lambda kv: (kv[0][0] != ERROR, kv[0][1])):
        for f in findings[:max_per_rule]:
            echo(f"{severity}: {f} [{code}]")
        if len(findings) > max_per_rule:
            echo(f"{severity}: ... and {len(findings) - max_per_rule} more [{code}] (--json lists all)")
    s = report.stats
    verdict = "valid" if report.ok else "INVALID"
    echo(f"{report.root}: {verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s); "
         f"{s.get('images', 0)} images, {s.get('labels', 0)} labels, {s.get('categories', 0)} categories, "
         f"{s.get('files_checked', 0)} files decoded")
