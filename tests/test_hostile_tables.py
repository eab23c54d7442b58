"""Issue 11 sections 3, 5, 6 and 7 for concept datasets: hostile tables and files in a Broden folder.

Every case plants one bad thing in an otherwise valid tiny dataset (tests/synth.py, written
independently of the code under test) and checks both readers of a dataset:

* ``concepts info`` (through :mod:`concepts.broden.reader`, which dissect and publish share):
  exit 1, exactly one ``error:`` line naming the file (and row), no traceback;
* ``concepts validate``: exit 1 with the expected rule reported as an ERROR (not a warning, not
  a pass), no traceback, and nothing from outside the dataset read.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hostile import SECRET, assert_one_error, assert_unchanged, invoke, snapshot
from PIL import Image
from synth import toy_dataset, write_png16_rgb

from concepts.broden.reader import open_dataset
from concepts.errors import DatasetFormatError
from concepts.validate import validate


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return toy_dataset(tmp_path / "ds", n=4)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def _set_cell(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell; ``row`` counts as a spreadsheet does (the header is row 1)."""
    rows = _rows(path)
    rows[row - 1][rows[0].index(column)] = value
    _write_rows(path, rows)


def _info_fails(ds: Path, *needles: str) -> str:
    before = snapshot(ds)
    out = invoke(["info", ds])
    line = assert_one_error(out, *needles, code=1)
    assert_unchanged(before, snapshot(ds))
    return line


def _validate_errors(ds: Path) -> dict[str, list[str]]:
    """Run ``concepts validate --json``: it must exit 1 without a traceback; return error messages by rule."""
    out = invoke(["validate", ds, "--json"])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.code == 1, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    errors: dict[str, list[str]] = {}
    for f in report["findings"]:
        if f["severity"] == "error":
            errors.setdefault(f["code"], []).append(f"{f['path']}: {f['message']}")
    assert SECRET not in out.stdout + out.stderr
    return errors


def _secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.txt"
    secret.write_text(SECRET)
    return secret


# -- section 7: validate catches what would mislead a dissection --------------------------------------


def test_bom_in_every_table_is_read(ds: Path) -> None:
    for name in ("index.csv", "label.csv", "category.csv", "c_object.csv"):
        (ds / name).write_bytes(b"\xef\xbb\xbf" + (ds / name).read_bytes())
    report = validate(ds)
    assert report.ok, [str(f) for f in report.errors]
    assert invoke(["info", ds]).code == 0
    assert open_dataset(ds).category_names == ["color", "object", "scene"]


def test_16_bit_rgb_label_png_is_an_error(ds: Path) -> None:
    png = sorted((ds / "images" / "synth").glob("*_object.png"))[0]
    rgb = np.asarray(Image.open(png)).astype(np.int64)
    write_png16_rgb(png, rgb[..., 0] + 256 * rgb[..., 1])
    # Pillow reads such a file as 8-bit RGB of all zeros: the planted label 3 would vanish.
    assert not np.asarray(Image.open(png)).any()
    errors = _validate_errors(ds)
    assert any(png.name in m and "16 bits" in m for m in errors["bad-mode"]), errors
    with pytest.raises(DatasetFormatError, match="16 bits per channel"):
        open_dataset(ds).load_png(f"synth/{png.name}")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-0.5", "1e400"])
def test_non_finite_or_negative_coverage_is_an_error(ds: Path, value: str) -> None:
    _set_cell(ds / "label.csv", 3, "coverage", value)
    errors = _validate_errors(ds)
    assert any("label.csv" in m and "coverage" in m for m in errors["bad-value"]), errors
    _info_fails(ds, "label.csv", "row 3", "coverage")


@pytest.mark.parametrize("name", ["Object", "a b", "image", "x;y", "sky/../../victim"])
def test_invalid_category_name_is_an_error(ds: Path, name: str) -> None:
    rows = _rows(ds / "category.csv")
    rows.append([name, "3", "4", "2", "1"])
    _write_rows(ds / "category.csv", rows)
    errors = _validate_errors(ds)
    assert any("category.csv" in m and name in m for m in errors["bad-name"]), errors
    _info_fails(ds, "category.csv", "row 5", "category name")


def test_category_name_with_slash_never_reads_outside(tmp_path: Path, ds: Path) -> None:
    # c_<name>.csv for name "x/../../victim" is ds/c_x/../../victim.csv = tmp_path/victim.csv.
    (ds / "c_x").mkdir()
    victim = tmp_path / "victim.csv"
    victim.write_text(f"code,number,name,frequency,coverage\n1,3,{SECRET},1,0.5\n")
    rows = _rows(ds / "category.csv")
    rows.append(["x/../../victim", "3", "3", "1", "1"])
    _write_rows(ds / "category.csv", rows)
    errors = _validate_errors(ds)  # asserts the planted content is not in the output
    assert "bad-name" in errors
    line = _info_fails(ds, "category.csv", "row 5")
    assert SECRET not in line


def test_symlinked_image_out_of_the_dataset(tmp_path: Path, ds: Path) -> None:
    secret = _secret(tmp_path)
    image = sorted((ds / "images" / "synth").glob("*.jpg"))[0]
    image.unlink()
    image.symlink_to(secret)
    errors = _validate_errors(ds)
    assert any(image.name in m for m in errors["symlink-outside"]), errors
    data = open_dataset(ds)
    sample = next(s for s in data if s.image == f"synth/{image.name}")
    with pytest.raises(DatasetFormatError, match="outside the dataset"):
        data.load_image(sample)


def test_symlinked_images_folder_out_of_the_dataset(tmp_path: Path, ds: Path) -> None:
    outside = tmp_path / "elsewhere"
    (ds / "images" / "synth").rename(outside)
    (ds / "images" / "synth").symlink_to(outside, target_is_directory=True)
    errors = _validate_errors(ds)
    assert "symlink-outside" in errors
    data = open_dataset(ds)
    with pytest.raises(DatasetFormatError, match="outside the dataset"):
        data.load_labels(data[0], "object")


def test_symlinked_label_png_out_of_the_dataset(tmp_path: Path, ds: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    png = sorted((ds / "images" / "synth").glob("*_object.png"))[0]
    target = outside / png.name
    png.rename(target)
    png.symlink_to(target)
    errors = _validate_errors(ds)
    assert any(png.name in m for m in errors["symlink-outside"]), errors
    with pytest.raises(DatasetFormatError, match="outside the dataset"):
        open_dataset(ds).load_png(f"synth/{png.name}")


def test_symlinked_table_out_of_the_dataset(tmp_path: Path, ds: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ds / "label.csv").rename(outside / "label.csv")
    (ds / "label.csv").symlink_to(outside / "label.csv")
    errors = _validate_errors(ds)
    assert any("label.csv" in m for m in errors["symlink-outside"]), errors
    _info_fails(ds, "label.csv", "outside the dataset")


def test_symlink_inside_the_dataset_is_fine(ds: Path) -> None:
    image = sorted((ds / "images" / "synth").glob("*.jpg"))[0]
    copy = ds / "images" / "store.jpg"
    image.rename(copy)
    image.symlink_to(os.path.relpath(copy, image.parent))
    assert "symlink-outside" not in validate(ds).codes()
    data = open_dataset(ds)
    assert data.load_image(next(s for s in data if s.image == f"synth/{image.name}")).shape == (32, 32, 3)


# -- section 6: one line, never a traceback ---------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "٣٢", "1_6", "16.0", "inf", "1e400", "-16", ""])
def test_bad_number_in_index_size(ds: Path, value: str) -> None:
    _set_cell(ds / "index.csv", 3, "sh", value)
    errors = _validate_errors(ds)
    assert any("index.csv" in m and "sh" in m for m in errors["bad-value"]), errors
    _info_fails(ds, "index.csv", "row 3", "sh")


@pytest.mark.parametrize("value", ["²", "٣", "100000000000000000000000", "65536"])
def test_bad_label_number_in_index_cell(ds: Path, value: str) -> None:
    _set_cell(ds / "index.csv", 2, "scene", value)
    assert not validate(ds).ok
    _validate_errors(ds)
    _info_fails(ds, "index.csv", "row 2", "scene cell")


@pytest.mark.parametrize("value", ["100000000000000000000000", "65536", "³", "-1"])
def test_bad_label_number_in_label_csv(ds: Path, value: str) -> None:
    _set_cell(ds / "label.csv", 2, "number", value)
    errors = _validate_errors(ds)
    assert "label-too-large" in errors or "bad-value" in errors, errors
    _info_fails(ds, "label.csv", "row 2", "number")


def test_field_longer_than_the_csv_limit(ds: Path) -> None:
    _set_cell(ds / "index.csv", 2, "object", "a" * 140_000)
    errors = _validate_errors(ds)
    assert any("field larger than field limit" in m for m in errors["bad-csv"]), errors
    _info_fails(ds, "index.csv", "field larger than field limit")


def test_nul_byte_in_a_path_cell(ds: Path) -> None:
    _set_cell(ds / "index.csv", 2, "object", "synth/x\x00y.png")
    errors = _validate_errors(ds)
    assert any("control character" in m for m in errors["bad-path"]), errors
    _info_fails(ds, "index.csv", "row 2", "control character")


@pytest.mark.parametrize("name", ["label.csv", "index.csv", "category.csv", "c_object.csv"])
def test_directory_where_a_table_is_expected(ds: Path, name: str) -> None:
    (ds / name).unlink()
    (ds / name).mkdir()
    errors = _validate_errors(ds)
    assert any(name in m and "directory" in m for m in errors["missing-file"]), errors
    _info_fails(ds, name, "directory")


@pytest.mark.parametrize("name", ["label.csv", "index.csv", "c_scene.csv"])
def test_non_utf8_table(ds: Path, name: str) -> None:
    (ds / name).write_bytes((ds / name).read_bytes() + b"\xff\xfe,\x81\n")
    errors = _validate_errors(ds)
    assert "not-utf8" in errors
    _info_fails(ds, name, "not UTF-8")


@pytest.mark.parametrize("content", ["", "name,first,last,count,frequency\r\n"])
def test_empty_category_csv(ds: Path, content: str) -> None:
    (ds / "category.csv").write_text(content)
    errors = _validate_errors(ds)
    assert "bad-header" in errors or "empty-table" in errors, errors
    _info_fails(ds, "category.csv")


def test_non_finite_coverage_in_code_table(ds: Path) -> None:
    _set_cell(ds / "c_object.csv", 2, "coverage", "nan")
    assert "bad-value" in _validate_errors(ds)
    _info_fails(ds, "c_object.csv", "row 2", "coverage")


# -- section 5: declared sizes go through the pixel limit ----------------------------------------------


def test_huge_declared_sizes_are_refused_before_allocation(ds: Path) -> None:
    _set_cell(ds / "index.csv", 2, "sh", str(10**6))
    _set_cell(ds / "index.csv", 2, "sw", str(10**6))
    errors = _validate_errors(ds)
    assert any("exceeds the limit" in m for m in errors["too-large"]), errors
    _info_fails(ds, "index.csv", "row 2", "exceeds the limit")


def test_huge_image_header_is_refused_before_decoding(ds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tables declare 8 x 8 everywhere (within a 200-pixel limit); the files are 32 x 32 and 16 x 16.
    rows = _rows(ds / "index.csv")
    for row in rows[1:]:
        row[2:6] = ["8", "8", "8", "8"]
    _write_rows(ds / "index.csv", rows)
    monkeypatch.setenv("CONCEPTS_MAX_PIXELS", "200")
    data = open_dataset(ds)
    with pytest.raises(DatasetFormatError, match="exceeds the limit"):
        data.load_labels(data[0], "object")
    with pytest.raises(DatasetFormatError, match="exceeds the limit"):
        data.load_image(data[0])
    assert "too-large" in validate(ds).codes("error")
    monkeypatch.setenv("CONCEPTS_MAX_PIXELS", "50")
    _info_fails(ds, "index.csv", "row 2", "exceeds the limit")


# -- section 4: the writer refuses what the format cannot hold ----------------------------------------


def test_writer_refuses_label_numbers_above_the_rg_encoding(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from concepts.broden.writer import write_tables

    numbering = SimpleNamespace(categories=lambda: ["object"], labels=[SimpleNamespace(number=n) for n in (1, 65_536)])
    with pytest.raises(DatasetFormatError, match="label number 65,536 is above 65,535"):
        write_tables(tmp_path, numbering, [])  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # refused before anything is written
    bad = SimpleNamespace(categories=lambda: ["../x"], labels=[SimpleNamespace(number=1)])
    with pytest.raises(DatasetFormatError, match="category name"):
        write_tables(tmp_path, bad, [])  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


# -- options that make no sense -------------------------------------------------------------------------


@pytest.mark.parametrize("option,value", [("--max-per-rule", "-1"), ("--min-area", "nan"), ("--min-area", "inf"),
                                          ("--min-images", "-1"), ("--workers", "0")])
def test_validate_options_that_make_no_sense(ds: Path, option: str, value: str) -> None:
    assert_one_error(invoke(["validate", ds, option, value]), option, code=2)


def test_duplicate_column_in_index_header(ds: Path) -> None:
    rows = _rows(ds / "index.csv")
    rows[0][rows[0].index("color")] = "object"  # two 'object' columns; 'color' gone
    _write_rows(ds / "index.csv", rows)
    assert any("appear twice" in m for m in _validate_errors(ds)["bad-header"])
    _info_fails(ds, "index.csv", "appear twice")
