"""Label names and unified numbering across sources (FORMATS.md A.8, A.9 and Appendix 1).

A source label is the triple ``(source, category, id)``. Each has candidate names; the names are
claimed across all sources in order of frequency, the triples sharing a canonical name become one
unified label, rare labels are filtered out, and the rest are numbered 1..N by descending frequency,
then coverage, then name.

Two kinds of statistics, kept apart on purpose:

- per source label (:meth:`Vocabulary.add`): what the Broden builder feeds its name claiming
  (A.8 steps 1-3) and what ``syns.txt`` reports;
- per image (:meth:`Vocabulary.add_image`): which source labels each image holds, so that once
  names are resolved a unified label counts an image once however many of its source labels the
  image holds (a person's head and a dog's head are one ``head`` image). These final counts are
  what the filters use and what ``label.csv`` and ``c_*.csv`` say (the Broden README: frequency is
  "the number of images for which the label appears").
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from concepts.broden.format import MAX_LABEL
from concepts.errors import UsageError

Triple = tuple[str, str, int]
UNLABELED = "-"

COLOR_NAMES: tuple[str, ...] = (
    "black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow",
)

# Appendix 1: the Broden builder's synonym rewriter. "prefer" names are placed first, "avoid"
# aliases are removed; together they keep generic WordNet aliases from merging unrelated labels.
_PREFER: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane",),
    "airplane": ("airplane", "aeroplane", "plane"),
    "spectacles": ("eyeglasses",),
    "windopane": ("window",),
    "dog": ("dog", "domestic dog", "canis familiaris"),
    "alga": ("algae",),
    "bicycle": ("bicycle", "bike", "cycle"),
    "food": ("food", "solid food"),
    "caput": ("head",),
    "route": ("road",),
    "fencing": ("fence",),
    "flooring": ("floor",),
    "carpet": ("carpet", "carpeting"),
    "shrub": ("bush",),
    "armour": ("armor",),
    "pail": ("bucket",),
    "spigot": ("faucet",),
    "faucet": ("faucet", "spigot"),
    "crt screen": ("screen",),
    "cistern": ("water tank",),
    "video display": ("display",),
    "lift": ("elevator",),
    "hydroplane": ("seaplane",),
    "microwave oven": ("microwave",),
    "falls": ("waterfall",),
    "mike": ("microphone",),
    "windscreen": ("windshield",),
    "fluorescent fixture": ("fluorescent",),
    "water vapour": ("water vapor",),
    "numberplate": ("license plate",),
    "tin can": ("can",),
    "cow": ("cow", "moo-cow"),
    "horse": ("horse", "equus caballus"),
    "kerb": ("curb",),
    "filing cabinet": ("file cabinet",),
    "electrical switch": ("switch",),
    "telephone set": ("telephone",),
    "totaliser": ("adding machine",),
    "television receiver": ("television",),
    "fabric": ("fabric", "cloth", "textile"),
    "textile": ("fabric",),
    "attack aircraft carrier": ("aircraft carrier",),
    "cooking stove": ("stove",),
    "electric-light bulb": ("light bulb",),
    "airport-airport-s": ("airport-s",),
}
for _w in ("arm", "foot", "hand", "leg"):
    for _p in ("left", "right", "person"):
        _PREFER[f"{_p} {_w}"] = (_w,)
for _p in ("left", "right"):
    _PREFER[f"{_p} shoulder"] = ("shoulder",)
for _w in ("torso", "head", "hair", "nose", "mouth", "ear", "neck", "eye", "eyebrow"):
    _PREFER[f"person {_w}"] = (_w,)

_AVOID: dict[str, tuple[str, ...]] = {
    "flowerpot": ("pot",),
    "toilet": ("throne", "can"),
    "curtain": ("mantle",),
    "fabric": ("material",),
    "file cabinet": ("file",),
    "filing cabinet": ("file",),
    "chest of drawers": ("chest",),
    "fire hydrant": ("plug",),
    "car": ("machine",),
    "closet": ("press",),
    "bicycle": ("wheel",),
    "brochure": ("folder",),
    "paper": ("tissue",),
    "exhaust hood": ("hood",),
    "blanket": ("cover",),
    "carapace": ("shield",),
    "cellular phone": ("cell",),
    "handbag": ("bag",),
    "land": ("soil",),
    "sidewalk": ("pavement",),
    "poster": ("card", "bill"),
    "paper towel": ("tissue",),
    "computer mouse": ("mouse",),
    "steering wheel": ("wheel",),
    "lighthouse": ("beacon",),
    "basketball hoop": ("hoop",),
    "bus": ("passenger vehicle",),
    "head": ("person head",),
}
for _w in ("arm", "foot", "hand", "leg", "shoulder"):
    _AVOID[_w] = (f"left {_w}", f"right {_w}", f"person {_w}")
for _w in ("torso", "hair", "nose", "ear", "neck", "eye", "eyebrow"):
    _AVOID[_w] = (f"person {_w}",)

_SPACES = re.compile(r"\s+")
_FORBIDDEN = str.maketrans({";": ",", "(": "[", ")": "]", '"': ""})


def normalize_name(name: str, *, ascii_only: bool = False) -> str:
    """NFC-normalise, trim, lower-case and collapse spaces; replace ``;()`` which the format reserves."""
    text = unicodedata.normalize("NFC", str(name)).translate(_FORBIDDEN)
    text = _SPACES.sub(" ", text).strip().lower()
    if ascii_only:
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text


def rewrite_synonyms(names: Sequence[str]) -> list[str]:
    """Apply the Broden builder's synonym rewriter (Appendix 1) to an ordered name list."""
    if not any(n in _PREFER or n in _AVOID for n in names):
        return list(names)
    preferred = [p for n in names for p in _PREFER.get(n, ())] + list(names)
    avoid = {a for n in preferred for a in _AVOID.get(n, ())}
    return [n for n in dict.fromkeys(preferred) if n not in avoid]


def candidate_names(names: Iterable[str], *, synonyms: bool = True, ascii_only: bool = False) -> list[str]:
    """Normalise a source label's names, drop empty ones and ``-``, and rewrite synonyms."""
    out = [normalize_name(n, ascii_only=ascii_only) for n in names]
    out = [n for n in dict.fromkeys(out) if n and n != UNLABELED]
    return rewrite_synonyms(out) if synonyms else out


def scene_name(raw: str) -> str | None:
    """Normalise a scene string as Broden does (``a/b`` and ``a - b`` to ``a-b``, suffix ``-s``).

    Names starting with ``~`` are unlabeled (``None``).
    """
    text = normalize_name(raw).strip("/")
    if not text or text.startswith("~"):
        return None
    text = text.replace(" - ", "-").replace("/", "-")
    return text if text.endswith("-s") else f"{text}-s"


@dataclass
class UnifiedLabel:
    """One unified label: its number, canonical name and per-category statistics.

    ``frequency[c]`` is the number of images holding the label in category ``c``; ``images`` the
    number holding it in any category (``None`` when only per-source-label totals were given).
    """

    number: int
    name: str
    frequency: dict[str, int] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    syns: list[str] = field(default_factory=list)
    images: int | None = None

    @property
    def total_frequency(self) -> int:
        """Images that hold the label (label.csv ``frequency``); the category sum without image records."""
        return self.images if self.images is not None else sum(self.frequency.values())

    @property
    def total_coverage(self) -> float:
        """Coverage summed over categories (label.csv ``coverage``)."""
        return sum(self.coverage.values())


@dataclass
class Numbering:
    """The result of unification: the triple-to-number map and the unified labels."""

    mapping: dict[Triple, int]
    labels: list[UnifiedLabel]
    aliases: dict[str, list[tuple[Triple, int, tuple[str, ...]]]] = field(default_factory=dict)
    dropped: int = 0

    def number(self, triple: Triple) -> int:
        """Unified number of a source label (0 when unlabeled or filtered out)."""
        return self.mapping.get(triple, 0)

    def categories(self) -> list[str]:
        """Categories with at least one label, ordered by their first number, then name."""
        first: dict[str, int] = {}
        for label in self.labels:
            for cat in label.frequency:
                first.setdefault(cat, label.number)
        return sorted(first, key=lambda c: (first[c], c))

    def codes(self, category: str) -> list[UnifiedLabel]:
        """Labels of a category in code order: descending frequency, then coverage, then number."""
        members = [lab for lab in self.labels if category in lab.frequency]
        return sorted(members, key=lambda lab: (-lab.frequency[category], -lab.coverage[category], lab.number))


class Vocabulary:
    """Collects source-label statistics and names, then resolves them into a :class:`Numbering`."""

    def __init__(self, *, synonyms: bool = True, ascii_only: bool = False) -> None:
        self.synonyms = synonyms
        self.ascii_only = ascii_only
        self.frequency: dict[Triple, int] = {}
        self.coverage: dict[Triple, float] = {}
        self.raw_names: dict[Triple, tuple[str, ...]] = {}
        # Per-image records, one entry per (image, source label), in flat typed arrays: 17 bytes
        # an entry (some 40 MB for Broden's 63k images), where a dict per image takes ten times that.
        self._triple_index: dict[Triple, int] = {}
        self._triples: list[Triple] = []
        self._images = 0
        self._entry_image = array("i")
        self._entry_triple = array("i")
        self._entry_coverage = array("d")
        self._entry_level = array("b")

    def add(self, triple: Triple, names: Sequence[str], frequency: int, coverage: float) -> None:
        """Add statistics of one source label (called once per image it occurs in, or in bulk)."""
        self.frequency[triple] = self.frequency.get(triple, 0) + frequency
        self.coverage[triple] = self.coverage.get(triple, 0.0) + coverage
        self.raw_names.setdefault(triple, tuple(names))

    def add_image(self, pixel: Iterable[tuple[Triple, float]], image_level: Iterable[Triple] = ()) -> None:
        """Record the source labels one image holds: pixel ones with the fraction they cover, image-level ones.

        Once any image is recorded, :meth:`resolve` counts unified labels on these records.
        """
        image = self._images
        self._images += 1
        for entries, level in ((((t, c) for t, c in pixel), 0), (((t, 1.0) for t in image_level), 1)):
            for triple, coverage in entries:
                k = self._triple_index.get(triple)
                if k is None:
                    k = self._triple_index[triple] = len(self._triples)
                    self._triples.append(triple)
                self._entry_image.append(image)
                self._entry_triple.append(k)
                self._entry_coverage.append(float(coverage))
                self._entry_level.append(level)

    def resolve(self, *, min_frequency: int = 0, min_coverage: float = 0.0) -> Numbering:
        """Claim names, merge, filter and number the labels (A.8 steps 2-7)."""
        order = sorted(self.frequency, key=lambda t: (-self.frequency[t], t))
        owner: dict[str, Triple] = {}
        canonical: dict[Triple, str] = {}
        names_of: dict[Triple, list[str]] = {}
        for triple in order:
            names = candidate_names(self.raw_names[triple], synonyms=self.synonyms, ascii_only=self.ascii_only)
            names_of[triple] = names
            for name in names:
                owner.setdefault(name, triple)
            owned = [n for n in names if owner[n] == triple]
            if owned:
                canonical[triple] = owned[0]
            elif not names:
                canonical[triple] = UNLABELED
            else:
                canonical[triple] = canonical[self._closest_owner(triple, [owner[n] for n in names])]

        if self._images:
            freq, cov, images = self._count_images(canonical)
        else:
            freq, cov = self._count_labels(order, canonical)
            images = None

        def total(name: str) -> int:
            return images[name] if images is not None else sum(freq[name].values())

        # A name none of whose source labels reached an image (all smaller than a pixel of the
        # segmentation size, say) would be a number no image carries.
        kept = [
            n for n in freq
            if total(n) > 0 and total(n) >= min_frequency and sum(cov[n].values()) >= min_coverage
        ]
        kept.sort(key=lambda n: (-total(n), -sum(cov[n].values()), n))
        if len(kept) > MAX_LABEL:
            raise UsageError(f"{len(kept):,} labels survive the filters; the format holds at most {MAX_LABEL:,} "
                             "(NetDissect-Lite reads label numbers as int16)",
                             hint="raise --min-frequency or --min-coverage")
        number_of = {name: i for i, name in enumerate(kept, start=1)}
        labels = []
        for name in kept:
            # The dicts are built in triple order; re-sort categories by descending frequency.
            cats = sorted(freq[name], key=lambda c: (-freq[name][c], c))
            labels.append(
                UnifiedLabel(
                    number=number_of[name],
                    name=name,
                    frequency={c: freq[name][c] for c in cats},
                    coverage={c: cov[name][c] for c in cats},
                    images=images[name] if images is not None else None,
                )
            )
        for word, triple in owner.items():
            number = number_of.get(canonical[triple])
            if number and word != labels[number - 1].name and word not in labels[number - 1].syns:
                labels[number - 1].syns.append(word)
        mapping = {t: number_of.get(canonical[t], 0) for t in order}
        aliases: dict[str, list[tuple[Triple, int, tuple[str, ...]]]] = {}
        for t in order:
            if canonical[t] in number_of:
                aliases.setdefault(canonical[t], []).append((t, self.frequency[t], tuple(names_of[t])))
        return Numbering(mapping=mapping, labels=labels, aliases=aliases, dropped=len(freq) - len(kept))

    def _count_labels(self, order: list[Triple], canonical: dict[Triple, str]) -> tuple[dict, dict]:
        """Per name and category, the sums of its source labels' statistics (no image records given)."""
        freq: dict[str, dict[str, int]] = {}
        cov: dict[str, dict[str, float]] = {}
        for triple in order:
            name = canonical[triple]
            if name == UNLABELED:
                continue
            cat = triple[1]
            freq.setdefault(name, {})
            cov.setdefault(name, {})
            freq[name][cat] = freq[name].get(cat, 0) + self.frequency[triple]
            cov[name][cat] = cov[name].get(cat, 0.0) + self.coverage[triple]
        return freq, cov

    def _count_images(self, canonical: dict[Triple, str]) -> tuple[dict, dict, dict[str, int]]:
        """Per name and category, images holding it and the pixel fraction it covers, from the image records.

        An image counts once per (name, category) however many merged source labels it holds
        there, and once per name over all categories; pixel coverages add up (merged labels
        cover disjoint pixels of a layer; layers add up as in A.8), an image-level label covers
        its image once.
        """
        names = sorted({canonical[t] for t in self._triples if canonical.get(t, UNLABELED) != UNLABELED})
        cats = sorted({t[1] for t in self._triples})
        name_id = {n: i for i, n in enumerate(names)}
        cat_id = {c: i for i, c in enumerate(cats)}
        n_names, n_cats = max(len(names), 1), max(len(cats), 1)
        triple_name = np.array([name_id.get(canonical.get(t, UNLABELED), -1) for t in self._triples] or [-1], np.int64)
        triple_cat = np.array([cat_id[t[1]] for t in self._triples] or [0], np.int64)
        # Copies, not views: a view would keep the arrays from growing if more images were added.
        tri = np.frombuffer(self._entry_triple, np.int32).astype(np.int64)
        img = np.frombuffer(self._entry_image, np.int32).astype(np.int64)
        cov_in = np.frombuffer(self._entry_coverage, np.float64).copy()
        level = np.frombuffer(self._entry_level, np.int8).astype(bool)
        name = triple_name[tri]
        keep = name >= 0
        img, name, cov_in, level = img[keep], name[keep], cov_in[keep], level[keep]
        key = name * n_cats + triple_cat[tri[keep]]
        n_keys = n_names * n_cats
        per_cat = np.bincount(np.unique(img * n_keys + key) % n_keys, minlength=n_keys)
        per_name = np.bincount(np.unique(img * n_names + name) % n_names, minlength=n_names)
        # Summed in record order (the build's item order), so the result is the same for any worker count.
        coverage = np.bincount(key[~level], weights=cov_in[~level], minlength=n_keys)
        coverage += np.bincount(np.unique(img[level] * n_keys + key[level]) % n_keys, minlength=n_keys)
        freq: dict[str, dict[str, int]] = {}
        cov: dict[str, dict[str, float]] = {}
        for k in np.flatnonzero(per_cat).tolist():
            n, c = names[k // n_cats], cats[k % n_cats]
            freq.setdefault(n, {})[c] = int(per_cat[k])
            cov.setdefault(n, {})[c] = float(coverage[k])
        # Names whose source labels reached no image still take part in the filters (and fail them).
        for n in names:
            freq.setdefault(n, {})
            cov.setdefault(n, {})
        return freq, cov, {n: int(per_name[i]) for i, n in enumerate(names)}

    def _closest_owner(self, triple: Triple, owners: list[Triple]) -> Triple:
        mine = self.coverage[triple] / max(self.frequency[triple], 1)
        candidates = list(dict.fromkeys(owners))
        return min(
            candidates,
            key=lambda o: (abs(self.coverage[o] / max(self.frequency[o], 1) - mine), -self.frequency[o], o),
        )
