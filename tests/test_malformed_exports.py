"""Malformed and hostile exports through the CLI: one clear ``error:`` line naming the file (or a
counted skip), never a traceback, and nothing written outside the output folder."""

from __future__ import annotations

import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from concepts.cli import app
from fake_exports import png_bytes, rgb, save_image, write_coco, write_cvat_xml, write_labelme_json, zip_folder

GOOD = ("polygon", {"label": "wall", "points": "0,0;6,0;6,6;0,6", "z_order": 0}, {})


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke ``concepts build`` on a source; check no traceback and that only ``out`` appeared."""
    scratch = tmp_path / "systemp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # archives extract here; must be cleaned up

    def invoke(source: Path | str, *extra: str) -> tuple[int, str, Path]:
        out = tmp_path / "out"
        before = _files(tmp_path)
        result = CliRunner().invoke(app, ["build", "--from", str(source), "-o", str(out), "--workers", "1", "--no-color", *extra])
        text = result.output
        assert "Traceback" not in text, text
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        appeared = {f for f in _files(tmp_path) - before if f != "out" and not f.startswith("out/")}
        assert not appeared, appeared
        assert not any(scratch.iterdir())
        return result.exit_code, text, out

    return invoke


def _error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def _cvat(root: Path, shapes: list, *, name: str = "bad.jpg", size: tuple[int, int] = (8, 8), image: bool = True) -> Path:
    write_cvat_xml(root / "annotations.xml", [
        {"name": "good.jpg", "width": 8, "height": 8, "shapes": [GOOD]},
        {"name": name, "width": size[1], "height": size[0], "shapes": shapes},
    ])
    save_image(root / "images" / "good.jpg", rgb(8, 8))
    if image:
        save_image(root / "images" / name, rgb(8, 8))
    return root


def test_broken_xml(tmp_path: Path, run) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "annotations.xml").write_text("<annotations><version>1.1</version><image id='0' name='a.jpg' width='2' height='2'><box></annotations>")
    code, text, out = run(root)
    line = _error_line(text)
    assert code == 1 and "annotations.xml" in line and "broken XML" in line and not out.exists()


@pytest.mark.parametrize("fmt", ["cvat", "labelme"])
def test_entity_expansion(tmp_path: Path, run, fmt: str) -> None:
    lol = '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">' \
          '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    if fmt == "cvat":
        path = tmp_path / "x" / "annotations.xml"
        body = '<annotations><version>1.1</version><image id="0" name="&lol3;" width="2" height="2"/></annotations>'
    else:
        path = tmp_path / "x" / "Annotations" / "f" / "a.xml"
        body = "<annotation><filename>&lol3;</filename><folder>f</folder></annotation>"
    path.parent.mkdir(parents=True)
    path.write_text(f'<?xml version="1.0"?>\n{lol}\n{body}')
    code, text, out = run(tmp_path / "x")
    line = _error_line(text)
    assert code == 1 and path.name in line and "refused unsafe XML" in line and not out.exists()


def test_zip_member_escaping(tmp_path: Path, run) -> None:
    export = _cvat(tmp_path / "e", [GOOD])
    archive = zip_folder(export, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../../escaped.txt", "boom")
    code, text, out = run(archive)
    line = _error_line(text)
    assert code == 1 and "evil.zip" in line and "'../../escaped.txt'" in line and "outside the extraction folder" in line
    assert not out.exists() and not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_rle_runs_do_not_add_up(tmp_path: Path, run) -> None:
    bad = ("mask", {"label": "m", "rle": "1, 2, 3", "left": 0, "top": 0, "width": 3, "height": 3, "z_order": 0}, {})
    root = _cvat(tmp_path / "rle", [bad])
    code, text, out = run(root)
    assert code == 0 and "skipped 1 image(s): bad mask" in text and "wrote 1 images" in text
    code, text, _ = run(root, "--strict", "--overwrite")
    line = _error_line(text)
    assert code == 1 and "annotations.xml" in line and "bad.jpg" in line and "runs add up to 6, not width x height = 3 x 3 = 9" in line


def test_nan_polygons_are_counted_skips(tmp_path: Path, run) -> None:
    root = _cvat(tmp_path / "nan", [("polygon", {"label": "wall", "points": "0,0;nan,0;3,3", "z_order": 0}, {}),
                                    ("box", {"label": "door", "xtl": "inf", "ytl": 0, "xbr": 3, "ybr": 3, "z_order": 0}, {})])
    code, text, _ = run(root)
    assert code == 0 and "skipped 2 annotation(s): degenerate shape" in text
    coco = tmp_path / "coco"
    write_coco(coco / "annotations" / "instances_default.json", [{"id": 1, "width": 8, "height": 8, "file_name": "a.jpg"}],
               [{"id": 1, "name": "wall"}],
               [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, float("nan"), 0, 4, 4]]},
                {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]}])
    save_image(coco / "images" / "a.jpg", rgb(8, 8))
    code, text, _ = run(coco, "--overwrite")
    assert code == 0 and "skipped 1 annotation(s): degenerate shape" in text
    lj = tmp_path / "lj"
    write_labelme_json(lj / "a.json", "a.jpg", [{"label": "x", "points": [[0, 0], [None, 1], [3, 3]], "shape_type": "polygon"},
                                                {"label": "y", "points": [[0, 0], [4, 0], [4, 4]], "shape_type": "polygon"}], size=(8, 8))
    save_image(lj / "a.jpg", rgb(8, 8))
    code, text, _ = run(lj, "--overwrite")
    assert code == 0 and "skipped 1 annotation(s): degenerate shape" in text


def test_image_missing_from_export(tmp_path: Path, run) -> None:
    root = _cvat(tmp_path / "miss", [GOOD], name="sub/gone.jpg", image=False)
    code, text, _ = run(root)
    assert code == 0 and "skipped 1 image(s): missing image" in text
    code, text, _ = run(root, "--strict", "--overwrite")
    line = _error_line(text)
    assert code == 1 and "images/sub/gone.jpg" in line and "image file not in the export" in line


def test_declared_size_bomb(tmp_path: Path, run) -> None:
    root = _cvat(tmp_path / "bomb", [GOOD], size=(10**6, 10**6))
    code, text, _ = run(root)
    assert code == 0 and "skipped 1 image(s): image too large" in text
    code, text, _ = run(root, "--strict", "--overwrite")
    line = _error_line(text)
    assert code == 1 and "annotations.xml" in line and "bad.jpg" in line and "exceeds the limit" in line


def _png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (a decompression bomb)."""
    data = png_bytes(np.zeros((1, 1), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


@pytest.mark.parametrize("fmt", ["labelme-json", "labelme-xml", "cvat"])
def test_image_file_bomb(tmp_path: Path, run, fmt: str) -> None:
    root = tmp_path / "fb"
    bomb = _png_header_bomb(40_000, 40_000)
    if fmt == "labelme-json":
        (root).mkdir()
        (root / "big.png").write_bytes(bomb)
        write_labelme_json(root / "big.json", "big.png", [], size=(8, 8))
        (root / "big.json").write_text((root / "big.json").read_text().replace('"imageHeight": 8', '"imageHeight": null'))
        culprit = "big.png"
    elif fmt == "labelme-xml":
        from fake_exports import write_labelme_xml

        write_labelme_xml(root / "Annotations" / "f" / "big.xml", "big.png", "f", None, [])
        (root / "Images" / "f").mkdir(parents=True)
        (root / "Images" / "f" / "big.png").write_bytes(bomb)
        culprit = "big.png"
    else:
        write_cvat_xml(root / "annotations.xml", [{"name": "big.png", "width": 8, "height": 8, "shapes": [GOOD]}])
        (root / "images").mkdir()
        (root / "images" / "big.png").write_bytes(bomb)
        culprit = "big.png"
    code, text, out = run(f"{fmt}={root}", "--strict")
    line = _error_line(text)
    assert code == 1 and culprit in line and not out.exists()
