"""The concept mapping: how labels of an annotation-tool export become concepts.

A mapping file (YAML or TOML, see docs/concept-mapping.md) says, for the labels, shape attributes
and image tags of custom exports (CVAT, COCO, LabelMe, labelme), which category each belongs to
and which canonical name and synonyms it gets, or that it is dropped. Without a file the defaults
apply: area shapes are ``object``, parts (LabelMe ``ispartof``) are ``part``, tags are ``scene``,
attributes are ignored.

Builders call :meth:`ConceptMapping.shape`, :meth:`ConceptMapping.tag` and
:meth:`ConceptMapping.attribute`; each returns a :class:`Concept` (category + names) or None
(dropped). :class:`LabelIds` gives each concept one stable id per export.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concepts.broden.format import MAX_RG, check_category_name, check_label_name, shown
from concepts.errors import SourceError, UsageError
from concepts.vocabulary import normalize_name, scene_name

DEFAULT_SHAPE = "object"
DEFAULT_PART = "part"
DEFAULT_TAG = "scene"
_CATEGORY_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
_FALSE = {"", "false", "0", "no", "off"}
_TOP_KEYS = {"version", "unmapped", "labels", "attributes", "tags"}
_ENTRY_KEYS = {"category", "name", "synonyms", "drop"}


@dataclass(frozen=True)
class Concept:
    """A concept a label maps to: its category and names (canonical first)."""

    category: str
    names: tuple[str, ...]


@dataclass
class _Entry:
    category: str | None = None
    names: tuple[str, ...] = ()
    drop: bool = False


@dataclass
class _Attribute:
    category: str | None = None
    drop: bool = False
    values: dict[str, _Entry] = field(default_factory=dict)


@dataclass
class ConceptMapping:
    """A parsed mapping; ``ConceptMapping()`` is the default (no file)."""

    labels: dict[str, _Entry] = field(default_factory=dict)
    attributes: dict[str, _Attribute] = field(default_factory=dict)
    tag_category: str = DEFAULT_TAG
    keep_unmapped: bool = True
    source: Path | None = None
    #: Every category the file names, with the key path where it first appears (``labels.x.category``).
    categories: dict[str, str] = field(default_factory=dict)
    _normalised: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)

    def _entry(self, table: Mapping[str, Any], label: str) -> Any:
        if label in table:
            return table[label]
        # Exports vary case and spacing ("Person ", "person"): compare normalised names on both sides.
        cached = self._normalised.get(id(table))
        if cached is None or cached[0] != len(table):
            index: dict[str, Any] = {}
            for key, value in table.items():
                index.setdefault(normalize_name(key), value)
            cached = self._normalised[id(table)] = (len(table), index)
        return cached[1].get(normalize_name(label))

    def _concept(self, category: str, names: Sequence[str]) -> Concept | None:
        if category == "scene":
            names = [n for n in (scene_name(x) for x in names) if n]
        names = tuple(n for n in dict.fromkeys(n.strip() for n in names) if n)
        return Concept(category, names) if names else None

    def _label(self, label: str, default_category: str) -> Concept | None:
        entry = self._entry(self.labels, label)
        if entry is None and not self.keep_unmapped:
            return None
        entry = entry or _Entry()
        if entry.drop:
            return None
        return self._concept(entry.category or default_category, entry.names or (label,))

    def shape(self, label: str, *, part: bool = False) -> Concept | None:
        """The concept of an area shape labelled ``label`` (``part``: it is a part of another shape)."""
        return self._label(label, DEFAULT_PART if part else DEFAULT_SHAPE)

    def tag(self, label: str) -> Concept | None:
        """The concept of an image-level tag (CVAT tag, labelme flag)."""
        return self._label(label, self.tag_category)

    def attribute(self, name: str, value: str) -> Concept | None:
        """The concept an attribute ``name=value`` of a shape adds over its pixels (None: ignored)."""
        spec = self._entry(self.attributes, name)
        if spec is None or spec.drop:
            return None
        value = str(value).strip()
        if value.lower() in _FALSE:
            return None
        if value.lower() == "true":
            value = name  # a checkbox names the concept by the attribute itself
        entry = self._entry(spec.values, value) or _Entry()
        if entry.drop:
            return None
        return self._concept(entry.category or spec.category or name, entry.names or (value,))


class LabelIds:
    """Stable source ids of the concepts of one export: ``(category, names) -> id`` per category."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = path
        self.ids: dict[tuple[str, tuple[str, ...]], int] = {}
        self.names: dict[tuple[str, int], tuple[str, ...]] = {}
        self._next: Counter = Counter()

    def get(self, concept: Concept) -> int:
        """The id of a concept in its category, assigned on first use (1, 2, ...)."""
        key = (concept.category, concept.names)
        if key not in self.ids:
            # Label layers hold ids as 16-bit numbers: a 65,536th id would wrap around to 0, 1, ...
            if self._next[concept.category] >= MAX_RG:
                raise SourceError(f"more than {MAX_RG:,} distinct labels in category {concept.category!r}; "
                                  "the format cannot number them", path=self.path)
            self._next[concept.category] += 1
            ident = self._next[concept.category]
            self.ids[key] = ident
            self.names[(concept.category, ident)] = concept.names
        return self.ids[key]


def _fail(path: Path, where: str, message: str) -> SourceError:
    return SourceError(f"{where}: {message}", path=path, item=_line(path, where), hint="see docs/concept-mapping.md for the format")


# The text of each mapping file read, to name the line of an error (tomllib reports no positions).
_TEXTS: dict[Path, str] = {}


def _line(path: Path, where: str) -> str | None:
    """``line N`` of the key path ``where`` (``labels.cat.category``) in a mapping file, best effort."""
    text = _TEXTS.get(path)
    if text is None or where == "top level":
        return None
    lines = text.splitlines()
    at = 0
    for key in where.split("."):
        pattern = re.compile(r"(?<![\w-])" + re.escape(key) + r"(?![\w-])")
        found = next((i for i in range(at, len(lines)) if pattern.search(lines[i])), None)
        if found is None:
            break
        at = found
    return f"line {at + 1}"


def locate(path: Path, where: str) -> str:
    """``line N, labels.x.category`` (or just the key path when the line cannot be found)."""
    line = _line(path, where)
    return f"{line}, {where}" if line else where


def _category(path: Path, where: str, value: Any, mapping: ConceptMapping | None = None) -> str:
    try:
        check_category_name(value, path=path, item=where, error=UsageError)
    except UsageError:
        # The line is looked up only for an error: a search per entry would be quadratic.
        check_category_name(value, path=path, item=locate(path, where), error=UsageError)
    if mapping is not None:
        mapping.categories.setdefault(value, where)
    return value


def _name(path: Path, where: str, value: str) -> str:
    try:
        return check_label_name(value, path=path, item=where, error=UsageError)
    except UsageError:
        return check_label_name(value, path=path, item=locate(path, where), error=UsageError)


def _parse_entry(path: Path, where: str, value: Any, mapping: ConceptMapping, *, allow_category: bool = True) -> _Entry:
    if value is None or value is False or value == "drop":
        return _Entry(drop=True)
    if isinstance(value, str):
        return _Entry(names=(_name(path, where, value),))
    if not isinstance(value, Mapping):
        raise _fail(path, where, f"expected a table (category/name/synonyms), 'drop' or a name, got {_short(value)}")
    unknown = set(value) - _ENTRY_KEYS
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(sorted(str(k)[:60] for k in unknown))}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    if value.get("drop"):
        return _Entry(drop=True)
    category = _category(path, f"{where}.category", value["category"], mapping) if "category" in value and allow_category else None
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise _fail(path, f"{where}.name", f"must be a non-empty string, got {_short(name)}")
    if name is not None:
        _name(path, f"{where}.name", name)
    syns = value.get("synonyms", [])
    if isinstance(syns, str):
        syns = [syns]
    if not isinstance(syns, list) or not all(isinstance(s, str) for s in syns):
        raise _fail(path, f"{where}.synonyms", f"must be a list of strings, got {_short(syns)}")
    for syn in syns:
        _name(path, f"{where}.synonyms", syn)
    return _Entry(category=category, names=((name,) if name else ()) + tuple(syns))


def _short(value: Any) -> str:
    return shown(value)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError("concept mapping file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read concept mapping: {' '.join(str(e).split())}", path=path) from None
    _TEXTS[path] = text
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SourceError(f"not valid TOML: {' '.join(str(e).split())}", path=path) from None
        except RecursionError:
            raise SourceError("not a usable TOML mapping: nested too deeply", path=path) from None
    import yaml

    try:
        # libyaml's safe loader when present: same safe constructors, many times faster on large
        # starter mappings, and it bounds nesting depth itself.
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise SourceError(f"not valid YAML: {' '.join(str(e).split())}", path=path) from None
    except RecursionError:
        raise SourceError("not a usable YAML mapping: nested too deeply", path=path) from None
    except (ValueError, OverflowError) as e:
        # PyYAML's constructors raise plain errors on some values (a timestamp out of range).
        raise SourceError(f"not valid YAML: {' '.join(str(e).split())}", path=path) from None


def load_mapping(path: str | Path | None) -> ConceptMapping:
    """Read a concept mapping file (YAML, or TOML by its ``.toml`` suffix); None gives the defaults."""
    if path is None:
        return ConceptMapping()
    path = Path(path)
    data = _read(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _fail(path, "top level", "must be a table with labels/attributes/tags")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(path, "top level", f"unknown key(s) {', '.join(sorted(str(k)[:60] for k in unknown))}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if data.get("version", 1) != 1:
        raise _fail(path, "version", f"unsupported version {_short(data.get('version'))} (this program reads version 1)")
    unmapped = data.get("unmapped", "keep")
    if unmapped not in ("keep", "drop"):
        raise _fail(path, "unmapped", f"must be 'keep' or 'drop', got {_short(unmapped)}")
    mapping = ConceptMapping(keep_unmapped=unmapped == "keep", source=path)
    labels = data.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise _fail(path, "labels", "must be a table of label: entry")
    for label, value in labels.items():
        mapping.labels[str(label)] = _parse_entry(path, f"labels.{label}", value, mapping)
    attributes = data.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise _fail(path, "attributes", "must be a table of attribute: entry")
    for name, value in attributes.items():
        where = f"attributes.{name}"
        if value is None or value is False or value == "drop":
            mapping.attributes[str(name)] = _Attribute(drop=True)
            continue
        if isinstance(value, str):
            mapping.attributes[str(name)] = _Attribute(category=_category(path, where, value, mapping))
            continue
        if not isinstance(value, Mapping) or set(value) - {"category", "values"}:
            raise _fail(path, where, "must be a category name, 'drop', or a table with category and values")
        # Without a category the attribute's own name is the category: it must be a valid one.
        attr = _Attribute(category=_category(path, f"{where}.category" if "category" in value else where,
                                             value["category"] if "category" in value else str(name), mapping))
        values = value.get("values") or {}
        if not isinstance(values, Mapping):
            raise _fail(path, f"{where}.values", "must be a table of value: entry")
        for v, entry in values.items():
            attr.values[str(v)] = _parse_entry(path, f"{where}.values.{v}", entry, mapping)
        mapping.attributes[str(name)] = attr
    tags = data.get("tags") or {}
    if not isinstance(tags, Mapping) or set(tags) - {"category"}:
        raise _fail(path, "tags", "must be a table with one key, category")
    if "category" in tags:
        mapping.tag_category = _category(path, "tags.category", tags["category"], mapping)
    return mapping


@dataclass
class Inventory:
    """What an export contains, for a starter mapping: label, part, tag and attribute counts."""

    labels: Counter = field(default_factory=Counter)
    parts: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    attributes: dict[str, Counter] = field(default_factory=dict)

    def add_attribute(self, name: str, value: str) -> None:
        """Count one attribute value."""
        self.attributes.setdefault(name, Counter())[str(value)] += 1


def _q(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


def starter_mapping(builders: Sequence[Any]) -> str:
    """A starter YAML mapping listing every label, attribute and tag the builders' exports contain."""
    total = Inventory()
    lines = ["# Concept mapping generated by `concepts build --print-concepts`; edit, then pass --concepts FILE.",
             "# Counts are the number of shapes (or tags/values) found. See docs/concept-mapping.md.",
             "version: 1", "unmapped: keep"]
    for b in builders:
        inventory = getattr(b, "inventory", None)
        if inventory is None:
            lines.append(f"# {b.NAME} ({b.root}): labels come from the dataset itself; no mapping needed")
            continue
        inv = inventory()
        total.labels.update(inv.labels)
        total.parts.update(inv.parts)
        total.tags.update(inv.tags)
        for name, values in inv.attributes.items():
            total.attributes.setdefault(name, Counter()).update(values)
    lines.append("labels:")
    every = sorted(set(total.labels) | set(total.parts) | set(total.tags))
    if not every:
        lines[-1] = "labels: {}"
    for label in every:
        if total.tags[label] and not total.labels[label] and not total.parts[label]:
            category = "scene"
        elif total.parts[label] and not total.labels[label]:
            category = "part"
        else:
            category = "object"
        counts = ", ".join(f"{n} {what}" for n, what in ((total.labels[label], "shapes"), (total.parts[label], "parts"),
                                                         (total.tags[label], "tags")) if n)
        lines.append(f"  {_q(label)}: {{category: {category}, name: {_q(normalize_name(label) or label)}, synonyms: []}}  # {counts}")
    lines.append("attributes:" if total.attributes else "attributes: {}")
    for name in sorted(total.attributes):
        values = total.attributes[name]
        shown = ", ".join(f"{v} x{n}" for v, n in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
        lines.append(f"  {_q(name)}: drop  # values: {shown}; to use: {{category: {_category_guess(name)}}}")
    lines.append("tags:")
    lines.append("  category: scene")
    return "\n".join(lines) + "\n"


def _category_guess(name: str) -> str:
    text = "".join(c for c in normalize_name(name).replace(" ", "_") if c in _CATEGORY_CHARS)
    return text or "attribute"
