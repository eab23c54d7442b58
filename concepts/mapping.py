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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from concepts.broden.format import MAX_RG, check_category_name, check_label_name, shown
from concepts.errors import SourceError, UnsafeInputError, UsageError
from concepts.vocabulary import normalize_name, scene_name

DEFAULT_SHAPE = "object"
DEFAULT_PART = "part"
DEFAULT_TAG = "scene"
_CATEGORY_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
_FALSE = {"", "false", "0", "no", "off"}


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

    def shape(self, label: str, *, part: bool = False, default: str | None = None) -> Concept | None:
        """The concept of an area shape labelled ``label`` (``part``: a part of another shape; ``default``: the source's own category)."""
        return self._label(label, default or (DEFAULT_PART if part else DEFAULT_SHAPE))

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
        key = re.sub(r"\[\d+\]$", "", key)  # synonyms[2]: the list's key
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


# The file's schema. pydantic checks the shapes and types (strict: no 1 for "1", no unknown keys);
# the names themselves are checked afterwards by concepts.broden.format, as every name entering a
# dataset is, so a bad name is a UsageError (exit 2) like everywhere else.


def _dropped(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str) and value == "drop")


def _key(value: Any) -> Any:
    # YAML reads unquoted keys such as `1:` or `yes:` as numbers and booleans; labels are text.
    return value if isinstance(value, (str, dict, list)) else str(value)


def _empty(value: Any) -> Any:
    return {} if value is None else value


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


_Key = Annotated[str, BeforeValidator(_key)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _EntrySpec(_Strict):
    """A label (or attribute value): a table, a plain name, or one of the ways to write drop."""

    category: str | None = None
    name: str | None = None
    synonyms: Annotated[list[str], BeforeValidator(_listed)] = []
    drop: bool = False
    _plain: bool = PrivateAttr(False)

    @model_validator(mode="wrap")
    @classmethod
    def _short_forms(cls, value: Any, handler: Any) -> Any:
        if _dropped(value):
            return handler({"drop": True})
        if isinstance(value, str):
            entry = handler({"name": value})
            entry._plain = True  # errors then name the label's own key, where the name is written
            return entry
        return handler(value)


class _AttributeSpec(_Strict):
    """An attribute: a category name, drop, or a table with category and values."""

    category: str | None = None
    values: Annotated[dict[_Key, _EntrySpec], BeforeValidator(_empty)] = {}
    _drop: bool = PrivateAttr(False)
    _plain: bool = PrivateAttr(False)

    @model_validator(mode="wrap")
    @classmethod
    def _short_forms(cls, value: Any, handler: Any) -> Any:
        if _dropped(value):
            spec = handler({})
            spec._drop = True
            return spec
        if isinstance(value, str):
            spec = handler({"category": value})
            spec._plain = True
            return spec
        return handler(value)


class _TagsSpec(_Strict):
    category: str | None = None


class _MappingFile(_Strict):
    """The whole file (version 1)."""

    version: int = 1
    unmapped: Literal["keep", "drop"] = "keep"
    labels: Annotated[dict[_Key, _EntrySpec], BeforeValidator(_empty)] = {}
    attributes: Annotated[dict[_Key, _AttributeSpec], BeforeValidator(_empty)] = {}
    tags: Annotated[_TagsSpec, BeforeValidator(_empty)] = _TagsSpec()

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != 1:
            raise PydanticCustomError("version", "{reason}", {"reason": f"unsupported version {shown(value)} (this program reads version 1)"})
        return value


#: What a table at each place may hold, and what it is, for messages.
_TABLES = {"top level": (_MappingFile, "a table with labels/attributes/tags"), "labels": (None, "a table of label: entry"),
           "attributes": (None, "a table of attribute: entry"), "tags": (_TagsSpec, "a table with one key, category"),
           "entry": (_EntrySpec, "a table (category/name/synonyms), 'drop' or a name"),
           "attribute": (_AttributeSpec, "a category name, 'drop', or a table with category and values"),
           "values": (None, "a table of value: entry")}


def _place(loc: Sequence[Any]) -> str:
    """Which kind of table the key path ``loc`` names (a key of ``_TABLES``)."""
    loc = tuple(loc)
    if not loc:
        return "top level"
    if loc[0] == "attributes" and len(loc) >= 3:
        return "values" if len(loc) == 3 else "entry"
    if loc[0] in ("labels", "attributes") and len(loc) >= 2:
        return "entry" if loc[0] == "labels" else "attribute"
    return str(loc[0])


def _schema_error(path: Path, error: ValidationError) -> SourceError:
    """pydantic's first error as one line: the key path, its line in the file, and what is wrong."""
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = list(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        parent = loc[:-1]
        unknown = [_shown_key(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and list(e["loc"][:-1]) == parent]
        model = _TABLES[_place(parent)][0]
        allowed = ", ".join(sorted(model.model_fields)) if model else ""
        return _fail(path, _where(parent), f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
    if kind == "version":
        return _fail(path, _where(loc), first["msg"])
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"must be {_TABLES.get(_place(loc), (None, 'a table'))[1]}"
    else:
        message = _MESSAGES.get(kind) or " ".join(first["msg"].split()).replace("Input should be", "must be")
    if kind != "missing":
        message += f", got {shown(first['input'])}"
    return _fail(path, _where(loc), message)


#: pydantic's messages said the way the rest of this file's messages are.
_MESSAGES = {"string_type": "must be a string", "list_type": "must be a list of strings", "bool_type": "must be true or false",
             "int_type": "must be an integer"}


def _where(loc: Sequence[Any]) -> str:
    """The dotted key path of a pydantic location; a position in a list is shown as ``[i]``."""
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and i and loc[i - 1] == "synonyms":
            text += f"[{part}]"
        else:
            text += ("." if text else "") + _shown_key(part)
    return text or "top level"


def _shown_key(key: Any) -> str:
    """A key as written, or quoted and cut when it would break the one-line message (a line break, 1 kB)."""
    text = str(key)
    return text if text.isprintable() and len(text) <= 60 else shown(text)


def _too_many_nodes(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values, counting a shared one at each place it appears."""
    stack, seen = [data], 1
    while stack:
        node = stack.pop()
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else ()
        seen += len(children)
        if seen > limit:
            return True
        stack.extend(children)
    return False


def _parse_entry(path: Path, where: str, spec: _EntrySpec, mapping: ConceptMapping) -> _Entry:
    if spec.drop:
        return _Entry(drop=True)
    if spec._plain:
        return _Entry(names=(_name(path, where, spec.name),))
    # An explicit null category is refused by the name check, as any non-text name is.
    category = _category(path, f"{where}.category", spec.category, mapping) if "category" in spec.model_fields_set else None
    if spec.name is not None:
        _name(path, f"{where}.name", spec.name)
    for syn in spec.synonyms:
        _name(path, f"{where}.synonyms", syn)
    return _Entry(category=category, names=((spec.name,) if spec.name else ()) + tuple(spec.synonyms))


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
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SourceError(f"not valid TOML: {' '.join(str(e).split())}", path=path) from None
        except RecursionError:
            raise SourceError("not a usable TOML mapping: nested too deeply", path=path) from None
        except (ValueError, OverflowError) as e:
            raise SourceError(f"not valid TOML: {' '.join(str(e).split())}", path=path) from None
    else:
        import yaml

        try:
            # libyaml's safe loader when present: same safe constructors, many times faster on large
            # starter mappings, and it bounds nesting depth itself.
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise SourceError(f"not valid YAML: {' '.join(str(e).split())}", path=path) from None
        except RecursionError:
            raise SourceError("not a usable YAML mapping: nested too deeply", path=path) from None
        except (ValueError, OverflowError) as e:
            # PyYAML's constructors raise plain errors on some values (a timestamp out of range).
            raise SourceError(f"not valid YAML: {' '.join(str(e).split())}", path=path) from None
    # Written out, every value takes at least one character; more values than that means YAML
    # aliases repeating one another (a billion laughs), which would make checking them endless.
    if _too_many_nodes(data, 2 * len(text) + 16):
        raise UnsafeInputError("the mapping's YAML aliases expand to more values than the file has characters; "
                               "write the entries out", path=path)
    return data


def load_mapping(path: str | Path | None) -> ConceptMapping:
    """Read a concept mapping file (YAML, or TOML by its ``.toml`` suffix); None gives the defaults."""
    if path is None:
        return ConceptMapping()
    path = Path(path)
    data = _read(path)
    try:
        spec = _MappingFile.model_validate({} if data is None else data)
    except ValidationError as e:
        raise _schema_error(path, e) from None
    mapping = ConceptMapping(keep_unmapped=spec.unmapped == "keep", source=path)
    for label, entry in spec.labels.items():
        mapping.labels[label] = _parse_entry(path, f"labels.{_shown_key(label)}", entry, mapping)
    for name, attribute in spec.attributes.items():
        where = f"attributes.{_shown_key(name)}"
        if attribute._drop:
            mapping.attributes[name] = _Attribute(drop=True)
            continue
        if "category" in attribute.model_fields_set:
            category = _category(path, where if attribute._plain else f"{where}.category", attribute.category, mapping)
        else:
            # Without a category the attribute's own name is the category: it must be a valid one.
            category = _category(path, where, name, mapping)
        attr = _Attribute(category=category)
        for value, entry in attribute.values.items():
            attr.values[value] = _parse_entry(path, f"{where}.values.{_shown_key(value)}", entry, mapping)
        mapping.attributes[name] = attr
    if "category" in spec.tags.model_fields_set:
        mapping.tag_category = _category(path, "tags.category", spec.tags.category, mapping)
    return mapping


@dataclass
class Inventory:
    """What an export contains, for a starter mapping: label, part, tag and attribute counts."""

    labels: Counter = field(default_factory=Counter)
    parts: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    attributes: dict[str, Counter] = field(default_factory=dict)
    #: A label's category when the source gives it one other than object/part/scene (COCO-Stuff: ``stuff``).
    categories: dict[str, str] = field(default_factory=dict)

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
        total.categories.update(inv.categories)
        for name, values in inv.attributes.items():
            total.attributes.setdefault(name, Counter()).update(values)
    lines.append("labels:")
    every = sorted(set(total.labels) | set(total.parts) | set(total.tags))
    if not every:
        lines[-1] = "labels: {}"
    for label in every:
        if label in total.categories:
            category = total.categories[label]
        elif total.tags[label] and not total.labels[label] and not total.parts[label]:
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
