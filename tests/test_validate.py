"""Every rule of `concepts validate`, on datasets written by hand (tests/synth.py) and then broken."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from concepts.cli import app
from concepts.validate import validate
from synth import SynthRow, rg, toy_dataset, write_broden


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return toy_dataset(tmp_path / "toy", n=12)


def edit_csv(path: Path, fn: Callable[[list[list[str]]], list[list[str]] | None]) -> None:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    rows = fn(rows) or rows
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def first_row(root: Path) -> dict[str, str]:
    with (root / "index.csv").open(newline="") as f:
        return next(csv.DictReader(f))


def errors(report) -> list:
    return report.errors


def only_error(report, code: str):
    """The report's errors all carry ``code``; return them."""
    errs = report.errors
    assert errs, "expected an error"
    assert {e.code for e in errs} == {code}, [str(e) for e in errs]
    return errs


def test_independent_dataset_is_valid(toy: Path) -> None:
    report = validate(toy, min_images=1)
    assert report.ok and report.errors == []
    assert report.warnings == []
    assert report.stats["images"] == 12 and report.stats["files_checked"] == 36


# --- the seven rejections the issue names ---------------------------------------------------------

def test_missing_image(toy: Path) -> None:
    image = first_row(toy)["image"]
    (toy / "images" / image).unlink()
    errs = only_error(validate(toy), "missing-file")
    assert errs[0].path == str(toy / "images" / image) and errs[0].row == 2


def test_wrong_image_size(toy: Path) -> None:
    edit_csv(toy / "index.csv", lambda rows: rows[1].__setitem__(2, "30"))
    errs = only_error(validate(toy), "size-mismatch")
    assert errs[0].path.endswith(rows_image(toy, 0)) and "ih=30" in errs[0].message


def rows_image(root: Path, k: int) -> str:
    with (root / "index.csv").open(newline="") as f:
        return list(csv.DictReader(f))[k]["image"]


def test_segmentation_of_wrong_size(toy: Path) -> None:
    png = first_row(toy)["object"]
    Image.fromarray(rg(np.full((8, 16), 3)), "RGB").save(toy / "images" / png)
    errs = only_error(validate(toy), "size-mismatch")
    assert errs[0].path == str(toy / "images" / png) and "16x8" in errs[0].message


def test_png_label_absent_from_label_csv(toy: Path) -> None:
    png = first_row(toy)["object"]
    Image.fromarray(rg(np.full((16, 16), 99)), "RGB").save(toy / "images" / png)
    errs = only_error(validate(toy), "unknown-label")
    assert errs[0].path == str(toy / "images" / png) and "99" in errs[0].message


def test_label_in_wrong_category_column(toy: Path) -> None:
    png = first_row(toy)["color"]
    layer = np.full((16, 16), 2)
    layer[0, 0] = 3  # `square` is an object label
    Image.fromarray(rg(layer), "RGB").save(toy / "images" / png)
    errs = only_error(validate(toy), "wrong-category")
    assert errs[0].path == str(toy / "images" / png)
    assert "square" in errs[0].message and "color" in errs[0].message


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_label_png(toy: Path, mode: str) -> None:
    png = first_row(toy)["object"]
    Image.fromarray(np.full((16, 16), 3, np.uint8), "L").convert(mode).save(toy / "images" / png)
    errs = only_error(validate(toy), "bad-mode")
    assert errs[0].path == str(toy / "images" / png)
    assert ("grayscale" if mode == "L" else mode) in errs[0].message


def test_index_column_missing_for_a_category(toy: Path) -> None:
    edit_csv(toy / "index.csv", lambda rows: [r[:-1] for r in rows])  # drops `scene`
    errs = only_error(validate(toy), "missing-column")
    assert errs[0].path == str(toy / "index.csv") and "'scene'" in errs[0].message


# --- tables -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["index.csv", "label.csv", "category.csv", "c_object.csv"])
def test_missing_table(toy: Path, name: str) -> None:
    (toy / name).unlink()
    errs = only_error(validate(toy), "missing-file")
    assert errs[0].path == str(toy / name)


def test_missing_images_folder_and_bad_header(tmp_path: Path, toy: Path) -> None:
    edit_csv(toy / "label.csv", lambda rows: rows[0].__setitem__(1, "title"))
    report = validate(toy)
    assert [e.code for e in report.errors] == ["bad-header"] and "name" in report.errors[0].message
    empty = tmp_path / "empty"
    empty.mkdir()
    codes = [e.code for e in validate(empty).errors]
    assert codes.count("missing-file") == 4  # images/, category.csv, label.csv, index.csv
    assert validate(tmp_path / "nowhere").errors[0].code == "missing-dataset"


def test_every_problem_is_reported_not_only_the_first(toy: Path) -> None:
    rows = list(csv.DictReader((toy / "index.csv").open(newline="")))
    for row in rows[:3]:
        (toy / "images" / row["image"]).unlink()
    Image.fromarray(rg(np.full((16, 16), 77)), "RGB").save(toy / "images" / rows[5]["object"])
    report = validate(toy)
    assert sorted(e.code for e in report.errors) == ["missing-file"] * 3 + ["unknown-label"]


def test_category_table_disagrees_with_labels(toy: Path) -> None:
    edit_csv(toy / "category.csv", lambda rows: rows[2].__setitem__(3, "3"))  # object count 2 -> 3
    errs = only_error(validate(toy), "category-mismatch")
    assert errs[0].path == str(toy / "category.csv") and errs[0].row == 3 and "count is 3" in errs[0].message


def test_code_table_rules(toy: Path) -> None:
    edit_csv(toy / "c_object.csv", lambda rows: rows[2].__setitem__(0, "5"))
    assert only_error(validate(toy), "sparse-codes")[0].path == str(toy / "c_object.csv")
    edit_csv(toy / "c_object.csv", lambda rows: rows[:2])
    assert only_error(validate(toy), "missing-code")[0].message.startswith("label(s) 4")
    edit_csv(toy / "c_object.csv", lambda rows: rows + [["2", "1", "red-c", "12", "0.781250"]])
    assert "wrong-category" in validate(toy).codes("error")
    edit_csv(toy / "c_object.csv", lambda rows: rows[:2] + [["2", "4", "circle", "12", "0.781250"]])
    assert only_error(validate(toy), "name-mismatch")[0].row == 3
    edit_csv(toy / "c_object.csv", lambda rows: rows[:2] + [["2", "4", "disc", "12", "1e-05"]])
    assert only_error(validate(toy), "bad-value")[0].row == 3


def test_label_table_rules(toy: Path) -> None:
    original = (toy / "label.csv").read_text()

    def broken(fn) -> set[str]:
        (toy / "label.csv").write_text(original)
        edit_csv(toy / "label.csv", fn)
        return validate(toy).codes("error")

    assert broken(lambda r: r[3].__setitem__(2, "")) >= {"bad-value"}
    assert broken(lambda r: r[3].__setitem__(2, "colour(8)")) >= {"unknown-category"}
    assert broken(lambda r: r[3].__setitem__(3, "9")) == {"frequency-mismatch"}
    assert broken(lambda r: r + [r[5]]) == {"duplicate-row"}
    assert broken(lambda r: r[5].__setitem__(1, "red-c")) >= {"duplicate-name"}
    assert broken(lambda r: r[5].__setitem__(0, "40000")) >= {"label-too-large"}
    assert broken(lambda r: r[5].__setitem__(4, "abc")) == {"bad-value"}


def test_index_row_rules(toy: Path) -> None:
    original = (toy / "index.csv").read_text()

    def broken(fn) -> set[str]:
        (toy / "index.csv").write_text(original)
        edit_csv(toy / "index.csv", fn)
        return validate(toy).codes("error")

    assert broken(lambda r: r + [r[1]]) == {"duplicate-row"}
    assert broken(lambda r: r[1].__setitem__(1, "")) == {"bad-value"}
    assert broken(lambda r: r[1].__setitem__(3, "wide")) == {"bad-value"}
    assert broken(lambda r: r[1].__setitem__(0, "../escape.jpg")) == {"bad-path"}
    assert broken(lambda r: r[1].__setitem__(7, "synth/img000_object.pgm")) == {"bad-path"}
    assert broken(lambda r: r[1].__setitem__(8, "12")) == {"unknown-label"}
    assert broken(lambda r: r[1].__setitem__(8, "3")) == {"wrong-category"}


def test_blue_channel_and_undecodable_files(toy: Path) -> None:
    row = first_row(toy)
    rgb = rg(np.full((16, 16), 3))
    rgb[2, 2, 2] = 1
    Image.fromarray(rgb, "RGB").save(toy / "images" / row["object"])
    (toy / "images" / row["image"]).write_bytes(b"\xff\xd8 not really a jpeg")
    report = validate(toy)
    assert {(e.code, Path(e.path).name) for e in report.errors} == {
        ("blue-channel", Path(row["object"]).name), ("undecodable", Path(row["image"]).name)}


# --- warnings: what NetDissect-Lite needs and the concept set's weak spots ---------------------------

def test_weak_spots(tmp_path: Path) -> None:
    seg = np.zeros((8, 8), np.int64)
    big = seg.copy()
    big[:4] = 1
    speck = big.copy()
    speck[7, 7] = 2  # 1/64 of one image in total
    labels = {1: ("dog", "object"), 2: ("speck", "object"), 3: ("Dogs", "object"), 4: ("wheel", "part"),
              5: ("beach-s", "scene")}
    rows = [SynthRow(f"a{i}", np.zeros((8, 8, 3), np.uint8), {"object": [speck if i == 0 else big]}) for i in range(4)]
    rows.append(SynthRow("b", np.zeros((8, 8, 3), np.uint8), {"object": [np.full((8, 8), 3)]}))
    rows.append(SynthRow("c", np.zeros((8, 8, 3), np.uint8)))  # no label at all
    rows.append(SynthRow("d", np.zeros((8, 8, 3), np.uint8), image_level={"scene": [5]}))
    root = write_broden(tmp_path / "weak", rows, labels, ["object", "part", "scene"])
    report = validate(root, min_images=3, min_area=0.02)
    assert report.ok
    found = {f.code: f for f in report.warnings}
    assert set(found) == {"rare-concept", "tiny-concept", "unlabeled-image", "near-duplicate", "unused-label",
                          "empty-category", "no-png-row"}
    assert "speck (1)" in found["rare-concept"].message and "Dogs (1)" in found["rare-concept"].message
    assert "speck" in found["tiny-concept"].message and "dog " not in found["tiny-concept"].message
    assert "Dogs / dog" in found["near-duplicate"].message
    assert "wheel (4)" in found["unused-label"].message
    assert "'part'" in found["empty-category"].message


def test_mixed_image_sizes_and_multi_category_labels(tmp_path: Path) -> None:
    part = np.full((8, 8), 2)
    part[:4] = 1  # `wheel` is also a part: the top half of each part layer
    rows = [SynthRow(f"r{i}", np.zeros((8 + 2 * (i % 2), 8, 3), np.uint8),
                     {"object": [np.ones((8, 8), np.int64)], "part": [part]}) for i in range(4)]
    root = write_broden(tmp_path / "mixed", rows, {1: ("wheel", "object"), 2: ("hub", "part")}, ["object", "part"])
    # A.5: one number, both categories in its cell. The same 4 images hold it in both categories:
    # 4 images hold the label, with 4 * 1.0 object and 4 * 0.5 part coverage.
    (root / "label.csv").write_text("number,name,category,frequency,coverage,syns\n"
                                    "1,wheel,object(4);part(4),4,6.000000,\n2,hub,part(4),4,2.000000,\n")
    (root / "category.csv").write_text("name,first,last,count,frequency\nobject,1,1,1,4\npart,1,2,2,8\n")
    (root / "c_object.csv").write_text("code,number,name,frequency,coverage\n1,1,wheel,4,4.000000\n")
    (root / "c_part.csv").write_text("code,number,name,frequency,coverage\n1,1,wheel,4,2.000000\n2,2,hub,4,2.000000\n")
    report = validate(root, min_images=1)
    assert report.ok, [str(e) for e in report.errors]
    assert {f.code for f in report.warnings} == {"mixed-sizes", "multi-category"}


def test_published_folder_validates_in_place(tmp_path: Path, toy: Path) -> None:
    from concepts.publish import publish

    hf = publish(toy, tmp_path / "hf").output
    report = validate(hf, min_images=1)
    assert report.ok and report.stats["files_checked"] == 36


# --- the command ---------------------------------------------------------------------------------

def test_cli_exit_codes_text_and_json(toy: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(toy), "--min-images", "1"])
    assert ok.exit_code == 0 and "valid: 0 error(s), 0 warning(s)" in ok.output
    (toy / "images" / first_row(toy)["image"]).unlink()
    bad = runner.invoke(app, ["validate", str(toy), "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert data["valid"] is False and data["errors"] == 1 and data["findings"][0]["code"] == "missing-file"
    text = runner.invoke(app, ["validate", str(toy)])
    assert text.exit_code == 1 and "error:" in text.output and "is missing" in text.output and "Traceback" not in text.output
    usage = runner.invoke(app, ["validate", str(toy), "--min-images", "-1"])
    assert usage.exit_code == 2
    strict = runner.invoke(app, ["validate", str(toy), "--strict"])
    assert strict.exit_code == 1


def test_info_summary(toy: Path) -> None:
    from concepts.broden.reader import open_dataset
    from concepts.info import summarize

    summary = summarize(open_dataset(toy), top=2)
    assert summary.images == 12 and summary.splits == {"train": 12} and summary.image_sizes == {"32x32": 12}
    assert [(c.name, c.labels, c.images, c.kind) for c in summary.categories] == [
        ("color", 2, 12, "pixel"), ("object", 2, 12, "pixel"), ("scene", 1, 6, "image-level")]
    assert [r["name"] for r in summary.most_frequent] == ["blue-c", "red-c"]
    assert [r["name"] for r in summary.least_frequent] == ["lab-s", "disc"]
    result = CliRunner().invoke(app, ["info", str(toy), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["labels"] == 5
    missing = CliRunner().invoke(app, ["info", str(toy / "nope")])
    assert missing.exit_code == 1 and "no such dataset folder" in missing.output
