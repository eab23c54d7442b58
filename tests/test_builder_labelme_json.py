"""labelme JSON: real files (JSON beside images, embedded imageData, EXIF-rotated JPEG), built
end to end with the unifier and checked pixel by pixel in the written dataset."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts import builders
from concepts.builders.labelme_json import LabelmeJsonBuilder
from concepts.unify import BuildOptions, build_dataset
from fake_exports import assert_valid, label_layers, png_bytes, rgb, save_image, write_labelme_json

H, W = 10, 12


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "lj"
    patch = np.zeros((3, 2), np.uint8)
    patch[1:] = 1
    shapes = [
        {"label": "wall", "points": [[0, 0], [12, 0], [12, 6], [0, 6]], "shape_type": "polygon"},
        {"label": "door", "points": [[5, 9], [2, 2]], "shape_type": "rectangle"},  # corners in any order
        {"label": "lamp", "points": [[9.5, 2.5], [10.5, 2.5]], "shape_type": "circle"},
        {"label": "rug", "points": [[6, 7], [7, 9]], "shape_type": "mask",
         "mask": base64.b64encode(png_bytes(patch * 255)).decode()},
        {"label": "cable", "points": [[0, 0], [5, 5]], "shape_type": "linestrip"},
        {"label": "cable", "points": [[0, 9], [11, 9]], "shape_type": "line"},
        {"label": "nail", "points": [[1, 1]], "shape_type": "point"},
        {"label": "__ignore__", "points": [[0, 0], [3, 0], [3, 3]], "shape_type": "polygon"},
    ]
    write_labelme_json(root / "room" / "r1.json", "r1.jpg", shapes, size=(H, W), flags={"indoor": True, "dark": False})
    save_image(root / "room" / "r1.jpg", rgb(H, W))
    # Only the embedded image: imagePath points nowhere.
    write_labelme_json(root / "embedded.json", "C:\\Users\\me\\gone.png",
                       [{"label": "sky", "points": [[0, 0], [5, 0], [5, 2], [0, 2]], "shape_type": "polygon"}],
                       size=(4, 5), image_data=png_bytes(rgb(4, 5)))
    # Stored 6 wide x 4 high with EXIF orientation 6 (rotate 90 cw): labelme shows it 4 x 6.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb(4, 6)).save(root / "turned.jpg", exif=exif.tobytes())
    write_labelme_json(root / "turned.json", "turned.jpg",
                       [{"label": "sky", "points": [[0, 0], [4, 0], [4, 2], [0, 2]], "shape_type": "polygon"}], size=(6, 4))
    return root


def test_build_pixels(export: Path, tmp_path: Path) -> None:
    assert builders.detect(export) is LabelmeJsonBuilder
    out = tmp_path / "out"
    summary = build_dataset([LabelmeJsonBuilder(export)], out, BuildOptions(workers=1))
    assert summary.images == {"labelme_json": 3} and not summary.skipped
    assert summary.annotations_skipped == {"linestrip": 1, "line": 1, "point": 1, "__ignore__": 1}

    top, second = label_layers(out, "r1.jpg", "object")
    expected = np.full((H, W), "", object)
    expected[0:6, :] = "wall"
    expected[2:9, 2:5] = "door"
    expected[2, 8:11] = "lamp"  # radius 1 about (9.5, 2.5): the centre pixel and its 4 neighbours
    expected[1:4, 9] = "lamp"
    expected[8:10, 6:8] = "rug"  # the patch's lower two rows at (6, 7)
    assert (top == expected).all(), top
    below = np.full((H, W), "", object)
    below[2:6, 2:5] = "wall"
    below[2, 8:11] = "wall"
    below[1:4, 9] = "wall"
    assert (second == below).all(), second
    assert [layer[0, 0] for layer in label_layers(out, "r1.jpg", "scene")] == ["indoor-s"]

    (sky,) = label_layers(out, "embedded.jpg", "object")
    assert sky.shape == (4, 5) and (sky[:2] == "sky").all() and (sky[2:] == "").all()
    (turned,) = label_layers(out, "turned.jpg", "object")
    assert turned.shape == (6, 4) and (turned[:2] == "sky").all() and (turned[2:] == "").all()
    with Image.open(next((out / "images").rglob("turned.jpg"))) as im:
        assert im.size == (4, 6)
    assert_valid(out)


def test_mapping_and_starter(export: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from concepts.cli import app

    mapping = tmp_path / "c.toml"
    mapping.write_text('[labels.rug]\ncategory = "floor"\n[labels.lamp]\ndrop = true\n[tags]\ncategory = "place"\n')
    out = tmp_path / "mapped"
    result = CliRunner().invoke(app, ["build", "--from", f"labelme-json={export}", "--concepts", str(mapping), "-o", str(out),
                                      "--workers", "1", "--no-color"])
    assert result.exit_code == 0, result.output
    (floor,) = label_layers(out, "r1.jpg", "floor")
    assert (floor[8:10, 6:8] == "rug").all() and (floor == "rug").sum() == 4
    top = label_layers(out, "r1.jpg", "object")[0]
    assert "lamp" not in set(top.ravel()) and top[2, 9] == "wall"
    assert [layer[0, 0] for layer in label_layers(out, "r1.jpg", "place")] == ["indoor"]
    assert_valid(out)
    result = CliRunner().invoke(app, ["build", "--from", str(export), "-o", str(tmp_path / "x"), "--print-concepts"])
    assert result.exit_code == 0, result.output
    assert '"wall": {category: object, name: "wall", synonyms: []}  # 1 shapes' in result.output
    assert '"indoor": {category: scene, name: "indoor", synonyms: []}  # 1 tags' in result.output
    assert not (tmp_path / "x").exists()
