"""The mapping file's schema (pydantic): one-line messages naming file, line and key; strict types; aliases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from concepts.errors import SourceError, UnsafeInputError, UsageError
from concepts.mapping import Concept, load_mapping
from hostile import assert_one_error, invoke


def _error(tmp_path: Path, text: str, suffix: str = ".yaml") -> str:
    path = tmp_path / f"m{suffix}"
    path.write_text(text)
    with pytest.raises(SourceError) as e:
        load_mapping(path)
    message = str(e.value)
    # pydantic's own multi-line report never reaches the user.
    assert "\n" not in message and "validation error" not in message and "pydantic" not in message
    assert message.startswith(f"{path}, ") or message.startswith(f"{path}: ")
    return message[len(str(path)):]


@pytest.mark.parametrize(("text", "expected"), [
    ("labels:\n  cat: {synonyms: 3}\n", ", line 2: labels.cat.synonyms: must be a list of strings, got 3"),
    # The element's position is named; its line is the list's.
    ("labels:\n  dog: drop\n  cat:\n    synonyms:\n      - a\n      - 3\n", ", line 4: labels.cat.synonyms[1]: must be a string, got 3"),
    ("labels:\n  cat: {name: 3}\n", ", line 2: labels.cat.name: must be a string, got 3"),
    ("labels:\n  cat: 3.5\n", ", line 2: labels.cat: must be a table (category/name/synonyms), 'drop' or a name, got 3.5"),
    ("labels:\n  cat: {drop: 1}\n", ", line 2: labels.cat.drop: must be true or false, got 1"),
    ("version: '1'\n", ", line 1: version: must be an integer, got '1'"),
    ("version: 7\n", ", line 1: version: unsupported version 7 (this program reads version 1)"),
    ("unmapped: maybe\n", ", line 1: unmapped: must be 'keep' or 'drop', got 'maybe'"),
    ("[1, 2]\n", ": top level: must be a table with labels/attributes/tags, got [1, 2]"),
    ("tags: {category: x, other: 1, more: 2}\n", ", line 1: tags: unknown key(s) more, other; allowed: category"),
    ("attributes:\n  a: {category: x, vals: {}}\n", ", line 2: attributes.a: unknown key(s) vals; allowed: category, values"),
    ("attributes:\n  a:\n    values: [x]\n", ", line 3: attributes.a.values: must be a table of value: entry, got ['x']"),
    ("attributes:\n  a:\n    values:\n      v: {nme: x}\n", ", line 4: attributes.a.values.v: unknown key(s) nme; allowed: category, drop, name, synonyms"),
])
def test_schema_errors_are_one_line_with_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


def test_toml_schema_error_names_the_line(tmp_path: Path) -> None:
    assert _error(tmp_path, 'version = 1\n\n[labels.cat]\nsynonyms = 3\n', ".toml").startswith(
        ", line 4: labels.cat.synonyms: must be a list of strings, got 3")


def test_accepted_short_forms(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("labels:\n  1: {category: part}\n  a: drop\n  b: null\n  c: false\n  d: {drop: true}\n  e: {synonyms: one}\n"
                    "  f: renamed\nattributes:\n  x: drop\n  y: material\n  z: {values: null}\ntags: null\n")
    m = load_mapping(path)
    assert m.shape("1") == Concept("part", ("1",))  # YAML reads `1:` as a number; labels are text
    assert [m.shape(x) for x in "abcd"] == [None] * 4
    assert m.shape("e") == Concept("object", ("one",)) and m.shape("f") == Concept("object", ("renamed",))
    assert m.attribute("x", "v") is None and m.attribute("y", "true") == Concept("material", ("y",))
    assert m.attribute("z", "v") == Concept("z", ("v",)) and m.tag("t") == Concept("scene", ("t-s",))


def test_explicit_null_category_is_refused_as_a_name(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("labels:\n  cat: {category: null}\n")
    with pytest.raises(UsageError, match=r"line 2, labels.cat.category: category name None is not text"):
        load_mapping(path)


def _laughs(n: int) -> str:
    """Attributes, each of n values, each of n synonyms, through aliases: n**3 names from about 45 n characters."""
    values = "&v {" + ", ".join(f"v{i}: *s" for i in range(n)) + "}"
    return ("labels:\n  _s: &s {synonyms: [" + ", ".join(["w"] * n) + "]}\nattributes:\n  a0: {category: m, values: " + values
            + "}\n" + "".join(f"  a{i}: {{category: m, values: *v}}\n" for i in range(1, n)))


# Without the check the first takes over 10 s (3.4 million names checked) and grows as n**3.
@pytest.mark.parametrize("text", [_laughs(150), "labels: &x {a: [*x]}\n"])
def test_alias_expansion_is_refused_quickly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    start = time.monotonic()
    with pytest.raises(UnsafeInputError) as e:
        load_mapping(path)
    assert time.monotonic() - start < 3
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: ") and "aliases" in str(e.value)


def test_a_large_written_out_mapping_is_not_mistaken_for_aliases(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("labels:\n" + "".join(f"  l{i}: {{}}\n  m{i}: {{synonyms: [a, b]}}\n  n{i}:\n" for i in range(2000)))
    assert load_mapping(path).shape("m7") == Concept("object", ("a", "b"))


def test_schema_error_through_the_cli_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("labels:\n  cat: {synonyms: [a, 3]}\n")
    (tmp_path / "export").mkdir()
    out = invoke(["build", "--workers", "1", "--from", f"coco={tmp_path / 'export'}", "--concepts", path, "-o", tmp_path / "out"])
    assert_one_error(out, str(path), "line 2", "labels.cat.synonyms[1]: must be a string")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "error", "needle"), [
    ('labels:\n  "a\\nb": {synonyms: 3}\n', SourceError, "labels.'a\\nb'.synonyms: must be a list of strings"),
    ('labels:\n  "a\\nb": {name: " x"}\n', UsageError, "labels.'a\\nb'.name: label name ' x' starts or ends"),
    ('tags: {"\\u2028": 1}\n', SourceError, "tags: unknown key(s) '\\u2028'; allowed: category"),
    ('attributes:\n  "x\\ry": {values: {"v\\n": 3}}\n', SourceError, "attributes.'x\\ry'.values.'v\\n': must be a table"),
    ("labels:\n  " + "k" * 1000 + ": 3\n", SourceError, "labels.'kkkkk"),
])
def test_keys_that_would_break_the_line_are_quoted(tmp_path: Path, text: str, error: type, needle: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(error) as e:
        load_mapping(path)
    message = str(e.value)
    assert needle in message and message.isprintable() and len(message) < 600
