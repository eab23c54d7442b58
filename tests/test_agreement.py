"""`concepts agreement` on two exports that differ in known ways; figures checked exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from concepts.builders.folder import FolderBuilder
from concepts.agreement import compare
from concepts.cli import app
from folder_source import solid, write_folder_source

LABELS = {("object", 1): ["dog"], ("object", 2): ["Cat"]}


@pytest.fixture
def exports(tmp_path: Path) -> tuple[Path, Path]:
    img = solid(10, 10, (90, 90, 90))
    a1 = np.zeros((10, 10), np.uint8)
    a1[:5] = 1
    a2 = np.zeros((10, 10), np.uint8)
    a2[:, :5] = 2
    b1 = np.zeros((10, 10), np.uint8)
    b1[:6] = 1
    b2 = np.zeros((10, 10), np.uint8)
    b2[:, :5] = 1
    b2[8:, 8:] = 2
    a = write_folder_source(
        tmp_path / "a", {"one.jpg": img, "two.jpg": img, "extra.jpg": img}, {"object": {"one.jpg": a1, "two.jpg": a2}}, LABELS
    )
    # Annotator B spells the cat label in lower case: names compare after normalisation.
    b = write_folder_source(
        tmp_path / "b", {"one.jpg": img, "two.jpg": img}, {"object": {"one.jpg": b1, "two.jpg": b2}}, {("object", 1): ["dog"], ("object", 2): ["cat"]}
    )
    return a, b


def test_figures(exports: tuple[Path, Path]) -> None:
    report = compare(FolderBuilder(exports[0]), FolderBuilder(exports[1]))
    by_name = {c.name: c for c in report.concepts}
    dog, cat = by_name["dog"], by_name["cat"]
    assert (dog.pixels_a, dog.pixels_b, dog.intersection, dog.union) == (50, 110, 50, 110)
    assert dog.iou == pytest.approx(50 / 110)
    assert (cat.pixels_a, cat.pixels_b, cat.intersection, cat.union, cat.iou) == (50, 4, 0, 54, 0.0)
    assert report.mean_iou == pytest.approx(50 / 164)
    assert (report.both_labelled, report.name_disagreement, report.naming_agreement) == (100, 50, 0.5)
    assert report.confusions == [("object", "cat", "dog", 50)]
    segments = {i.key: i.segments for i in report.images}
    assert segments == {"one": {"object/dog": (1, 1)}, "two": {"object/cat": (1, 1), "object/dog": (0, 1)}}
    assert report.mean_segment_difference == 0.5
    assert (dog.segment_difference, cat.segment_difference) == (1, 0)
    assert report.only_a == ["extra"] and report.only_b == []


def test_cli_table_and_json(exports: tuple[Path, Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["agreement", str(exports[0]), str(exports[1])])
    assert result.exit_code == 0, result.output
    assert "named differently: object 'cat' (A) vs 'dog' (B): 50 pixels" in result.output
    assert "overall: 2 images, pixel IoU 0.305, naming agreement 0.500" in result.output
    assert "only in A: extra" in result.output
    data = json.loads(runner.invoke(app, ["agreement", str(exports[0]), str(exports[1]), "--json"]).output)
    assert data["overall"]["pixels_named_differently"] == 50
    assert {c["name"]: c["iou"] for c in data["concepts"]} == pytest.approx({"cat": 0.0, "dog": 50 / 110})


def test_disjoint_exports_are_a_clear_error(exports: tuple[Path, Path], tmp_path: Path) -> None:
    other = write_folder_source(tmp_path / "c", {"zzz.jpg": solid(4, 4, (0, 0, 0))}, {}, LABELS)
    result = CliRunner().invoke(app, ["agreement", str(exports[0]), str(other), "--format", "folder"])
    assert result.exit_code == 1 and "share no image" in result.output and "Traceback" not in result.output
