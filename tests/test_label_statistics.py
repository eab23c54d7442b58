"""Label statistics count images: builds whose answer is known by construction, their recount by
`concepts validate`, validate's row messages, `concepts info` lists and the missing-images error."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from concepts import open_dataset
from concepts.builders.dtd import DtdBuilder
from concepts.builders.folder import FolderBuilder
from concepts.builders.pascal import PascalBuilder
from concepts.cli import app
from concepts.errors import SourceError, UsageError
from concepts.info import DatasetSummary, summarize
from concepts.unify import BuildOptions, build_dataset
from concepts.validate import format_report, validate
from fake_sources import PartObject, PascalImage, photo, write_dtd, write_pascal
from folder_source import solid, write_folder_source
from hostile import assert_one_error, invoke
from synth import toy_dataset

RED = (255, 0, 0)
SIDE = 12


def table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def rewrite(path: Path, fn) -> None:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    fn(rows)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def build(sources, out: Path, **kw) -> Path:
    kw.setdefault("workers", 1)
    kw.setdefault("color", False)
    build_dataset(sources, out, BuildOptions(**kw))
    return out


def heads_source(root: Path, both: int, only_dog: int, tails: int) -> Path:
    """Pascal-Part's case planted: object ids 1 and 2 are both only "head" (a person's and a dog's).

    The first ``both`` images hold the two heads (rows 0-2 and 6-8 of a 12 x 12 mask: 36 pixels
    each), the next ``only_dog`` only the dog's head; the first ``tails`` images hold a "tail" (row 11).
    """
    images, masks = {}, {}
    for i in range(max(both + only_dog, tails)):
        m = np.zeros((SIDE, SIDE), np.uint8)
        if i < both:
            m[0:3] = 1
        if i < both + only_dog:
            m[6:9] = 2
        if i < tails:
            m[11] = 3
        images[f"im{i}.jpg"] = solid(SIDE, SIDE, RED)
        masks[f"im{i}.jpg"] = m
    return write_folder_source(root, images, {"object": masks},
                               {("object", 1): ["head"], ("object", 2): ["head"], ("object", 3): ["tail"]})


def labels_by_name(root: Path) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in table(root / "label.csv")}


# -- the builder counts images ------------------------------------------------------------------------

def test_merged_source_labels_count_each_image_once(tmp_path: Path) -> None:
    out = build([FolderBuilder(heads_source(tmp_path / "src", both=3, only_dog=1, tails=0))], tmp_path / "out")
    head = labels_by_name(out)["head"]
    # 4 images hold a head; 3 of them hold two source labels named head (36 + 36 pixels of 144).
    assert (head["category"], head["frequency"]) == ("object(4)", "4")
    assert float(head["coverage"]) == pytest.approx(3 * 72 / 144 + 36 / 144)
    assert [(r["name"], r["frequency"]) for r in table(out / "c_object.csv")] == [("head", "4")]
    assert table(out / "category.csv")[0]["frequency"] == "4"
    # syns.txt still reports each source label's own frequency (the name claiming's input).
    assert "folder/object#2: 4" in (out / "syns.txt").read_text() and "folder/object#1: 3" in (out / "syns.txt").read_text()
    ds = open_dataset(out)
    number = next(n for n, lab in ds.labels.items() if lab.name == "head")
    assert sum(number in ds.load_labels(s, "object") for s in ds) == 4
    assert validate(out, min_images=1).codes() == set()


def test_pascal_part_heads_of_a_person_and_a_cat_are_one_head_image(tmp_path: Path) -> None:
    h, w = 16, 24
    person, cat = np.zeros((h, w), bool), np.zeros((h, w), bool)
    person[:, :12] = True
    cat[:, 12:] = True
    person_head, cat_head = np.zeros((h, w), bool), np.zeros((h, w), bool)
    person_head[0:4, 0:6] = True  # 24 pixels
    cat_head[0:2, 12:24] = True  # 24 pixels
    objects = [PartObject("person", person, [("head", person_head)]), PartObject("cat", cat, [("head", cat_head)])]
    root = write_pascal(tmp_path / "pascal", [PascalImage(f"2008_00000{i}", photo(h, w, i), None, objects) for i in (1, 2)])
    out = build([PascalBuilder(root)], tmp_path / "out")
    head = labels_by_name(out)["head"]
    assert (head["category"], head["frequency"]) == ("part(2)", "2")
    assert float(head["coverage"]) == pytest.approx(2 * 48 / (h * w), abs=1e-6)
    assert not validate(out, min_images=1).codes() & {"frequency-recount", "coverage-recount"}


def test_min_frequency_filters_on_image_counts(tmp_path: Path) -> None:
    # head: 3 images (6 source-label incidences, which the old count took for 6 images); tail: 4 images.
    src = heads_source(tmp_path / "src", both=3, only_dog=0, tails=4)
    out = build([FolderBuilder(src)], tmp_path / "out", min_frequency=4)
    assert list(labels_by_name(out)) == ["tail"]
    kept = build([FolderBuilder(src)], tmp_path / "kept", min_frequency=3)
    assert [(n, r["frequency"]) for n, r in labels_by_name(kept).items()] == [("tail", "4"), ("head", "3")]


def test_a_label_in_two_categories_of_one_image_is_one_image(tmp_path: Path) -> None:
    part = np.zeros((SIDE, SIDE), np.uint8)
    part[:6] = 1
    obj = np.zeros((SIDE, SIDE), np.uint8)
    obj[6:] = 1
    src = write_folder_source(tmp_path / "src", {f"{i}.jpg": solid(SIDE, SIDE, RED) for i in range(2)},
                              {"object": {f"{i}.jpg": obj for i in range(2)}, "part": {f"{i}.jpg": part for i in range(2)}},
                              {("object", 1): ["wheel"], ("part", 1): ["wheel"]})
    out = build([FolderBuilder(src)], tmp_path / "out")
    wheel = labels_by_name(out)["wheel"]
    assert (wheel["category"], wheel["frequency"], wheel["coverage"]) == ("object(2);part(2)", "2", "2.000000")
    assert validate(out, min_images=1).codes("error") == set()
    assert "frequency-recount" not in validate(out, min_images=1).codes()


def test_resized_build_with_colour_and_scenes_recounts_exactly(tmp_path: Path) -> None:
    src = heads_source(tmp_path / "src", both=2, only_dog=2, tails=3)
    with (src / "tags.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "category", "name"], ["im0.jpg", "scene", "beach"], ["im1.jpg", "scene", "beach"]])
    out = build([FolderBuilder(src)], tmp_path / "out", size=(10, 7), color=True)
    report = validate(out, min_images=1)
    assert report.stats["statistics_recounted"] is True
    assert not report.codes() & {"frequency-recount", "coverage-recount", "recount-skipped"}, [str(f) for f in report.findings]


# -- validate recounts ---------------------------------------------------------------------------------

def test_validate_flags_a_tampered_label_table(tmp_path: Path) -> None:
    root = toy_dataset(tmp_path / "toy", n=6)
    square = next(i for i, r in enumerate(table(root / "label.csv"), start=2) if r["name"] == "square")

    def tamper(rows: list[list[str]]) -> None:
        row = rows[square - 1]
        told = int(row[3])
        row[2], row[3], row[4] = f"object({told + 3})", str(told + 3), "9.500000"

    rewrite(root / "label.csv", tamper)
    rewrite(root / "c_object.csv", lambda rows: [r.__setitem__(3, str(int(r[3]) + 3)) for r in rows[1:] if r[2] == "square"])
    rewrite(root / "category.csv", lambda rows: [r.__setitem__(4, str(int(r[4]) + 3)) for r in rows[1:] if r[0] == "object"])
    report = validate(root, min_images=1)
    assert report.ok, [str(f) for f in report.errors]
    found = {f.code: f for f in report.warnings}
    freq, cov = found["frequency-recount"], found["coverage-recount"]
    assert freq.path == str(root / "label.csv") and freq.row == square and cov.row == square
    assert "label 3 (square): object(9) but 6 image(s) hold it in object; frequency 9 but 6 image(s) hold it" in freq.message
    assert "coverage 9.500000 but its pixels in the images add up to" in cov.message
    lines: list[str] = []
    format_report(report, echo=lines.append)
    assert any(line.startswith(f"warning: {root / 'label.csv'}, row {square}: label 3 (square)") for line in lines)


def test_frequency_must_fit_the_category_cell(tmp_path: Path) -> None:
    root = toy_dataset(tmp_path / "toy", n=4)
    rewrite(root / "label.csv", lambda rows: rows[1].__setitem__(3, str(int(rows[1][3]) + 1)))
    errors = validate(root, min_images=1).errors
    assert [e.code for e in errors] == ["frequency-mismatch"] and "at most" in errors[0].message


# -- validate's row messages name the image --------------------------------------------------------------

def test_row_messages_name_the_image(tmp_path: Path) -> None:
    root = toy_dataset(tmp_path / "toy", n=4)
    rows = table(root / "index.csv")
    rewrite(root / "index.csv", lambda r: r[2].__setitem__(1, ""))  # row 3: empty split
    (root / "images" / rows[2]["object"]).unlink()  # row 4: a missing label PNG
    report = validate(root, min_images=1)
    split = next(f for f in report.errors if f.code == "bad-value")
    assert str(split) == f"{root / 'index.csv'}, row 3 ({rows[1]['image']}): split is empty"
    png = next(f for f in report.errors if f.code == "missing-file")
    assert str(png).startswith(f"{root / 'images' / rows[2]['object']}, row 4 ({rows[2]['image']}): ")
    assert report.to_dict()["findings"][0]["image"] in {rows[1]["image"], rows[2]["image"]}


# -- info never cuts a list silently ----------------------------------------------------------------------

def test_info_says_how_much_of_a_list_it_shows(tmp_path: Path) -> None:
    summary = DatasetSummary(dataset="d", images=9, splits={"train": 9},
                             image_sizes={f"{w}x8": 1 for w in range(1, 10)}, segmentation_sizes={"4x4": 9}, labels=30,
                             most_frequent=[{}] * 10, least_frequent=[{}] * 10)
    header = summary.header_lines()
    assert header[2] == "images:   1x8 (1), 2x8 (1), 3x8 (1), 4x8 (1), ... and 5 more"
    assert header[3] == "labels:   4x4 (9)"
    assert summary.table_title("most") == "most frequent concepts (10 of 30)"
    toy = summarize(open_dataset(toy_dataset(tmp_path / "toy", n=4)), top=10)
    assert toy.table_title("most") == "most frequent concepts"  # all 5 labels are shown


# -- missing images --------------------------------------------------------------------------------------

def dtd_source(root: Path, n: int) -> Path:
    return write_dtd(root, [(f"banded/banded_{i:04d}.jpg", ["banded"], photo(8, 8, i)) for i in range(n)])


def test_every_image_missing_says_so_and_where(tmp_path: Path) -> None:
    base = dtd_source(tmp_path / "src", 3)
    for jpeg in (base / "images" / "banded").iterdir():  # the class folder stays, as after a failed download
        jpeg.unlink()
    with pytest.raises(SourceError) as e:
        build([DtdBuilder(base)], tmp_path / "out")
    text = str(e.value)
    assert "3 of 3 item(s) were skipped because their image is missing" in text
    assert f"looked for in {base / 'images' / 'banded'}" in text and "--min-frequency" not in text
    out = invoke(["build", "--workers", "1", "--from", f"dtd={base}", "-o", tmp_path / "cli"])
    assert_one_error(out, "image is missing", str(base / "images" / "banded"), code=1)


def test_most_images_missing_is_named_before_the_filters(tmp_path: Path) -> None:
    base = dtd_source(tmp_path / "src", 4)
    for i in range(3):
        (base / "images" / "banded" / f"banded_{i:04d}.jpg").unlink()
    with pytest.raises(SourceError, match="3 of 4 item"):
        build([DtdBuilder(base)], tmp_path / "out", min_frequency=5)
    # With the images there, the same filter is what leaves nothing.
    with pytest.raises(UsageError, match="min-frequency"):
        build([DtdBuilder(dtd_source(tmp_path / "all", 4))], tmp_path / "out2", min_frequency=5)


def test_json_report_carries_the_image(tmp_path: Path) -> None:
    root = toy_dataset(tmp_path / "toy", n=3)
    rewrite(root / "index.csv", lambda r: r[1].__setitem__(1, ""))
    result = CliRunner().invoke(app, ["validate", str(root)])
    image = table(root / "index.csv")[0]["image"]
    assert result.exit_code == 1 and f"row 2 ({image}): split is empty" in result.output
