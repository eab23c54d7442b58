"""labelme JSON: real files (JSON beside images, embedded imageData, EXIF-rotated JPEG), built with
the CLI and checked pixel by pixel against labelme's own rule, restated below from
``labelme/utils/shape.py`` (``shape_to_mask``) and ``examples/semantic_segmentation/labelme2voc.py``."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from concepts import builders
from concepts.builders.labelme_json import LabelmeJsonBuilder
from fake_exports import assert_valid, label_layers, png_bytes, rgb, save_image, write_labelme_json
from hostile import invoke

H, W = 24, 28


def shape_to_mask(size: tuple[int, int], points: list, shape_type: str | None) -> np.ndarray:
    """labelme's shape_to_mask: the PIL ImageDraw calls it makes (line width 10, point size 5)."""
    canvas = Image.fromarray(np.zeros(size, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    xy = [tuple(p) for p in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape_type == "rectangle":
        draw.rectangle(xy, outline=1, fill=1)
    elif shape_type in ("line", "linestrip"):
        draw.line(xy=xy, fill=1, width=10)
    elif shape_type == "point":
        (cx, cy), r = xy[0], 5
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(canvas, dtype=bool)


def labelme2voc(size: tuple[int, int], shapes: list[dict]) -> np.ndarray:
    """labelme2voc's class map by name: shapes in order, later over earlier; its 0 and -1 are ''."""
    out = np.full(size, "", object)
    for s in shapes:
        if s["shape_type"] == "mask":
            mask = np.zeros(size, bool)
            (x1, y1), (x2, y2) = np.asarray(s["points"]).astype(int)
            with Image.open(__import__("io").BytesIO(base64.b64decode(s["mask"]))) as im:
                mask[y1:y2 + 1, x1:x2 + 1] = np.asarray(im).astype(bool)
        else:
            mask = shape_to_mask(size, s["points"], s["shape_type"])
        out[mask] = "" if s["label"] in ("_background_", "__ignore__") else s["label"]
    return out


PATCH = np.array([[0, 0], [255, 255], [255, 0]], np.uint8)
SHAPES = [
    {"label": "wall", "points": [[0, 0], [27.4, 0], [27.4, 11.6], [0, 11.6]], "shape_type": "polygon"},
    {"label": "door", "points": [[3.2, 4.7], [9.6, 19.5]], "shape_type": "rectangle"},
    {"label": "lamp", "points": [[20.5, 5.5], [22.6, 7.1]], "shape_type": "circle"},
    {"label": "roof", "points": [[14, 2], [26, 3.5], [19.3, 9.8]], "shape_type": "polygon"},
    {"label": "rug", "points": [[12.7, 20.2], [13.9, 22.9]], "shape_type": "mask",
     "mask": base64.b64encode(png_bytes(PATCH)).decode()},
    {"label": "cable", "points": [[1, 22], [12, 14], [26, 23]], "shape_type": "linestrip"},
    {"label": "pipe", "points": [[15, 13], [27, 13]], "shape_type": "line"},
    {"label": "nail", "points": [[24.4, 18.6]], "shape_type": "point"},
    {"label": "__ignore__", "points": [[0, 0], [6, 0], [6, 3], [0, 3]], "shape_type": "polygon"},
    {"label": "_background_", "points": [[5, 15], [8, 17]], "shape_type": "rectangle"},
]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "lj"
    write_labelme_json(root / "room" / "r1.json", "r1.jpg", SHAPES, size=(H, W), flags={"indoor": True, "dark": False})
    save_image(root / "room" / "r1.jpg", rgb(H, W))
    # labelme's tutorial file: imagePath names the JSON itself; the image is only embedded.
    write_labelme_json(root / "tutorial.json", "tutorial.json",
                       [{"label": "sky", "points": [[0, 0], [4, 0], [4, 1], [0, 1]], "shape_type": "polygon"}],
                       size=(4, 5), image_data=png_bytes(rgb(4, 5)))
    # imageData wins over an imagePath that exists (and differs).
    save_image(root / "decoy.png", rgb(7, 7))
    write_labelme_json(root / "both.json", "decoy.png", [], size=(4, 6), image_data=png_bytes(rgb(4, 6)),
                       flags={"indoor": True})
    # Stored 6 wide x 4 high with EXIF orientation 6 (rotate 90 cw): labelme shows it 4 x 6.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb(4, 6)).save(root / "turned.jpg", exif=exif.tobytes())
    write_labelme_json(root / "turned.json", "turned.jpg",
                       [{"label": "sky", "points": [[0, 0], [3, 0], [3, 1], [0, 1]], "shape_type": "polygon"}], size=(6, 4))
    # Other JSON files a project folder holds.
    (root / "config.json").write_text(json.dumps({"labels": ["wall", "door"], "autosave": True}))
    (root / "room" / "summary.json").write_text(json.dumps({"images": 1, "shapes": 10}))
    return root


def _build(export: Path, out: Path, *extra: str):
    result = invoke(["build", "--from", export, "-o", out, "--workers", "1", "--no-color", *extra])
    assert result.code == 0, result.stdout + result.stderr
    return result


def test_pixels_follow_shape_to_mask_and_labelme2voc(export: Path, tmp_path: Path) -> None:
    assert builders.detect(export) is LabelmeJsonBuilder
    out = tmp_path / "out"
    result = _build(export, out)
    assert "wrote 4 images" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "ignored 2 JSON file(s) that are not labelme files" in result.stderr
    assert "painted 1 line, 1 linestrip, 1 point shape(s)" in result.stderr

    layers = label_layers(out, "r1.jpg", "object")
    assert (layers[0] == labelme2voc((H, W), SHAPES)).all(), layers[0]
    # Erased pixels hold no label in any layer, so nothing painted before an eraser survives under it.
    erased = labelme2voc((H, W), SHAPES[:8] + [{**s, "label": "gone"} for s in SHAPES[8:]]) == "gone"
    for layer in layers:
        assert (layer[erased] == "").all()
    # Below the top: what each shape covered, e.g. the wall under the door outside the erased corner.
    door = (layers[0] == "door") & shape_to_mask((H, W), SHAPES[0]["points"], "polygon")
    assert door.any() and (layers[1][door] == "wall").all()
    assert [layer[0, 0] for layer in label_layers(out, "r1.jpg", "scene")] == ["indoor-s"]

    (sky,) = label_layers(out, "tutorial.jpg", "object")
    assert sky.shape == (4, 5) and (sky == np.where(shape_to_mask((4, 5), [[0, 0], [4, 0], [4, 1], [0, 1]], None), "sky", "")).all()
    with Image.open(next((out / "images").rglob("both.jpg"))) as im:
        assert im.size == (6, 4)
    (turned,) = label_layers(out, "turned.jpg", "object")
    assert turned.shape == (6, 4) and (turned == np.where(shape_to_mask((6, 4), [[0, 0], [3, 0], [3, 1], [0, 1]], None), "sky", "")).all()
    assert_valid(out)


def test_rectangle_includes_both_corners(tmp_path: Path) -> None:
    root = tmp_path / "rect"
    write_labelme_json(root / "a.json", "a.png", [{"label": "box", "points": [[12, 11], [2, 1]], "shape_type": "rectangle"}],
                       size=(16, 16))
    save_image(root / "a.png", rgb(16, 16))
    _build(root, tmp_path / "out")
    (box,) = label_layers(tmp_path / "out", "a.jpg", "object")
    # labelme's 11 x 11 rectangle (both corner pixels inside), corners stored right-to-left.
    assert (box == "box").sum() == 121 and (box[1:12, 2:13] == "box").all()


def test_mapping_drops_lines_and_moves_labels(export: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "c.toml"
    mapping.write_text('[labels.rug]\ncategory = "floor"\n[labels.cable]\ndrop = true\n[labels.pipe]\ndrop = true\n'
                       '[labels.nail]\ndrop = true\n[tags]\ncategory = "place"\n')
    out = tmp_path / "mapped"
    _build(export, out, "--concepts", mapping)
    kept = [s for s in SHAPES if s["label"] not in ("cable", "pipe", "nail", "rug")]
    top = label_layers(out, "r1.jpg", "object")[0]
    assert (top == labelme2voc((H, W), kept)).all(), top
    (floor,) = label_layers(out, "r1.jpg", "floor")
    assert (floor == labelme2voc((H, W), [SHAPES[4]])).all()
    assert [layer[0, 0] for layer in label_layers(out, "r1.jpg", "place")] == ["indoor"]
    assert_valid(out)


def test_starter_mapping_lists_labels_not_erasers(export: Path, tmp_path: Path) -> None:
    result = invoke(["build", "--from", export, "-o", tmp_path / "x", "--print-concepts"])
    assert result.code == 0, result.stdout + result.stderr
    assert '"wall": {category: object, name: "wall", synonyms: []}  # 1 shapes' in result.stdout
    assert '"cable": {category: object, name: "cable", synonyms: []}  # 1 shapes' in result.stdout
    assert "_background_" not in result.stdout and "__ignore__" not in result.stdout
    assert not (tmp_path / "x").exists()


def test_mask_whose_size_disagrees_with_its_points_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "m"
    good = {"label": "a", "points": [[0, 0], [3, 0], [3, 3]], "shape_type": "polygon"}
    bad = {"label": "b", "points": [[0, 0], [4, 4]], "shape_type": "mask", "mask": base64.b64encode(png_bytes(PATCH)).decode()}
    write_labelme_json(root / "good.json", "good.png", [good], size=(8, 8))
    write_labelme_json(root / "bad.json", "bad.png", [good, bad], size=(8, 8))
    save_image(root / "good.png", rgb(8, 8))
    save_image(root / "bad.png", rgb(8, 8))
    result = _build(root, tmp_path / "out")
    assert "skipped 1 image(s): bad mask" in result.stdout
    assert "bad.json" in result.stderr and "shapes[1]: the mask is 2 x 3 pixels but its points span 5 x 5" in result.stderr
