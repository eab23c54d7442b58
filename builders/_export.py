"""What the annotation-tool exports (CVAT, COCO, LabelMe) share: mapping, label ids, one parse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from concepts.builders._raster import inside_input
from concepts.builders.base import Builder
from concepts.archive import export_folder
from concepts.mapping import Inventory, LabelIds, load_mapping


class ExportBuilder(Builder):
    """A builder for an export: reads it once (:meth:`read_export`), items are indices into that list."""

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.folder = export_folder(self.root)
        self.mapping = load_mapping(self.options.get("concepts"))
        self.ids = LabelIds(self.root)
        self.inv = Inventory()
        self._parsed: list[Any] | None = None

    def read_export(self) -> list[Any]:
        """Parse the whole export into one entry per image (counting labels into ``self.inv``)."""
        raise NotImplementedError

    def _parse(self) -> list[Any]:
        if self._parsed is None:
            self._parsed = self.read_export()
        return self._parsed

    def items(self) -> list[int]:
        """Indices of the export's images, in the order the export lists them."""
        return list(range(len(self._parse())))

    def inventory(self) -> Inventory:
        """Label, tag and attribute counts (for a starter mapping)."""
        self._parse()
        return self.inv


def contained(root: Path, path: Path, *, where: Path, element: str) -> Path:
    """``path`` when it (symlinks resolved) stays inside the export ``root``; else a SourceItemError.

    The error names the annotation file ``where`` and the ``element`` that named the path
    (:func:`concepts.builders._raster.inside_input`).
    """
    return inside_input(root, path, what=element, where=where)
