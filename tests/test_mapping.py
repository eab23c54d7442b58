"""The concept mapping file: parsing, defaults, errors naming file and key, starter mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from concepts.errors import SourceError, UsageError
from concepts.mapping import Concept, LabelIds, load_mapping, starter_mapping

YAML = """
version: 1
labels:
  Person: {name: person, synonyms: [human, people]}
  ear: {category: part}
  clutter: drop
  Kitchen: {category: scene}
  tyre: wheel
attributes:
  material:
    category: material
    values:
      wood: {name: wood, synonyms: [timber]}
      unknown: drop
  wooden: material
  occluded: drop
tags:
  category: place
"""


def test_yaml_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    m = load_mapping(path)
    assert m.shape("Person") == Concept("object", ("person", "human", "people"))
    assert m.shape("ear") == Concept("part", ("ear",))
    assert m.shape("clutter") is None and m.tag("clutter") is None
    assert m.shape("tyre") == Concept("object", ("wheel",))
    assert m.shape("dog") == Concept("object", ("dog",))
    assert m.shape("dog", part=True) == Concept("part", ("dog",))
    assert m.tag("Kitchen") == Concept("scene", ("kitchen-s",))
    assert m.tag("sunny") == Concept("place", ("sunny",))
    assert m.attribute("material", "wood") == Concept("material", ("wood", "timber"))
    assert m.attribute("material", "metal") == Concept("material", ("metal",))
    assert m.attribute("material", "unknown") is None
    assert m.attribute("wooden", "true") == Concept("material", ("wooden",))
    assert m.attribute("wooden", "false") is None
    assert m.attribute("occluded", "true") is None and m.attribute("colour", "red") is None


def test_defaults_and_toml(tmp_path: Path) -> None:
    m = load_mapping(None)
    assert m.shape("Car") == Concept("object", ("Car",))
    assert m.tag("beach") == Concept("scene", ("beach-s",))
    assert m.attribute("material", "wood") is None
    path = tmp_path / "c.toml"
    path.write_text('unmapped = "drop"\n[labels.cat]\nname = "cat"\n')
    m = load_mapping(path)
    assert m.shape("cat") == Concept("object", ("cat",)) and m.shape("dog") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("labels: [a, b]\n", "labels: must be a table"),
        ("labels:\n  cat: {colour: red}\n", "labels.cat: unknown key(s) colour"),
        ("labels:\n  cat: {synonyms: 3}\n", "labels.cat.synonyms: must be a list of strings"),
        ("frobnicate: 1\n", "top level: unknown key(s) frobnicate"),
        ("unmapped: maybe\n", "unmapped: must be 'keep' or 'drop'"),
        ("labels: {a: [\n", "not valid YAML"),
        ("version: 2\n", "unsupported version 2"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SourceError) as e:
        load_mapping(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_bad_category_is_a_usage_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("labels:\n  cat: {category: 'Bad Name!'}\n")
    with pytest.raises(UsageError) as e:
        load_mapping(path)
    assert f"{path}, line 2, labels.cat.category: category name 'Bad Name!' may only use" in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_mapping(tmp_path / "nope.yaml")


def test_label_ids_are_stable() -> None:
    ids = LabelIds()
    assert ids.get(Concept("object", ("a",))) == 1
    assert ids.get(Concept("object", ("b",))) == 2
    assert ids.get(Concept("part", ("a",))) == 1
    assert ids.get(Concept("object", ("a",))) == 1
    assert ids.names == {("object", 1): ("a",), ("object", 2): ("b",), ("part", 1): ("a",)}


def test_starter_mapping_round_trips(tmp_path: Path) -> None:
    from concepts.builders.cvat import CvatBuilder
    from fake_exports import write_cvat_xml

    write_cvat_xml(tmp_path / "e" / "annotations.xml", [{"name": "a.jpg", "width": 4, "height": 4, "shapes": [
        ("polygon", {"label": "Tree; big", "points": "0,0;2,0;2,2"}, {"kind": "oak"}),
        ("polygon", {"label": "Tree; big", "points": "0,0;2,0;2,2"}, {"kind": "elm"}),
        ("tag", {"label": "park"}, {}),
    ]}])
    text = starter_mapping([CvatBuilder(tmp_path / "e")])
    assert '"Tree; big": {category: object, name: "tree, big", synonyms: []}  # 2 shapes' in text
    assert '"park": {category: scene, name: "park", synonyms: []}  # 1 tags' in text
    assert '"kind": drop  # values: elm x1, oak x1; to use: {category: kind}' in text
    path = tmp_path / "starter.yaml"
    path.write_text(text)
    m = load_mapping(path)
    assert m.shape("Tree; big") == Concept("object", ("tree, big",))
    assert m.attribute("kind", "oak") is None


def test_docs_examples_agree_and_lookups_normalise(tmp_path: Path) -> None:
    import re

    text = (Path(__file__).parents[1] / "docs" / "concept-mapping.md").read_text()
    (tmp_path / "a.yaml").write_text(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    (tmp_path / "a.toml").write_text(re.search(r"```toml\n(.*?)```", text, re.S).group(1))
    y, t = load_mapping(tmp_path / "a.yaml"), load_mapping(tmp_path / "a.toml")
    for m in (y, t):
        assert m.shape(" PERSON ") == Concept("object", ("person", "human", "pedestrian"))
        assert m.shape("tyre") == Concept("object", ("wheel",)) and m.shape("clutter") is None
        assert m.shape("galaxy") == Concept("celestial", ("galaxy",))
        assert m.tag("kitchen") == Concept("scene", ("kitchen-s", "galley-s"))
        assert m.attribute("Material", "wood") == Concept("material", ("wood", "timber"))
        assert m.attribute("material", "metal") == Concept("material", ("metal",))
        assert m.attribute("shiny", "true") == Concept("material", ("shiny",)) and m.attribute("shiny", "false") is None
    assert (y.labels, y.attributes, y.tag_category) == (t.labels, t.attributes, t.tag_category)
