"""Read a concept dataset in the Broden layout (see :mod:`concepts.broden.format`)."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from concepts.broden import format as fmt
from concepts.errors import ConceptsError, DatasetFormatError
from concepts.limits import check_pixels


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
        return [p for p in self.cells.get(category, ()) if not is_label_number(p)]

    def image_labels(self, category: str) -> list[int]:
        """Image-level label numbers of a category, dominant first."""
        return [int(p) for p in self.cells.get(category, ()) if is_label_number(p)]

    def has(self, category: str) -> bool:
        """Whether the sample has any data for a category."""
        return bool(self.cells.get(category))


#: A whole number as the tables write it: ASCII digits only (``int()`` also takes ``²``, ``٣``, ``1_0``).
_ASCII_INT = re.compile(r"[0-9]+")
#: A decimal number in ASCII (``0.5``, ``1e-3``); ``nan``, ``inf`` and non-ASCII digits are refused.
_ASCII_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: More digits than any count or size of a real table (keeps ``int()`` away from huge strings).
_MAX_DIGITS = 30


def is_label_number(piece: str) -> bool:
    """Whether a piece of an ``index.csv`` category cell is a label number (ASCII digits) rather than a path."""
    return bool(_ASCII_INT.fullmatch(piece))


def parse_int(text: str | None) -> int | None:
    """A table's whole number (ASCII digits, optional ``-``, surrounding spaces ignored), or None."""
    text = (text or "").strip()
    body = text[1:] if text.startswith("-") else text
    if len(body) > _MAX_DIGITS or not _ASCII_INT.fullmatch(body):
        return None
    return int(text)


def parse_float(text: str | None) -> float | None:
    """A table's finite decimal number in ASCII, or None (``nan``, ``inf``, ``1e400`` and ``²`` are None)."""
    text = (text or "").strip()
    if len(text) > 64 or not _ASCII_FLOAT.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def bad_relpath(path: str, suffix: str | None = None) -> str | None:
    """Why ``path`` (from a table) cannot name a file under ``images/``, or None when it can."""
    if not path:
        return "is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains a control character (NUL, line break, ...)"
    if "\\" in path:
        return "uses backslashes; paths use forward slashes"
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        return "must be a relative path inside images/"
    if suffix and pure.suffix.lower() != suffix:
        return f"is neither a label number nor a {suffix} path"
    return None


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies in ``root`` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False


def png_bit_depth(head: bytes) -> int | None:
    """The bit depth per channel a PNG's IHDR declares (None if ``head`` is not a PNG's first 26 bytes).

    Pillow opens a 16-bit-per-channel RGB PNG as mode ``RGB`` keeping only the high bytes, so
    small label numbers would silently read as 0: the header is the only reliable witness.
    """
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def read_csv(path: Path, columns: Sequence[str], root: Path | None = None,
             error: type[ConceptsError] = DatasetFormatError) -> list[dict[str, str]]:
    """Read a CSV whose header must hold ``columns``; raise a one-line ``error`` (DatasetFormatError) otherwise.

    A UTF-8 byte-order mark is skipped; with ``root``, a table that is (or passes through) a
    symlink leading out of ``root`` is refused rather than followed.
    """
    if root is not None and (path.is_symlink() or path.exists()) and not is_inside(root, path):
        raise error("is a symlink leading outside the dataset (not followed)", path=path)
    if path.is_dir():
        raise error("is a directory, expected a CSV file", path=path)
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if not header:
                raise error("file is empty (no header row)", path=path)
            twice = sorted({c for c in header if c and header.count(c) > 1})
            if twice:
                # DictReader would silently keep only the last of two same-named columns.
                raise error(f"column(s) {_shorten(repr(', '.join(twice)))} appear twice in the header", path=path)
            missing = [c for c in columns if c not in header]
            if missing:
                raise error(f"missing column(s) {', '.join(missing)} (has {_shorten(repr(','.join(header)))})", path=path)
            return list(reader)
    except FileNotFoundError:
        raise error("file is missing", path=path) from None
    except UnicodeDecodeError as e:
        raise error(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    except csv.Error as e:
        row = reader.line_num if reader is not None and reader.line_num else None
        raise error(f"not a readable CSV ({e})", path=path, row=row) from None
    except OSError as e:
        raise error(f"cannot read ({e.strerror or e})", path=path) from None


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _int(value: str | None, path: Path, row: int, column: str, minimum: int = 0, maximum: int | None = None) -> int:
    number = parse_int(value)
    if number is None:
        raise DatasetFormatError(f"column {column!r} is not a whole number in ASCII digits: {_shorten(repr(value))}",
                                 path=path, row=row)
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise DatasetFormatError(f"column {column!r} must be {bound}, got {number}", path=path, row=row)
    return number


def _float(value: str | None, path: Path, row: int, column: str) -> float:
    number = parse_float(value)
    if number is None or number < 0:
        raise DatasetFormatError(f"column {column!r} is not a finite non-negative number: {_shorten(repr(value))}",
                                 path=path, row=row)
    return number


class ConceptDataset:
    """A concept dataset in the Broden layout, opened read-only.

    ``categories`` follow ``category.csv`` order; ``labels`` maps number to :class:`Label`;
    ``samples`` are the rows of ``index.csv`` (row numbers in errors are 1-based data rows + 1
    for the header, as a spreadsheet shows them).

    Every table is checked as it is read (names, ASCII numbers, label numbers within the RG
    encoding, declared sizes within the pixel limit, paths that stay under ``images/``), so code
    using a dataset never meets a value that could crash it or reach outside the dataset; files
    are resolved lazily and symlinks leading out of the dataset are refused, not followed.
    """

    def __init__(self, root: str | Path, *, input_root: str | Path | None = None) -> None:
        self.root = Path(root)
        #: The folder no file may resolve outside of (``root`` unless a wrapper, such as a Hub
        #: download whose files link into the cache's blobs, names a wider one).
        self.input_root = Path(input_root) if input_root is not None else self.root
        if not self.root.is_dir():
            raise DatasetFormatError("not a directory", path=self.root)
        self.categories: list[Category] = self._read_categories()
        self.codes: dict[str, dict[int, int]] = {}
        self._coverage: dict[str, dict[int, float]] = {}
        for cat in self.categories:
            codes, cov = self._read_codes(cat.name)
            self.codes[cat.name] = codes
            self._coverage[cat.name] = cov
        self.labels: dict[int, Label] = self._read_labels(self._coverage)
        self.samples: list[Sample] = self._read_index()

    # -- tables ---------------------------------------------------------------------------------
    def _table(self, name: str, columns: Sequence[str]) -> tuple[Path, list[dict[str, str]]]:
        path = self.root / name
        return path, read_csv(path, columns, root=self.input_root)

    def _read_categories(self) -> list[Category]:
        path, rows = self._table(fmt.CATEGORY_FILE, fmt.CATEGORY_COLUMNS)
        out = []
        seen: set[str] = set()
        for i, row in enumerate(rows, start=2):
            name = fmt.check_category_name(row["name"], path=path, row=i, error=DatasetFormatError)
            if name in seen:
                raise DatasetFormatError(f"category {name!r} is listed twice", path=path, row=i)
            seen.add(name)
            out.append(
                Category(
                    name=name,
                    first=_int(row["first"], path, i, "first"),
                    last=_int(row["last"], path, i, "last"),
                    count=_int(row["count"], path, i, "count"),
                    frequency=_int(row["frequency"], path, i, "frequency"),
                )
            )
        if not out:
            raise DatasetFormatError("lists no category (a dataset needs at least one)", path=path)
        return out

    def _read_codes(self, category: str) -> tuple[dict[int, int], dict[int, float]]:
        path, rows = self._table(fmt.code_file(category), fmt.CODE_COLUMNS)
        codes: dict[int, int] = {}
        cov: dict[int, float] = {}
        for i, row in enumerate(rows, start=2):
            number = _int(row["number"], path, i, "number", 1, fmt.MAX_RG)
            codes[number] = _int(row["code"], path, i, "code", 1)
            cov[number] = _float(row["coverage"], path, i, "coverage")
        return codes, cov

    def _read_labels(self, coverage: dict[str, dict[int, float]]) -> dict[int, Label]:
        path, rows = self._table(fmt.LABEL_FILE, fmt.LABEL_COLUMNS)
        out: dict[int, Label] = {}
        for i, row in enumerate(rows, start=2):
            number = _int(row["number"], path, i, "number", 1, fmt.MAX_RG)
            if number in out:
                raise DatasetFormatError(f"label number {number} is listed twice", path=path, row=i)
            name = fmt.check_label_name(row["name"], path=path, row=i, error=DatasetFormatError)
            cell = row["category"] or ""
            try:
                if not cell.isascii():
                    raise ValueError(f"bad category cell {_shorten(cell)!r}: expected name(count) in ASCII")
                cats = fmt.parse_category_cell(cell)
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
                name=name,
                categories=cats,
                frequency=_int(row["frequency"], path, i, "frequency"),
                coverage=_float(row["coverage"], path, i, "coverage"),
                syns=syns,
                primary=primary,
            )
        return out

    def _read_index(self) -> list[Sample]:
        path, rows = self._table(fmt.INDEX_FILE, fmt.INDEX_FIXED_COLUMNS)
        names = [c.name for c in self.categories]
        if rows:
            missing = [n for n in names if n not in rows[0]]
            if missing:
                raise DatasetFormatError(f"no column for categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} of category.csv", path=path)
        out = []
        for i, row in enumerate(rows, start=2):
            image = row["image"] or ""
            problem = bad_relpath(image)
            if problem:
                raise DatasetFormatError(f"image {_shorten(repr(image))} {problem}", path=path, row=i)
            cells = {}
            for name in names:
                pieces = tuple(p for p in (row.get(name) or "").split(";") if p)
                for piece in pieces:
                    self._check_piece(piece, name, path, i)
                if pieces:
                    cells[name] = pieces
            dims = {c: _int(row[c], path, i, c, 1) for c in ("ih", "iw", "sh", "sw")}
            where = f"row {i}"
            check_pixels(dims["iw"], dims["ih"], what="image (ih x iw)", path=path, item=where, error=DatasetFormatError)
            check_pixels(dims["sw"], dims["sh"], what="segmentation (sh x sw)", path=path, item=where, error=DatasetFormatError)
            out.append(Sample(index=i - 2, image=image, split=row["split"] or "", cells=cells, **dims))
        return out

    @staticmethod
    def _check_piece(piece: str, category: str, path: Path, row: int) -> None:
        if is_label_number(piece):
            if len(piece) > _MAX_DIGITS or int(piece) > fmt.MAX_RG:
                raise DatasetFormatError(f"{category} cell: label number {_shorten(piece)} exceeds {fmt.MAX_RG} "
                                         "(the most R + 256 * G can hold)", path=path, row=row)
            return
        problem = bad_relpath(piece, ".png")
        if problem:
            raise DatasetFormatError(f"{category} cell: {_shorten(repr(piece))} {problem}", path=path, row=row)

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
        unknown = [c for c in cats if c not in self._coverage]
        if unknown:
            raise DatasetFormatError(f"no category {', '.join(map(repr, unknown))} in category.csv",
                                     path=self.root / fmt.CATEGORY_FILE)
        out = np.full(self.num_labels, -1, dtype=np.int64)
        best = np.full(self.num_labels, -np.inf)
        for ci, cat in enumerate(cats):
            for number, cov in self._coverage[cat].items():
                if number < self.num_labels and cov >= best[number]:
                    best[number] = cov
                    out[number] = ci
        return out

    def file_path(self, relpath: str) -> Path:
        """The file a path of ``index.csv`` names under ``images/``; refused if it leads outside the dataset.

        Lexically bad paths (absolute, ``..``, NUL) and symlinks resolving outside the dataset
        folder raise DatasetFormatError: publishing or dissecting a dataset never reads them.
        """
        problem = bad_relpath(relpath)
        path = self.root / fmt.IMAGES_DIR / relpath if not problem else self.root / fmt.IMAGES_DIR
        if problem:
            raise DatasetFormatError(f"path {_shorten(repr(relpath))} of index.csv {problem}", path=path)
        try:
            # Resolved once: dissect asks for every file of every sample.
            real_root = self.__dict__.setdefault("_real_root", self.input_root.resolve())
            inside = path.resolve().is_relative_to(real_root)
        except (OSError, RuntimeError, ValueError):  # a symlink loop
            inside = False
        if not inside:
            raise DatasetFormatError("is a symlink leading outside the dataset (not followed)", path=path)
        return path

    def image_path(self, sample: Sample) -> Path:
        """Absolute path of a sample's image (checked to stay inside the dataset)."""
        return self.file_path(sample.image)

    def load_image(self, sample: Sample) -> np.ndarray:
        """Decode a sample's image as an ``ih x iw x 3`` uint8 RGB array."""
        path = self.image_path(sample)
        try:
            with Image.open(path) as im:
                check_pixels(im.width, im.height, what="image", path=path, error=DatasetFormatError)
                return np.asarray(im.convert("RGB"))
        except DatasetFormatError:
            raise
        except FileNotFoundError:
            raise DatasetFormatError("image is missing", path=path) from None
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            raise DatasetFormatError(f"image does not decode ({_shorten(str(e))})", path=path) from None

    def load_png(self, relpath: str) -> np.ndarray:
        """Decode one RG-encoded label PNG (path relative to ``images/``) to int32 numbers."""
        path = self.file_path(relpath)
        try:
            with path.open("rb") as f:
                return decode_label_png(f, path=path)
        except FileNotFoundError:
            raise DatasetFormatError("label PNG is missing", path=path) from None
        except IsADirectoryError:
            raise DatasetFormatError("is a directory, expected a label PNG", path=path) from None
        except OSError as e:
            raise DatasetFormatError(f"cannot read label PNG ({e.strerror or e})", path=path) from None

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


def decode_label_png(fp: BinaryIO, *, path: str | Path | None = None, item: str | None = None) -> np.ndarray:
    """Decode an RG-encoded label PNG from a binary file to int32 numbers, refusing what would misread.

    Only an 8-bit-per-channel RGB PNG is accepted (a 16-bit one would decode to the high bytes,
    all zeros for small numbers); its declared size goes through the pixel limit before decoding.
    """
    head = fp.read(26)
    fp.seek(0)
    depth = png_bit_depth(head)
    if depth is None:
        raise DatasetFormatError("label file is not a PNG", path=path, item=item)
    if depth != 8:
        raise DatasetFormatError(f"label PNG has {depth} bits per channel; needs 8-bit RGB (label = R + 256*G)",
                                 path=path, item=item)
    try:
        with Image.open(fp, formats=["PNG"]) as im:
            check_pixels(im.width, im.height, what="label PNG", path=path, item=item, error=DatasetFormatError)
            if im.mode != "RGB":
                raise DatasetFormatError(f"label PNG must be 8-bit RGB, got mode {im.mode}", path=path, item=item)
            return fmt.decode_rg_image(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, DatasetFormatError):
            raise
        raise DatasetFormatError(f"label PNG does not decode ({_shorten(str(e))})", path=path, item=item) from None
    except OSError as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise DatasetFormatError(f"label PNG does not decode ({_shorten(str(e))})", path=path, item=item) from None


def open_dataset(root: str | Path) -> ConceptDataset:
    """Open a concept dataset folder in the Broden layout."""
    return ConceptDataset(root)
