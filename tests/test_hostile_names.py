"""Hostile names (issue 11, section 4): category and label names are checked once, where they enter.

A mapping file, the folder source's tables and a COCO export each try names that would corrupt a
dataset (a column of index.csv, the computed colour category, path and list separators, quotes,
line breaks, HTML) and label numbers the format cannot hold. Every case must end in exactly one
error line naming the file and its line or row, with nothing written and nothing changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from concepts.broden import format as fmt
from concepts.errors import DatasetFormatError, SourceError, UsageError
from concepts.mapping import Concept, LabelIds
from concepts.vocabulary import Vocabulary
from fake_exports import rgb, save_image, write_coco
from folder_source import solid, write_folder_source
from hostile import assert_no_leftovers, assert_one_error, assert_unchanged, invoke, snapshot

#: Category names that would corrupt a dataset: fixed columns, the colour category, separators,
#: quotes, a line break, HTML, upper case, a leading digit, too long.
BAD_CATEGORIES = ["image", "split", "ih", "iw", "sh", "sw", "color", "a/b", "a;b", "a,b", "a(b", 'a"b', "a'b", "a\nb",
                  "<b>x</b>", "Object", "9lives", "x" * 65, "..", "a b", ""]


def _coco(root: Path) -> Path:
    """A one-image COCO export with one label, ``dog``, painted over a 4 x 4 square."""
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
             "bbox": [0, 0, 4, 4], "iscrowd": 0}]
    write_coco(root / "annotations" / "instances_default.json", [{"id": 1, "width": 8, "height": 6, "file_name": "a.jpg"}],
               [{"id": 1, "name": "dog"}], anns)
    save_image(root / "images" / "a.jpg", rgb(6, 8))
    return root


def _refused(tmp_path: Path, args: list, *needles: str, code: int) -> None:
    before = snapshot(tmp_path)
    out = invoke(["build", "--workers", "1", *args, "-o", tmp_path / "out"])
    assert_one_error(out, *needles, code=code)
    assert not (tmp_path / "out").exists()
    assert_unchanged(before, snapshot(tmp_path))
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize("name", BAD_CATEGORIES)
def test_mapping_category_is_refused_with_file_and_line(tmp_path: Path, name: str) -> None:
    export = _coco(tmp_path / "coco")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("version: 1\nlabels:\n  dog:\n    category: " + json.dumps(name) + "\n")
    _refused(tmp_path, ["--from", f"coco={export}", "--concepts", mapping], str(mapping), "line 4", "labels.dog.category", code=2)


@pytest.mark.parametrize("name", ["image", "color", "a/b", "<i>"])
def test_toml_mapping_category_is_refused(tmp_path: Path, name: str) -> None:
    export = _coco(tmp_path / "coco")
    mapping = tmp_path / "m.toml"
    mapping.write_text("version = 1\n\n[labels.dog]\ncategory = " + json.dumps(name) + "\n")
    _refused(tmp_path, ["--from", f"coco={export}", "--concepts", mapping], str(mapping), "line 4", code=2)


@pytest.mark.parametrize(("text", "where"), [
    ("tags:\n  category: split\n", "tags.category"),
    ("attributes:\n  colour: image\n", "attributes.colour"),
    # Without a category an attribute's own name is the category, so it must be one.
    ("attributes:\n  Is Truncated:\n    values: {yes: truncated}\n", "attributes.Is Truncated"),
    ("attributes:\n  colour:\n    values:\n      red: {category: ih}\n", "attributes.colour.values.red.category"),
])
def test_every_category_a_mapping_names_is_checked(tmp_path: Path, text: str, where: str) -> None:
    export = _coco(tmp_path / "coco")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(text)
    _refused(tmp_path, ["--from", f"coco={export}", "--concepts", mapping], str(mapping), where, code=2)


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "nul\x00", "esc\x1b[31m", " padded", "x" * 257, "\u2028"])
def test_mapping_label_name_is_refused(tmp_path: Path, name: str) -> None:
    export = _coco(tmp_path / "coco")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("labels:\n  dog: {category: object, name: " + json.dumps(name) + "}\n")
    _refused(tmp_path, ["--from", f"coco={export}", "--concepts", mapping], str(mapping), "line 2", "labels.dog.name", code=2)


def test_color_category_is_allowed_without_computed_colour(tmp_path: Path) -> None:
    export = _coco(tmp_path / "coco")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("labels:\n  dog: {category: color}\n")
    out = invoke(["build", "--workers", "1", "--from", f"coco={export}", "--concepts", mapping, "--no-color", "-o", tmp_path / "out"])
    assert out.code == 0, out.stderr
    assert (tmp_path / "out" / "category.csv").read_text().splitlines()[1].startswith("color,1,1,1,")


def test_awkward_but_valid_label_names_round_trip(tmp_path: Path) -> None:
    """Label names are free text: commas, quotes, slashes and HTML survive the tables unchanged."""
    from concepts.broden.reader import open_dataset

    names = ['chest of drawers', 'car, auto', "o'clock", 'a/b\\c', '<b>bold</b>', 'naïve café']
    labels = {("object", i + 1): [n] for i, n in enumerate(names)}
    ids = np.zeros((6, 8), np.uint8)
    for i in range(len(names)):
        ids[i, :] = i + 1
    root = write_folder_source(tmp_path / "src", {"a.png": solid(6, 8, (10, 200, 30))}, {"object": {"a.png": ids}}, labels)
    out = invoke(["build", "--workers", "1", "--from", f"folder={root}", "--no-color", "--no-synonyms", "-o", tmp_path / "out"])
    assert out.code == 0, out.stderr
    assert sorted(open_dataset(tmp_path / "out").label_names()[1:]) == sorted(names)


@pytest.mark.parametrize("name", BAD_CATEGORIES)
def test_folder_category_is_refused_with_row(tmp_path: Path, name: str) -> None:
    root = write_folder_source(tmp_path / "src", {"a.png": solid(4, 4, (200, 0, 0))}, {}, {("object", 1): ["dog"]})
    (root / "labels.csv").write_text("category,id,names\nobject,1,dog\n" + _csv_cell(name) + ",2,cat\n")
    _refused(tmp_path, ["--from", f"folder={root}"], str(root / "labels.csv"), "row 3", code=1)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def test_folder_tag_category_and_names_are_checked(tmp_path: Path) -> None:
    root = write_folder_source(tmp_path / "src", {"a.png": solid(4, 4, (200, 0, 0))}, {}, {("scene", 1): ["park"]},
                               tags=[("a.png", "scene", "park")])
    (root / "tags.csv").write_text("image,category,name\na.png,scene,park\na.png,ih,beach\n")
    _refused(tmp_path, ["--from", f"folder={root}"], str(root / "tags.csv"), "row 3", "'ih' is reserved", code=1)
    (root / "tags.csv").write_text('image,category,name\na.png,scene,"line\nbreak"\n')
    _refused(tmp_path, ["--from", f"folder={root}"], str(root / "tags.csv"), "U+000A", code=1)


def test_folder_label_name_with_control_character_is_refused(tmp_path: Path) -> None:
    root = write_folder_source(tmp_path / "src", {"a.png": solid(4, 4, (200, 0, 0))}, {}, {("object", 1): ["dog"]})
    (root / "labels.csv").write_text("category,id,names\nobject,1,do\x07g\n")
    _refused(tmp_path, ["--from", f"folder={root}"], str(root / "labels.csv"), "row 2", "U+0007", code=1)


def test_folder_category_color_clashes_only_with_computed_colour(tmp_path: Path) -> None:
    ids = np.ones((4, 4), np.uint8)
    root = write_folder_source(tmp_path / "src", {"a.png": solid(4, 4, (200, 0, 0))}, {"color": {"a.png": ids}},
                               {("color", 1): ["crimson"]})
    _refused(tmp_path, ["--from", f"folder={root}"], str(root / "labels.csv"), "row 2", "computed colour", code=1)
    out = invoke(["build", "--workers", "1", "--from", f"folder={root}", "--no-color", "-o", tmp_path / "out"])
    assert out.code == 0, out.stderr


def test_coco_category_name_with_newline_is_refused(tmp_path: Path) -> None:
    export = _coco(tmp_path / "coco")
    path = export / "annotations" / "instances_default.json"
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "dog\nINJECTED,row"
    path.write_text(json.dumps(data))
    _refused(tmp_path, ["--from", f"coco={export}"], str(path), "categories[0].name", code=1)


@pytest.mark.parametrize("ident", ["70000", "100000000000000000000000", "-3", "1e3", "²"])
def test_folder_ids_the_format_cannot_hold_are_refused(tmp_path: Path, ident: str) -> None:
    root = write_folder_source(tmp_path / "src", {"a.png": solid(4, 4, (200, 0, 0))}, {}, {("object", 1): ["dog"]})
    (root / "labels.csv").write_text(f"category,id,names\nobject,1,dog\nobject,{ident},cat\n")
    _refused(tmp_path, ["--from", f"folder={root}"], str(root / "labels.csv"), "row 3", code=1)


def test_a_65536th_label_in_one_category_is_refused_not_wrapped() -> None:
    """Label layers hold 16-bit ids: the 65,536th id used to wrap to 0 and the next to 1."""
    ids = LabelIds("export")
    for i in range(fmt.MAX_RG):
        assert ids.get(Concept("object", (f"l{i}",))) == i + 1
    with pytest.raises(SourceError, match="more than 65,535 distinct labels in category 'object'"):
        ids.get(Concept("object", ("one too many",)))
    assert ids.get(Concept("part", ("fine",))) == 1


def test_more_labels_than_lite_reads_is_one_usage_error() -> None:
    vocab = Vocabulary(synonyms=False)
    for i in range(fmt.MAX_LABEL + 1):
        vocab.add(("s", "object", i + 1), (f"l{i}",), 1, 0.1)
    with pytest.raises(UsageError) as e:
        vocab.resolve()
    assert "32,768 labels survive the filters; the format holds at most 32,767" in str(e.value)
    assert "\n" not in str(e.value)


def test_check_functions_take_the_callers_error_class(tmp_path: Path) -> None:
    table = tmp_path / "category.csv"
    with pytest.raises(DatasetFormatError) as e:
        fmt.check_category_name("a/b", path=table, row=3, error=DatasetFormatError)
    assert str(e.value).startswith(f"{table}, row 3: category name 'a/b'")
    assert fmt.check_category_name("color", path=table) == "color"  # a dataset's own colour category
    with pytest.raises(DatasetFormatError, match="row 7: label name 'x\\\\ny'"):
        fmt.check_label_name("x\ny", path=table, row=7, error=DatasetFormatError)
    assert fmt.check_label_name("red-c", path=table) == "red-c"


@pytest.mark.parametrize(("suffix", "text", "needle"), [
    (".yaml", "labels: " + "[" * 100000, "m.yaml"),
    (".toml", "labels = " + "[" * 100000, "m.toml"),
    (".json", '{"labels": ' + "[" * 100000, "m.json"),
    # A billion laughs: nine aliases of nine aliases ... refused before anything walks the expansion.
    (".yaml", "version: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)) + "]\n", "aliases"),
    (".yaml", "labels:\n  dog: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    (".yaml", b"labels:\n  dog: caf\xe9\n", "cannot read concept mapping"),
])
def test_hostile_mapping_files_are_one_line(tmp_path: Path, suffix: str, text, needle: str) -> None:
    export = _coco(tmp_path / "coco")
    mapping = tmp_path / f"m{suffix}"
    mapping.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(tmp_path)
    out = invoke(["build", "--workers", "1", "--from", f"coco={export}", "--concepts", mapping, "-o", tmp_path / "out"])
    line = assert_one_error(out, str(mapping), needle)
    assert len(line) < 1000
    assert_unchanged(before, snapshot(tmp_path))
    assert not (tmp_path / "out").exists()
