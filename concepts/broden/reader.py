"""Read a concept dataset in the Broden layout (see :mod:`concepts.broden.format`)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.broden import format as fmt
from concepts.errors import DatasetFormatError


@dataclass(frozen=True)
class Category:
    """A row of ``category.csv``."""

    name: str
    first: int
    last: int
    count: int
    frequency: int


@dataclass(frozen=True)
class Label:
    """A row of ``label.csv`` plus its primary category (largest ``c_*.csv`` coverage)."""

    number: int
    name: str
    categories: dict[str, int]
    frequency: int
    coverage: float
    syns: tuple[str, ...] = ()
    primary: str | None = None


@dataclass(frozen=True)
class Sample:
    """A row of ``index.csv``; ``cells`` holds each category's non-empty ``;``-separated pieces."""

    index: int
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    cells: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def pixel_paths(self, category: str) -> list[str]:
        """PNG paths (relative to ``images/``) of a category, dominant layer first."""
        return [p for p in self.cells.get(category, ()) if not p.isdigit()]

    def image_labels(self, category: str) -> list[int]:
        """Image-level label numbers of a category, dominant first."""
        return [int(p) for p in self.cells.get(category, ()) if p.isdigit()]

    def has(self, category: str) -> bool:
        """Whether the sample has any data for a category."""
        return bool(self.cells.get(category))


def read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV whose header must start with ``columns``; raise DatasetFormatError otherwise."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise DatasetFormatError(f"missing column(s) {', '.join(missing)}", path=path)
            return list(reader)
    except FileNotFoundError:
        raise DatasetFormatError("file is missing", path=path) from None
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"not UTF-8 text ({e.reason})", path=path) from None


def _int(value: str | None, path: Path, row: int, column: str) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise DatasetFormatError(f"column {column!r} is not an integer: {value!r}", path=path, row=row) from None


def _float(value: str | None, path: Path, row: int, column: str) -> float:
    try:
        return float(value or "")
    except ValueError:
        raise DatasetFormatError(f"column {column!r} is not a number: {value!r}", path=path, row=row) from None


class ConceptDataset:
    """A concept dataset in the Broden layout, opened read-only.

    ``categories`` follow ``category.csv`` order; ``labels`` maps number to :class:`Label`;
    ``samples`` are the rows of ``index.csv`` (row numbers in errors are 1-based data rows + 1
    for the header, as a spreadsheet shows them).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFormatError("not a directory", path=self.root)
        self.categories: list[Category] = self._read_categories()
        self.codes: dict[str, dict[int, int]] = {}
        coverage: dict[str, dict[int, float]] = {}
        for cat in self.categories:
            codes, cov = self._read_codes(cat.name)
            self.codes[cat.name] = codes
            coverage[cat.name] = cov
        self.labels: dict[int, Label] = self._read_labels(coverage)
        self.samples: list[Sample] = self._read_index()

    # -- tables ---------------------------------------------------------------------------------
    def _read_categories(self) -> list[Category]:
        path = self.root / fmt.CATEGORY_FILE
        out = []
        for i, row in enumerate(read_csv(path, fmt.CATEGORY_COLUMNS), start=2):
            out.append(
                Category(
                    name=row["name"],
                    first=_int(row["first"], path, i, "first"),
                    last=_int(row["last"], path, i, "last"),
                    count=_int(row["count"], path, i, "count"),
                    frequency=_int(row["frequency"], path, i, "frequency"),
                )
            )
        return out

    def _read_codes(self, category: str) -> tuple[dict[int, int], dict[int, float]]:
        path = self.root / fmt.code_file(category)
        codes: dict[int, int] = {}
        cov: dict[int, float] = {}
        for i, row in enumerate(read_csv(path, fmt.CODE_COLUMNS), start=2):
            number = _int(row["number"], path, i, "number")
            codes[number] = _int(row["code"], path, i, "code")
            cov[number] = _float(row["coverage"], path, i, "coverage")
        return codes, cov

    def _read_labels(self, coverage: dict[str, dict[int, float]]) -> dict[int, Label]:
        path = self.root / fmt.LABEL_FILE
        out: dict[int, Label] = {}
        for i, row in enumerate(read_csv(path, fmt.LABEL_COLUMNS), start=2):
            number = _int(row["number"], path, i, "number")
            try:
                cats = fmt.parse_category_cell(row["category"] or "")
            except ValueError as e:
                raise DatasetFormatError(str(e), path=path, row=i) from None
            primary = None
            best = -1.0
            # Ties go to the later category, as NetDissect-Lite decides.
            for cat in self.categories:
                c = coverage.get(cat.name, {}).get(number)
                if c is not None and c >= best:
                    primary, best = cat.name, c
            syns = tuple(s for s in (row.get("syns") or "").split(";") if s)
            out[number] = Label(
                number=number,
                name=row["name"],
                categories=cats,
                frequency=_int(row["frequency"], path, i, "frequency"),
                coverage=_float(row["coverage"], path, i, "coverage"),
                syns=syns,
                primary=primary,
            )
        return out

    def _read_index(self) -> list[Sample]:
        path = self.root / fmt.INDEX_FILE
        rows = read_csv(path, fmt.INDEX_FIXED_COLUMNS)
        names = [c.name for c in self.categories]
        if rows:
            missing = [n for n in names if n not in rows[0]]
            if missing:
                raise DatasetFormatError(f"no column for categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} of category.csv", path=path)
        out = []
        for i, row in enumerate(rows, start=2):
            cells = {}
            for name in names:
                pieces = tuple(p for p in (row.get(name) or "").split(";") if p)
                if pieces:
                    cells[name] = pieces
            out.append(
                Sample(
                    index=i - 2,
                    image=row["image"],
                    split=row["split"],
                    ih=_int(row["ih"], path, i, "ih"),
                    iw=_int(row["iw"], path, i, "iw"),
                    sh=_int(row["sh"], path, i, "sh"),
                    sw=_int(row["sw"], path, i, "sw"),
                    cells=cells,
                )
            )
        return out

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return f"ConceptDataset({str(self.root)!r}, {len(self)} images, {len(self.labels)} labels)"

    @property
    def category_names(self) -> list[str]:
        """Category names in ``category.csv`` order."""
        return [c.name for c in self.categories]

    @property
    def num_labels(self) -> int:
        """Size of a table indexed by label number (``max(number) + 1``, as NetDissect-Lite counts)."""
        return max(self.labels, default=0) + 1

    def label_names(self) -> list[str]:
        """Label names indexed by number (index 0 and gaps are ``''``)."""
        out = [""] * self.num_labels
        for number, label in self.labels.items():
            out[number] = label.name
        return out

    def splits(self) -> list[str]:
        """Split names in first-seen order."""
        return list(dict.fromkeys(s.split for s in self.samples))

    def select(self, split: str | None = None, limit: int | None = None) -> list[Sample]:
        """Samples of one split (all when ``None``), at most ``limit`` of them."""
        rows = [s for s in self.samples if split is None or s.split == split]
        return rows[:limit] if limit is not None else rows

    def primary_categories(self, categories: Sequence[str] | None = None) -> np.ndarray:
        """Per label number, the index into ``categories`` of its primary category, -1 if none.

        A label's primary category is the selected category whose ``c_*.csv`` gives it the
        largest coverage (ties go to the later category, as in NetDissect-Lite).
        """
        cats = list(categories) if categories is not None else self.category_names
        out = np.full(self.num_labels, -1, dtype=np.int64)
        best = np.full(self.num_labels, -np.inf)
        for ci, cat in enumerate(cats):
            table = self.root / fmt.code_file(cat)
            for row in read_csv(table, fmt.CODE_COLUMNS):
                number = int(row["number"])
                cov = float(row["coverage"])
                if number < self.num_labels and cov >= best[number]:
                    best[number] = cov
                    out[number] = ci
        return out

    def image_path(self, sample: Sample) -> Path:
        """Absolute path of a sample's image."""
        return self.root / fmt.IMAGES_DIR / sample.image

    def load_image(self, sample: Sample) -> np.ndarray:
        """Decode a sample's image as an ``ih x iw x 3`` uint8 RGB array."""
        with Image.open(self.image_path(sample)) as im:
            return np.asarray(im.convert("RGB"))

    def load_png(self, relpath: str) -> np.ndarray:
        """Decode one RG-encoded label PNG (path relative to ``images/``) to int32 numbers."""
        path = self.root / fmt.IMAGES_DIR / relpath
        try:
            with Image.open(path) as im:
                if im.mode != "RGB":
                    raise DatasetFormatError(f"label PNG must be 8-bit RGB, got mode {im.mode}", path=path)
                return fmt.decode_rg_image(im)
        except FileNotFoundError:
            raise DatasetFormatError("label PNG is missing", path=path) from None

    def load_labels(self, sample: Sample, category: str) -> np.ndarray | list[int]:
        """Label data of one category: ``layers x sh x sw`` int32 array, or image-level numbers.

        Numbers mixed with PNGs in one cell become constant layers after the PNG layers, as
        NetDissect-Lite reads them. A sample without data gives an empty list.
        """
        paths = sample.pixel_paths(category)
        numbers = sample.image_labels(category)
        if not paths:
            return numbers
        layers = [self.load_png(p) for p in paths]
        for layer in layers:
            if layer.shape != (sample.sh, sample.sw):
                raise DatasetFormatError(
                    f"segmentation is {layer.shape[1]}x{layer.shape[0]}, index.csv says {sample.sw}x{sample.sh}",
                    path=self.root / fmt.IMAGES_DIR / paths[0],
                )
        layers += [np.full((sample.sh, sample.sw), n, dtype=np.int32) for n in numbers]
        return np.stack(layers)

    def fingerprint(self) -> str:
        """A hash of the dataset's tables, for keying caches of results computed from it."""
        h = hashlib.sha256()
        for name in [fmt.INDEX_FILE, fmt.CATEGORY_FILE, fmt.LABEL_FILE] + [fmt.code_file(c) for c in self.category_names]:
            h.update(name.encode())
            h.update((self.root / name).read_bytes())
        return h.hexdigest()[:16]


def open_dataset(root: str | Path) -> ConceptDataset:
    """Open a concept dataset folder in the Broden layout."""
    return ConceptDataset(root)
