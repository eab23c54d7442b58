"""The records builders emit and the unifier consumes.

A builder lists its items cheaply (:meth:`builders.base.Builder.items`) and turns one item into
one :class:`Record` (:meth:`builders.base.Builder.load`), in a worker process. A record carries the
*source's own* label ids; the unifier gives them unified numbers across every source.

A source label is the triple ``(source, category, id)``; ``names`` gives, for every
``(category, id)`` that the record uses, the candidate names in order of preference
(``("person", "individual", "someone")``). Id 0 in a pixel layer is unlabeled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

#: What a record's image may be: a file path, encoded bytes, a PIL image or an ``H x W x 3`` array.
ImageData = Union[Path, bytes, Image.Image, np.ndarray]


@dataclass
class Record:
    """One image with its annotations, in source label ids.

    key:        unique, deterministic name of the image within its source, derived from the source
                path (``training/abbey/ADE_train_00000001``); becomes the output file stem.
    image:      the image (path, bytes, PIL image or RGB array).
    pixel:      ``{category: [layer, ...]}``; each layer an integer ``H x W`` array of source ids,
                dominant layer first. Layers need not have the image's size (they are resized
                with nearest neighbour straight to the segmentation size).
    image_level:``{category: [id, ...]}`` labels that apply to every pixel, dominant first.
    names:      ``{(category, id): (name, ...)}`` for every id used above.
    skipped:    ``{reason: count}`` of annotations in this item that could not be used (for
                example shapes without area); summed into the build summary.
    """

    key: str
    image: ImageData
    pixel: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image_level: dict[str, list[int]] = field(default_factory=dict)
    names: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def categories(self) -> list[str]:
        """Return the categories this record has data for, in first-seen order."""
        seen = dict.fromkeys(self.pixel)
        seen.update(dict.fromkeys(self.image_level))
        return list(seen)

    def check(self) -> None:
        """Raise ValueError when the record is internally inconsistent (a builder bug)."""
        for category, layers in self.pixel.items():
            for layer in layers:
                if layer.ndim != 2 or not np.issubdtype(layer.dtype, np.integer):
                    raise ValueError(f"{self.key}: {category} layer must be a 2-D integer array")
                for value in np.unique(layer):
                    if value < 0:
                        raise ValueError(f"{self.key}: negative label id {value} in {category}")
                    if value and (category, int(value)) not in self.names:
                        raise ValueError(f"{self.key}: no names for {category} id {value}")
        for category, ids in self.image_level.items():
            for value in ids:
                if (category, int(value)) not in self.names:
                    raise ValueError(f"{self.key}: no names for {category} id {value}")


def names_tuple(names: str | Sequence[str]) -> tuple[str, ...]:
    """Split a comma-separated synonym string (ADE style) or pass a sequence through as a tuple."""
    if isinstance(names, str):
        return tuple(part.strip() for part in names.split(","))
    return tuple(names)


def merge_names(target: dict[tuple[str, int], tuple[str, ...]], extra: Mapping[tuple[str, int], tuple[str, ...]]) -> None:
    """Add names for ids that ``target`` does not know yet."""
    for key, value in extra.items():
        target.setdefault(key, value)
