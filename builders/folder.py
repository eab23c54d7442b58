"""A plain folder of images with label masks: the simplest way to bring your own segmentations.

Layout::

    ROOT/
      images/<any/relative/path>.jpg        (jpg, jpeg, png, bmp, tif, tiff, webp)
      masks/<category>/<same relative path>.png
                                            single-channel (8- or 16-bit) or palette PNG whose
                                            pixel value is the class id; 0 = unlabeled
      labels.csv                            category,id,names   (names: `;`-separated, canonical first)
      tags.csv                              optional: image,category,name   (image-level labels;
                                            image = the path under images/)

Each image becomes one record; an image without masks or tags still gets colour.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.broden.format import MAX_RG, check_category_name, check_label_name
from concepts.builders import register
from concepts.builders._raster import inside_input
from concepts.builders.base import Builder, Detection
from concepts.errors import SourceError, SourceItemError
from concepts.records import Record

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@register
class FolderBuilder(Builder):
    """Images with per-category class-id masks and a label table."""

    NAME = "folder"
    DESCRIPTION = "images/ + masks/<category>/*.png class-id masks + labels.csv (category,id,names)"

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.names: dict[tuple[str, int], tuple[str, ...]] = {}
        self.categories: list[str] = []
        self.tags: dict[str, list[tuple[str, int]]] = {}
        self._read_labels()
        self._read_tags()

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder with ``images/``, ``labels.csv`` and ``masks/`` or ``tags.csv``."""
        unmet = []
        if not (path / "images").is_dir():
            unmet.append("images/")
        if not (path / "labels.csv").is_file():
            unmet.append("labels.csv")
        if not (path / "masks").is_dir() and not (path / "tags.csv").is_file():
            unmet.append("masks/ or tags.csv")
        return Detection.missing(*unmet) if unmet else Detection.match(0.6)

    def declared_categories(self) -> dict[str, tuple[Path | None, str | None, type[Exception]]]:
        """The categories labels.csv names, with their rows."""
        return dict(self._declared)

    def _rows(self, path: Path, columns: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
        """``(line, row)`` of a UTF-8 CSV table with the given columns; every failure is one SourceError."""
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                missing = columns - set(reader.fieldnames or [])
                if missing:
                    raise SourceError(f"missing column(s) {', '.join(sorted(missing))}", path=path)
                rows = iter(reader)
                while True:
                    start = reader.line_num + 1  # a quoted cell may span lines: name the first
                    row = next(rows, None)
                    if row is None:
                        return
                    # Short rows give None; cells are plain text from here on.
                    yield start, {k: (row.get(k) or "") for k in columns}
        except FileNotFoundError:
            raise SourceError(f"{path.name} is missing", path=path) from None
        except UnicodeDecodeError as e:
            raise SourceError(f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})", path=path) from None
        except csv.Error as e:
            raise SourceError(f"not a readable CSV table: {e}", path=path, row=reader.line_num) from None
        except OSError as e:
            raise SourceError(f"cannot read: {e.strerror or e}", path=path) from None

    def _category(self, text: str, path: Path, row: int) -> str:
        category = check_category_name(text.strip(), path=path, row=row, error=SourceError)
        self._declared.setdefault(category, (path, f"row {row}", SourceError))
        return category

    def _read_labels(self) -> None:
        path = self.root / "labels.csv"
        self._declared: dict[str, tuple[Path | None, str | None, type[Exception]]] = {}
        for row_number, row in self._rows(path, {"category", "id", "names"}):
            text = row["id"].strip()
            if not (text.isascii() and text.isdigit()):
                raise SourceError(f"id {text[:40]!r} is not an integer", path=path, row=row_number)
            ident = int(text)
            names = tuple(n.strip() for n in row["names"].split(";") if n.strip())
            if ident <= 0 or not names or not row["category"].strip():
                raise SourceError("need a category, an id > 0 and at least one name", path=path, row=row_number)
            if ident > MAX_RG:
                # Masks hold ids in at most 16 bits, and label layers number them as such.
                raise SourceError(f"id {ident} is above {MAX_RG}, the largest id a mask can hold", path=path, row=row_number)
            for name in names:
                check_label_name(name, path=path, row=row_number, error=SourceError)
            self.names[(self._category(row["category"], path, row_number), ident)] = names
        self.categories = sorted({c for c, _ in self.names})

    def _read_tags(self) -> None:
        path = self.root / "tags.csv"
        if not path.is_file():
            return
        ids: dict[tuple[str, str], int] = {}
        # Per category: canonical name -> id, and the largest id, kept up to date (one pass, not one per row).
        known: dict[str, dict[str, int]] = {}
        top: dict[str, int] = {}
        for (c, i), n in sorted(self.names.items()):
            known.setdefault(c, {}).setdefault(n[0], i)
            top[c] = max(top.get(c, 0), i)
        for row_number, row in self._rows(path, {"image", "category", "name"}):
            image, category, name = (row[k].strip() for k in ("image", "category", "name"))
            if not (image and category and name):
                raise SourceError("need image, category and name", path=path, row=row_number)
            category = self._category(category, path, row_number)
            check_label_name(name, path=path, row=row_number, error=SourceError)
            ident = known.get(category, {}).get(name) or ids.get((category, name))
            if ident is None:
                # Tags named outside labels.csv get fresh ids above every listed one.
                ident = top.get(category, 0) + 1
                if ident > MAX_RG:
                    raise SourceError(f"more than {MAX_RG:,} labels in category {category!r}", path=path, row=row_number)
                top[category] = ident
                ids[(category, name)] = ident
                self.names[(category, ident)] = (name,)
            self.tags.setdefault(image.replace("\\", "/"), []).append((category, ident))
        self.categories = sorted({c for c, _ in self.names})

    def items(self) -> list[str]:
        """Image paths relative to ``images/``, sorted."""
        images = self.root / "images"
        return sorted(
            p.relative_to(images).as_posix() for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )

    def load(self, item: str) -> Record:
        """The record of one image: its masks per category and its tags."""
        stem = item.rsplit(".", 1)[0]
        record = Record(key=stem, image=inside_input(self.root, self.root / "images" / item, what="image", item=item))
        for category in self.categories:
            mask_path = self.root / "masks" / category / f"{stem}.png"
            if not mask_path.is_file():
                continue
            inside_input(self.root, mask_path, what="mask", item=item)
            try:
                with Image.open(mask_path) as im:
                    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                        raise SourceItemError(f"mask must be single-channel, got mode {im.mode}", path=mask_path, reason="bad mask")
                    mask = np.asarray(im).astype(np.int32)
            except OSError as e:
                raise SourceItemError(f"cannot decode mask: {e}", path=mask_path, reason="unreadable mask") from None
            unknown = sorted(set(np.unique(mask).tolist()) - {0} - {i for c, i in self.names if c == category})
            if unknown:
                raise SourceItemError(
                    f"class id(s) {unknown[:5]} not listed for {category} in labels.csv", path=mask_path, reason="unknown label id"
                )
            record.pixel[category] = [mask]
        for category, ident in self.tags.get(item, []):
            record.image_level.setdefault(category, []).append(ident)
        used = {(c, int(i)) for c, layers in record.pixel.items() for layer in layers for i in np.unique(layer) if i}
        used |= {(c, i) for c, ids in record.image_level.items() for i in ids}
        record.names = {k: self.names[k] for k in used}
        return record
