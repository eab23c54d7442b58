"""Describable Textures Dataset r1.0.1 (FORMATS.md B.7).

Layout::

    dtd/images/<class>/<class>_<nnnn>.jpg
    dtd/labels/labels_joint_anno.txt    "<class>/<file>.jpg attr attr ... " per line (trailing space)

texture: image-level, every attribute of the joint annotation; the image's own class (its folder)
first as the dominant label, then the others in file order. Images are listed in file order; the
record key is the file stem (``banded_0002``), unique because stems carry the class. Without
``labels_joint_anno.txt`` each image under ``images/<class>/`` gets its folder class only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from concepts.builders import register
from concepts.builders._raster import candidate_dirs, inside_input
from concepts.builders.base import Builder
from concepts.errors import SourceError, SourceItemError
from concepts.records import Record

log = logging.getLogger(__name__)

JOINT = Path("labels") / "labels_joint_anno.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@register
class DtdBuilder(Builder):
    """DTD images with their joint texture attributes as image-level labels."""

    NAME = "dtd"
    DESCRIPTION = "Describable Textures Dataset (images/<class>/*.jpg, labels/labels_joint_anno.txt)"

    EXPECTS = "images/<class>/ + labels/labels_joint_anno.txt (DTD)"
    RELEASE = "a DTD folder"

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """``path`` or a ``dtd/`` child holding ``images/`` and ``labels/labels_joint_anno.txt``."""
        for cand in candidate_dirs(path, "dtd"):
            if (cand / "images").is_dir() and (cand / JOINT).is_file():
                return cand
        return None

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        # Named explicitly, a DTD folder without its label file still yields the folder classes.
        base = self.locate(self.root) or next((d for d in (self.root, self.root / "dtd") if (d / "images").is_dir()), None)
        self.base = base if base is not None else self.located()
        self.labels: dict[str, list[str]] = {}
        if (base / JOINT).is_file():
            self._read_joint(base / JOINT)
        else:
            log.warning("%s is missing; each image gets its folder class only", base / JOINT)
            for path in sorted((base / "images").glob("*/*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.labels[path.relative_to(base / "images").as_posix()] = [path.parent.name]
        if not self.labels:
            raise SourceError("no images listed", path=base / JOINT)
        attributes = sorted({a for attrs in self.labels.values() for a in attrs})
        self.ids = {a: i for i, a in enumerate(attributes, start=1)}

    def _read_joint(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8-sig", errors="replace")
        except OSError as e:
            raise SourceError(f"cannot read ({e.strerror or e})", path=path) from None
        for row, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            rel = fields[0].replace("\\", "/")
            if "/" not in rel or rel.startswith("/") or ".." in rel.split("/"):
                raise SourceError(f"expected '<class>/<file> attributes...', got {line.strip()[:60]!r}", path=path, row=row)
            key_attribute = rel.split("/")[0]
            # The folder class leads (the dominant label); the file does not always list it first.
            attrs = list(dict.fromkeys([key_attribute] + fields[1:]))
            self.labels.setdefault(rel, attrs)

    def items(self) -> list[str]:
        """Image paths relative to ``images/``, in labels file order."""
        return list(self.labels)

    def load(self, item: str) -> Record:
        """The image with its texture attributes."""
        image = inside_input(self.base, self.base / "images" / item, what="image", item=item)
        if not image.is_file():
            raise SourceItemError("image is missing", path=image, reason="missing image")
        ids = [self.ids[a] for a in self.labels[item]]
        return Record(
            key=Path(item).stem,
            image=image,
            image_level={"texture": ids},
            names={("texture", i): (a,) for a, i in zip(self.labels[item], ids)},
        )
