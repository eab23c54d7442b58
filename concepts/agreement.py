"""Agreement between two annotations of the same images (for example two annotators).

Three kinds of annotation error are measured, per concept and overall, per category:

* segmentation quality: per concept, pixel IoU between the two annotations, summed over images
  (``sum |A & B| / sum |A | B|``), where a pixel has a concept when any layer carries it;
* naming disagreement: among pixels both annotations label (dominant layer), the share labelled
  with different names, with the most frequent name pairs;
* segment counts: per image and concept, the number of connected segments (8-connected) in each
  annotation, and their absolute difference.

Both exports are read with the same builders a build uses, so any supported format works and a
concept mapping applies to both. Names are compared after normalisation (case, spaces).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from concepts.builders.base import Builder
from concepts import progress
from concepts.errors import SourceError, SourceItemError
from concepts.records import Record
from concepts.vocabulary import normalize_name

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class ConceptAgreement:
    """Pixel and segment agreement of one concept (a category and a name)."""

    category: str
    name: str
    pixels_a: int = 0
    pixels_b: int = 0
    intersection: int = 0
    union: int = 0
    images_a: int = 0
    images_b: int = 0
    segments_a: int = 0
    segments_b: int = 0
    segment_difference: int = 0

    @property
    def iou(self) -> float:
        """Pixel IoU over all images (1.0 when neither annotation uses the concept)."""
        return self.intersection / self.union if self.union else 1.0


@dataclass
class ImageAgreement:
    """Segment counts of one image: ``{category/name: (segments in A, segments in B)}``."""

    key: str
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def difference(self) -> int:
        """Sum over concepts of the absolute difference of segment counts."""
        return sum(abs(a - b) for a, b in self.segments.values())


@dataclass
class Unreadable:
    """An item of one export that could not be read: the file it names, why, and the message."""

    where: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class AgreementReport:
    """The result of :func:`compare`."""

    concepts: list[ConceptAgreement]
    images: list[ImageAgreement]
    only_a: list[str]
    only_b: list[str]
    both_labelled: int = 0
    name_disagreement: int = 0
    confusions: list[tuple[str, str, str, int]] = field(default_factory=list)
    #: Items left out because they could not be read, per export (never dropped silently).
    unreadable_a: list[Unreadable] = field(default_factory=list)
    unreadable_b: list[Unreadable] = field(default_factory=list)

    @property
    def mean_iou(self) -> float:
        """Pixel-weighted IoU over every concept (total intersection over total union)."""
        union = sum(c.union for c in self.concepts)
        return sum(c.intersection for c in self.concepts) / union if union else 1.0

    @property
    def naming_agreement(self) -> float:
        """Share of pixels labelled by both whose names agree."""
        return 1.0 - self.name_disagreement / self.both_labelled if self.both_labelled else 1.0

    @property
    def mean_segment_difference(self) -> float:
        """Mean over images of the summed absolute segment-count difference."""
        return sum(i.difference for i in self.images) / len(self.images) if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "overall": {
                "images": len(self.images),
                "mean_iou": self.mean_iou,
                "naming_agreement": self.naming_agreement,
                "pixels_labelled_by_both": self.both_labelled,
                "pixels_named_differently": self.name_disagreement,
                "mean_segment_difference": self.mean_segment_difference,
            },
            "concepts": [{**asdict(c), "iou": c.iou} for c in self.concepts],
            "confusions": [{"category": c, "name_a": a, "name_b": b, "pixels": n} for c, a, b, n in self.confusions],
            "images": [{"key": i.key, "segments": {k: list(v) for k, v in i.segments.items()}, "difference": i.difference} for i in self.images],
            "only_in_a": self.only_a,
            "only_in_b": self.only_b,
            "unreadable_in_a": [asdict(u) for u in self.unreadable_a],
            "unreadable_in_b": [asdict(u) for u in self.unreadable_b],
        }


def item_name(builder: Builder, item: Any) -> str:
    """The file an item stands for, as a user knows it (export builders number their items)."""
    parsed = getattr(builder, "_parsed", None)
    if isinstance(item, int) and isinstance(parsed, list) and 0 <= item < len(parsed):
        entry = parsed[item]
        for attr in ("file_name", "name", "image", "json", "xml", "key"):
            value = getattr(entry, attr, None)
            if isinstance(value, str) and value:
                return value
    if isinstance(item, tuple):
        return "/".join(str(part) for part in item)
    return str(item)


def _records(builder: Builder) -> tuple[dict[str, Record], list[Unreadable]]:
    out: dict[str, Record] = {}
    unreadable: list[Unreadable] = []
    for item in progress.progress(builder.items(), desc=f"reading {builder.root.name}", unit="img"):
        try:
            record = builder.load(item)
        except SourceItemError as e:
            unreadable.append(Unreadable(str(e.path) if e.path else item_name(builder, item), e.reason, e.message))
            continue
        except (OSError, ValueError) as e:
            # Corrupt files surface as decoder errors: the item is counted like any unreadable one.
            unreadable.append(Unreadable(item_name(builder, item), "unreadable", f"{type(e).__name__}: {e}"))
            continue
        out[record.key] = record
    return out, unreadable


def _counted(side: str, records: dict[str, Record], unreadable: list[Unreadable]) -> str:
    text = f"{side}: {len(records)} readable"
    if unreadable:
        text += f", {len(unreadable)} unreadable (e.g. {unreadable[0]})"
    return text


def _name(record: Record, category: str, ident: int) -> str:
    return normalize_name(record.names[(category, int(ident))][0])


def _resize_to(layer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if layer.shape == shape:
        return layer
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * layer.shape[0] / shape[0]).astype(np.intp), layer.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * layer.shape[1] / shape[1]).astype(np.intp), layer.shape[1] - 1)
    return layer[np.ix_(rows, cols)]


def compare(a: Builder, b: Builder, *, categories: Sequence[str] | None = None) -> AgreementReport:
    """Compare two annotations of the same images, read by two builders."""
    (records_a, bad_a), (records_b, bad_b) = _records(a), _records(b)
    shared = sorted(set(records_a) & set(records_b))
    if not shared:
        counts = f"{_counted('A', records_a, bad_a)}; {_counted('B', records_b, bad_b)}"
        if bad_a or bad_b:
            raise SourceError(f"the two exports share no readable image ({counts})", path=b.root, hint="fix or remove the unreadable items")
        raise SourceError(f"the two exports share no image ({counts})", path=b.root, hint="both must annotate the same image names")
    concepts: dict[tuple[str, str], ConceptAgreement] = {}
    images: list[ImageAgreement] = []
    confusions: Counter = Counter()
    both = disagree = 0
    for key in shared:
        ra, rb = records_a[key], records_b[key]
        image = ImageAgreement(key)
        cats = [c for c in dict.fromkeys([*ra.pixel, *rb.pixel]) if categories is None or c in categories]
        for category in cats:
            layers_a = [np.asarray(x) for x in ra.pixel.get(category, [])]
            layers_b = [np.asarray(x) for x in rb.pixel.get(category, [])]
            shape = (layers_a or layers_b)[0].shape
            layers_b = [_resize_to(x, shape) for x in layers_b]
            names_a = {int(i): _name(ra, category, i) for x in layers_a for i in np.unique(x) if i}
            names_b = {int(i): _name(rb, category, i) for x in layers_b for i in np.unique(x) if i}
            for name in sorted(set(names_a.values()) | set(names_b.values())):
                mask_a = np.zeros(shape, bool)
                mask_b = np.zeros(shape, bool)
                ids_a = [i for i, n in names_a.items() if n == name]
                ids_b = [i for i, n in names_b.items() if n == name]
                for x in layers_a:
                    mask_a |= np.isin(x, ids_a)
                for x in layers_b:
                    mask_b |= np.isin(x, ids_b)
                c = concepts.setdefault((category, name), ConceptAgreement(category, name))
                c.pixels_a += int(mask_a.sum())
                c.pixels_b += int(mask_b.sum())
                c.intersection += int((mask_a & mask_b).sum())
                c.union += int((mask_a | mask_b).sum())
                c.images_a += bool(mask_a.any())
                c.images_b += bool(mask_b.any())
                seg_a = ndimage.label(mask_a, structure=_EIGHT)[1]
                seg_b = ndimage.label(mask_b, structure=_EIGHT)[1]
                c.segments_a += seg_a
                c.segments_b += seg_b
                c.segment_difference += abs(seg_a - seg_b)
                image.segments[f"{category}/{name}"] = (seg_a, seg_b)
            if layers_a and layers_b:
                top_a, top_b = layers_a[0], layers_b[0]
                labelled = (top_a > 0) & (top_b > 0)
                both += int(labelled.sum())
                pairs, counts = np.unique(np.stack([top_a[labelled], top_b[labelled]]), axis=1, return_counts=True)
                for (ia, ib), n in zip(pairs.T.tolist(), counts.tolist()):
                    na, nb = names_a[ia], names_b[ib]
                    if na != nb:
                        disagree += n
                        confusions[(category, na, nb)] += n
        images.append(image)
    return AgreementReport(
        concepts=sorted(concepts.values(), key=lambda c: (c.category, c.name)),
        images=images,
        only_a=sorted(set(records_a) - set(records_b)),
        only_b=sorted(set(records_b) - set(records_a)),
        both_labelled=both,
        name_disagreement=disagree,
        confusions=[(c, x, y, n) for (c, x, y), n in sorted(confusions.items(), key=lambda kv: (-kv[1], kv[0]))],
        unreadable_a=bad_a,
        unreadable_b=bad_b,
    )
