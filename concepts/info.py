"""A summary of a concept dataset: images per split, labels per category, frequent and rare concepts."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from concepts.broden.reader import ConceptDataset
from concepts.listing import shorten

#: Image and segmentation sizes named in the header before "... and N more".
SIZES_SHOWN = 4


@dataclass
class CategorySummary:
    """One category: its labels, how many images carry data for it and in what form."""

    name: str
    labels: int
    images: int
    kind: str  # "pixel", "image-level", "mixed" or "none"
    frequency: int


@dataclass
class DatasetSummary:
    """What ``concepts info`` prints."""

    dataset: str
    images: int
    splits: dict[str, int]
    image_sizes: dict[str, int]
    segmentation_sizes: dict[str, int]
    labels: int
    categories: list[CategorySummary] = field(default_factory=list)
    most_frequent: list[dict[str, Any]] = field(default_factory=list)
    least_frequent: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the summary."""
        return asdict(self)

    def header_lines(self, sizes: int = SIZES_SHOWN) -> list[str]:
        """The text header: counts, splits and sizes, each list ending with "... and N more" when cut."""
        return [
            f"{self.dataset}: {self.images} images, {self.labels} labels, {len(self.categories)} categories",
            "splits:   " + shorten(f"{k} {v}" for k, v in self.splits.items()),
            "images:   " + shorten((f"{k} ({v})" for k, v in self.image_sizes.items()), sizes),
            "labels:   " + shorten((f"{k} ({v})" for k, v in self.segmentation_sizes.items()), sizes),
            "",
        ]

    def table_title(self, which: str) -> str:
        """Title of the ``"most"`` or ``"least"`` frequent concepts table, saying how many of all it shows."""
        rows = self.most_frequent if which == "most" else self.least_frequent
        shown = f" ({len(rows)} of {self.labels})" if len(rows) < self.labels else ""
        return f"{which} frequent concepts{shown}"


def summarize(ds: ConceptDataset, top: int = 10, name: str | Path | None = None) -> DatasetSummary:
    """Summarise an opened dataset from its tables (no pixel is decoded)."""
    splits = Counter(s.split for s in ds.samples)
    sizes = Counter(f"{s.iw}x{s.ih}" for s in ds.samples)
    segs = Counter(f"{s.sw}x{s.sh}" for s in ds.samples)
    cats = []
    for cat in ds.categories:
        with_data = [s for s in ds.samples if s.has(cat.name)]
        pixel = any(s.pixel_paths(cat.name) for s in with_data)
        level = any(s.image_labels(cat.name) for s in with_data)
        kind = "mixed" if pixel and level else "pixel" if pixel else "image-level" if level else "none"
        cats.append(CategorySummary(cat.name, cat.count, len(with_data), kind, cat.frequency))

    def row(label: Any) -> dict[str, Any]:
        return {"number": label.number, "name": label.name, "category": label.primary or next(iter(label.categories), ""),
                "frequency": label.frequency, "coverage": round(label.coverage, 3)}

    ranked = sorted(ds.labels.values(), key=lambda lb: (-lb.frequency, -lb.coverage, lb.number))
    least = ranked[::-1][:top] if len(ranked) > top else []
    return DatasetSummary(
        dataset=str(name if name is not None else ds.root),
        images=len(ds.samples),
        splits=dict(sorted(splits.items())),
        image_sizes=dict(sizes.most_common()),
        segmentation_sizes=dict(segs.most_common()),
        labels=len(ds.labels),
        categories=cats,
        most_frequent=[row(lb) for lb in ranked[:top]],
        least_frequent=[row(lb) for lb in least],
    )
