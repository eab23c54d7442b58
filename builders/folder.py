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
from pathlib import Path

import numpy as np
from PIL import Image

from concepts.builders import register
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

    def _read_labels(self) -> None:
        path = self.root / "labels.csv"
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"category", "id", "names"} - set(reader.fieldnames or [])
                if missing:
                    raise SourceError(f"missing column(s) {', '.join(sorted(missing))}", path=path)
                for row_number, row in enumerate(reader, start=2):
                    try:
                        ident = int(row["id"])
                    except ValueError:
                        raise SourceError(f"id {row['id']!r} is not an integer", path=path, row=row_number) from None
                    names = tuple(n.strip() for n in (row["names"] or "").split(";") if n.strip())
                    if ident <= 0 or not names or not row["category"]:
                        raise SourceError("need a category, an id > 0 and at least one name", path=path, row=row_number)
                    self.names[(row["category"].strip(), ident)] = names
        except FileNotFoundError:
            raise SourceError("labels.csv is missing", path=path) from None
        self.categories = sorted({c for c, _ in self.names})

    def _read_tags(self) -> None:
        path = self.root / "tags.csv"
        if not path.is_file():
            return
        ids: dict[tuple[str, str], int] = {}
        with path.open(newline="", encoding="utf-8") as f:
            for row_number, row in enumerate(csv.DictReader(f), start=2):
                image, category, name = (row.get(k, "") or "" for k in ("image", "category", "name"))
                if not (image and category and name):
                    raise SourceError("need image, category and name", path=path, row=row_number)
                known = {n[0]: i for (c, i), n in self.names.items() if c == category}
                ident = known.get(name) or ids.get((category, name))
                if ident is None:
                    # Tags named outside labels.csv get fresh ids above every listed one.
                    ident = max([i for (c, i) in self.names if c == category] + [0]) + 1
                    ids[(category, name)] = ident
                    self.names[(category, ident)] = (name,)
                self.tags.setdefault(image.replace("\\", "/"), []).append((category, ident))

    def items(self) -> list[str]:
        """Image paths relative to ``images/``, sorted."""
        images = self.root / "images"
        return sorted(
            p.relative_to(images).as_posix() for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )

    def load(self, item: str) -> Record:
        """The record of one image: its masks per category and its tags."""
        stem = item.rsplit(".", 1)[0]
        record = Record(key=stem, image=self.root / "images" / item)
        for category in self.categories:
            mask_path = self.root / "masks" / category / f"{stem}.png"
            if not mask_path.is_file():
                continue
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
