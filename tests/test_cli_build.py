"""`concepts build` through its runner: success, one-line errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from concepts import open_dataset
from concepts.cli import app
from folder_source import solid, write_folder_source

runner = CliRunner()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    mask = np.zeros((20, 20), np.uint8)
    mask[:10] = 1
    return write_folder_source(
        tmp_path / "src",
        {f"{i}.jpg": solid(20, 20, (0, 0, 255)) for i in range(3)},
        {"object": {f"{i}.jpg": mask for i in range(3)}},
        {("object", 1): ["sky"]},
    )


def test_build_detects_format_and_reports(source: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--from", str(source), "-o", str(tmp_path / "out"), "--size", "16", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 images (folder: 3), 2 labels in 2 categories (color, object)" in result.output
    ds = open_dataset(tmp_path / "out")
    assert {(s.ih, s.iw, s.sh, s.sw) for s in ds} == {(16, 16, 8, 8)}


def test_named_format_and_recipe(source: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--from", f"folder={source}", "-o", str(tmp_path / "out"), "--recipe", "broden", "--workers", "1"])
    # The Broden recipe's min frequency of 10 leaves nothing of three images.
    assert result.exit_code == 2 and "no label survived" in result.output
    result = runner.invoke(app, ["build", "--from", f"folder={source}", "-o", str(tmp_path / "out"), "--recipe", "broden", "--min-frequency", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--from", "nosuch=/x"], 2, "unknown source format 'nosuch'"),
        (["--from", "{tmp}/missing"], 1, "missing: no such file or directory"),
        (["--from", "{tmp}"], 1, "format not recognised"),
        (["--from", "{src}", "--size", "0"], 2, "--size '0': expected a positive size"),
        (["--from", "{src}", "--split", "train=0.5"], 2, "must add up to 1"),
        (["--from", "{src}", "--recipe", "imagenet"], 2, "'imagenet' is not one of 'broden'"),
    ],
)
def test_user_errors_are_one_line(source: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    args = [a.format(tmp=tmp_path, src=source) for a in args]
    # The output lies outside {tmp}, which one case names as an input (an output inside an input is refused).
    result = runner.invoke(app, ["build", *args, "-o", str(tmp_path.with_name(tmp_path.name + "-out"))])
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_existing_output_needs_overwrite(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert runner.invoke(app, ["build", "--from", str(source), "-o", str(out), "--workers", "1"]).exit_code == 0
    result = runner.invoke(app, ["build", "--from", str(source), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    result = runner.invoke(app, ["build", "--from", str(source), "-o", str(out), "--workers", "1", "--overwrite", "--no-color"])
    assert result.exit_code == 0 and open_dataset(out).category_names == ["object"]


def test_unreadable_source_table_names_file_and_row(source: Path, tmp_path: Path) -> None:
    (source / "labels.csv").write_text("category,id,names\nobject,one,sky\n")
    result = runner.invoke(app, ["build", "--from", str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "labels.csv, row 2: id 'one' is not an integer" in result.output


def test_debug_shows_traceback(source: Path, tmp_path: Path) -> None:
    (source / "labels.csv").write_text("category,id,names\nobject,one,sky\n")
    result = runner.invoke(app, ["--debug", "build", "--from", str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" in result.output
