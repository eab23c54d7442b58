"""CVAT for images 1.1: real XML (written with xml.etree), real images and zips, checked pixel by pixel."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from concepts import builders
from concepts.builders.cvat import CvatBuilder
from concepts.errors import SourceError, SourceItemError, UnsafeInputError
from fake_exports import cvat_rle, rgb, save_image, write_cvat_xml, zip_folder

H, W = 12, 20
PUDDLE = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], bool)


def _shapes() -> list:
    return [
        ("polygon", {"label": "wall", "source": "manual", "occluded": 0, "points": "0,0;10,0;10,12;0,12", "z_order": 0}, {}),
        # Written before the door but with a higher z_order: painted last.
        ("polygon", {"label": "window", "occluded": 0, "points": "5,3;7,3;7,5;5,5", "z_order": 2}, {}),
        ("box", {"label": "door", "occluded": 0, "xtl": 4, "ytl": 2, "xbr": 8, "ybr": 10, "z_order": 1}, {"material": "wood"}),
        ("box", {"label": "sign", "occluded": 0, "xtl": 12, "ytl": 4, "xbr": 18, "ybr": 6, "rotation": "90.0", "z_order": 0}, {}),
        ("ellipse", {"label": "ball", "occluded": 0, "cx": 15, "cy": 10, "rx": 2, "ry": 1, "z_order": 0}, {}),
        ("mask", {"label": "puddle", "occluded": 0, "rle": cvat_rle(PUDDLE), "left": 0, "top": 10, "width": 4, "height": 2, "z_order": 0}, {}),
        ("polyline", {"label": "crack", "occluded": 0, "points": "0,0;5,5", "z_order": 0}, {}),
        ("points", {"label": "crack", "occluded": 0, "points": "1,1", "z_order": 0}, {}),
        ("box", {"label": "door", "occluded": 0, "outside": 1, "xtl": 0, "ytl": 0, "xbr": 3, "ybr": 3, "z_order": 5}, {}),
        ("polygon", {"label": "", "occluded": 0, "points": "0,0;3,0;3,3", "z_order": 0}, {}),
        ("polygon", {"label": "wall", "occluded": 0, "points": "0,0;nan,0;3,3", "z_order": 0}, {}),
        ("tag", {"label": "indoor", "source": "manual"}, {}),
    ]


@pytest.fixture
def task(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    write_cvat_xml(root / "annotations.xml", [
        {"name": "room.jpg", "width": W, "height": H, "shapes": _shapes()},
        {"name": "sub/empty.png", "width": 8, "height": 6, "shapes": []},
    ])
    save_image(root / "images" / "room.jpg", rgb(H, W))
    save_image(root / "images" / "sub" / "empty.png", rgb(6, 8))
    return root


def _names(record, category: str, layer: np.ndarray) -> np.ndarray:
    lookup = {0: ""} | {i: record.names[(category, i)][0] for (c, i) in record.names if c == category}
    return np.vectorize(lookup.get, otypes=[object])(layer)


def test_task_export_pixels(task: Path) -> None:
    b = CvatBuilder(task)
    assert b.items() == [0, 1]
    r = b.load(0)
    assert r.key == "room" and r.image == task / "images" / "room.jpg"
    obj = [_names(r, "object", layer) for layer in r.pixel["object"]]
    assert len(obj) == 3
    expected = np.full((H, W), "", object)
    expected[:, :10] = "wall"
    expected[2:10, 4:8] = "door"
    expected[3:5, 5:7] = "window"
    expected[2:8, 14:16] = "sign"  # 6 x 2 box turned 90 degrees about (15, 5)
    expected[9:11, 13:17] = "ball"
    expected[10:12, 0:4][PUDDLE] = "puddle"
    assert (obj[0] == expected).all()
    second = np.full((H, W), "", object)
    second[2:10, 4:8] = "wall"
    second[3:5, 5:7] = "door"
    second[10:12, 0:4][PUDDLE] = "wall"
    assert (obj[1] == second).all()
    third = np.full((H, W), "", object)
    third[3:5, 5:7] = "wall"
    assert (obj[2] == third).all()
    # Attributes are ignored without a mapping; tags become scenes.
    assert set(r.pixel) == {"object"}
    assert [r.names[("scene", i)] for i in r.image_level["scene"]] == [("indoor-s",)]
    assert r.skipped == {"polyline": 1, "points": 1, "outside": 1, "empty label": 1, "degenerate shape": 1}
    r.check()
    empty = b.load(1)
    assert empty.key == "sub/empty" and empty.pixel == {} and empty.image_level == {}


def test_mapping_attributes_and_drops(task: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "concepts.yaml"
    mapping.write_text(
        "labels:\n  door: {name: door, synonyms: [doorway]}\n  ball: drop\n  indoor: {category: scene, name: living room}\n"
        "attributes:\n  material: {category: material, values: {wood: {name: wood, synonyms: [timber]}}}\n"
    )
    b = CvatBuilder(task, {"concepts": mapping})
    b.items()
    r = b.load(0)
    mat = r.pixel["material"]
    assert len(mat) == 1
    expected = np.zeros((H, W), bool)
    expected[2:10, 4:8] = True
    assert ((mat[0] > 0) == expected).all()
    assert r.names[("material", int(mat[0][2, 4]))] == ("wood", "timber")
    assert r.names[("object", int(r.pixel["object"][0][2, 4]))] == ("door", "doorway")
    assert "ball" not in {n[0] for n in r.names.values()}
    assert r.pixel["object"][0][9, 15] == 0
    assert [r.names[("scene", i)] for i in r.image_level["scene"]] == [("living room-s",)]


def test_project_export_subsets_and_zip(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shape = [("polygon", {"label": "cat", "points": "0,0;4,0;4,4;0,4", "z_order": 0}, {})]
    write_cvat_xml(root / "annotations.xml", [
        {"name": "a/img.jpg", "subset": "Train", "width": 6, "height": 5, "shapes": shape},
        {"name": "a/img.jpg", "subset": "Test", "width": 6, "height": 5, "shapes": []},
    ], project=True)
    save_image(root / "images" / "Train" / "a" / "img.jpg", rgb(5, 6))
    save_image(root / "images" / "Test" / "a" / "img.jpg", rgb(5, 6))
    archive = zip_folder(root, tmp_path / "project.zip")
    assert CvatBuilder.detect(archive) and builders.detect(archive) is CvatBuilder
    for source in (root, archive):
        b = CvatBuilder(source)
        records = [b.load(i) for i in b.items()]
        assert [r.key for r in records] == ["Train/a/img", "Test/a/img"]
        assert records[0].pixel["object"][0][:4, :4].all() and records[0].pixel["object"][0].sum() == 16
        assert Path(records[1].image).read_bytes() == (root / "images" / "Test" / "a" / "img.jpg").read_bytes()


def test_detect_any_xml_name_and_not_other_folders(tmp_path: Path) -> None:
    write_cvat_xml(tmp_path / "x" / "train.xml", [])
    assert CvatBuilder.detect(tmp_path / "x").confidence > 0
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "other.xml").write_text("<annotation><filename>a.jpg</filename></annotation>")
    det = CvatBuilder.detect(tmp_path / "y")
    assert not det and det.unmet


def test_malformed(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    bad_rle = ("mask", {"label": "m", "rle": "1, 2, 3", "left": 0, "top": 0, "width": 3, "height": 3}, {})
    write_cvat_xml(root / "annotations.xml", [
        {"name": "rle.jpg", "width": 4, "height": 4, "shapes": [bad_rle]},
        {"name": "missing.jpg", "width": 4, "height": 4, "shapes": []},
        {"name": "bomb.jpg", "width": 10**6, "height": 10**6, "shapes": []},
    ])
    save_image(root / "images" / "rle.jpg", rgb(4, 4))
    b = CvatBuilder(root)
    with pytest.raises(SourceItemError, match="runs add up to 6, not width x height = 3 x 3 = 9") as e:
        b.load(0)
    assert "annotations.xml" in str(e.value) and "rle.jpg" in str(e.value)
    with pytest.raises(SourceItemError, match="image file not in the export") as e:
        b.load(1)
    assert e.value.reason == "missing image"
    with pytest.raises(SourceItemError, match="exceeds the limit") as e:
        b.load(2)
    assert e.value.reason == "image too large"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "annotations.xml").write_text("<annotations><image name='a.jpg' width='2' height='2'><box></annotations>")
    with pytest.raises(SourceError, match="broken XML"):
        CvatBuilder(broken).items()

    laughs = tmp_path / "laughs"
    laughs.mkdir()
    (laughs / "annotations.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>\n'
        '<annotations><image id="0" name="&lol2;" width="2" height="2"/></annotations>'
    )
    with pytest.raises(UnsafeInputError, match="refused unsafe XML"):
        CvatBuilder(laughs).items()


def test_zip_with_escaping_member(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", "<annotations></annotations>")
        zf.writestr("../escaped.txt", "boom")
    with pytest.raises(UnsafeInputError, match="outside the extraction folder"):
        CvatBuilder(archive)
    assert not (tmp_path / "escaped.txt").exists()


def test_segmentation_mask_export(tmp_path: Path) -> None:
    from concepts.builders.cvat_mask import CvatMaskBuilder
    from PIL import Image

    root = tmp_path / "smask"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\nsky:51,221,255::\n")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("one\nsub/two\n")
    seg = np.zeros((4, 5, 3), np.uint8)
    seg[:2] = (51, 221, 255)
    seg[2:, :2] = (250, 50, 83)
    seg[3, 4] = (1, 2, 3)  # not in labelmap.txt
    save_image(root / "SegmentationClass" / "one.png", seg)
    save_image(root / "JPEGImages" / "one.jpg", rgb(4, 5))
    save_image(root / "JPEGImages" / "sub" / "two.png", rgb(4, 5))  # listed, no mask
    assert builders.detect(root) is CvatMaskBuilder
    b = CvatMaskBuilder(root)
    assert b.items() == [("default", "one"), ("default", "sub/two")]
    r = b.load(("default", "one"))
    layer = r.pixel["object"][0]
    names = np.vectorize(lambda i: r.names[("object", int(i))][0] if i else "", otypes=[object])(layer)
    expected = np.full((4, 5), "", object)
    expected[:2] = "sky"
    expected[2:, :2] = "cat"
    assert (names == expected).all() and r.key == "one"
    assert r.skipped == {"colour not in labelmap.txt": 1}
    two = b.load(("default", "sub/two"))
    assert two.pixel == {} and two.image == root / "JPEGImages" / "sub" / "two.png"
    # A 1-channel mask holds labelmap line indices.
    Image.fromarray(np.array([[0, 1], [2, 2]], np.uint8), "L").save(root / "SegmentationClass" / "one.png")
    r = b.load(("default", "one"))
    assert [[r.names[("object", int(i))][0] if i else "" for i in row] for row in r.pixel["object"][0]] == [["", "cat"], ["sky", "sky"]]


def test_end_to_end_build_and_cli(task: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from concepts.broden.reader import open_dataset
    from concepts.cli import app
    from concepts.unify import BuildOptions, build_dataset

    archive = zip_folder(task, tmp_path / "task.zip")
    summary = build_dataset([CvatBuilder(archive)], tmp_path / "out", BuildOptions(workers=1))
    assert summary.annotations_skipped["polyline"] == 1 and summary.annotations_skipped["outside"] == 1
    ds = open_dataset(tmp_path / "out")
    by_name = {lab.name: lab.number for lab in ds.labels.values()} if isinstance(ds.labels, dict) else None
    samples = {s.image: s for s in ds}
    room = next(s for img, s in samples.items() if img.endswith("room.jpg"))
    layers = ds.load_labels(room, "object")
    assert layers.shape == (3, H, W)
    number = {ds.label_names()[i]: i for i in range(1, ds.num_labels)} if by_name is None else by_name
    assert layers[0][3, 5] == number["window"] and layers[1][3, 5] == number["door"] and layers[2][3, 5] == number["wall"]
    assert ds.load_labels(room, "scene") == [number["indoor-s"]]
    try:
        from concepts.validate import validate
    except ImportError:
        validate = None
    if validate is not None:
        findings = validate(tmp_path / "out")
        errors = [f for f in getattr(findings, "findings", findings) if getattr(f, "severity", "") == "error"]
        assert not errors, errors
    result = CliRunner().invoke(app, ["build", "--from", str(archive), "-o", str(tmp_path / "cli"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 annotation(s): polyline" in result.output
    result = CliRunner().invoke(app, ["build", "--from", str(task), "--print-concepts"])  # no -o needed
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "p").exists()
    missing = CliRunner().invoke(app, ["build", "--from", str(task)])
    assert missing.exit_code == 2 and "-o/--output" in missing.output
    assert '"door": {category: object, name: "door", synonyms: []}  # 1 shapes' in result.output
    assert '"indoor": {category: scene' in result.output
    assert '"material": drop  # values: wood x1' in result.output


def test_shipped_example_builds(tmp_path: Path) -> None:
    """The README quickstart: examples/ builds with its mapping, and the labels land where annotated."""
    from typer.testing import CliRunner

    from concepts.broden.reader import open_dataset
    from concepts.cli import app
    from fake_exports import assert_valid, label_layers

    root = Path(__file__).parents[1] / "examples"
    out = tmp_path / "example"
    result = CliRunner().invoke(app, ["build", "--from", str(root / "cvat_export"), "--from", str(root / "labelme_export"),
                                      "--concepts", str(root / "concepts.yaml"), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 12 images (cvat: 10, labelme: 2)" in result.output
    assert "skipped 1 annotation(s): polyline" in result.output and "skipped 1 annotation(s): deleted" in result.output
    ds = open_dataset(out)
    assert set(ds.category_names) == {"color", "object", "part", "material", "scene", "celestial"}
    coins = label_layers(out, "coins.jpg", "object")[0]
    metal = label_layers(out, "coins.jpg", "material")[0]
    assert ((coins == "coin") == (metal == "metal")).all() and 0.25 < (coins == "coin").mean() < 0.45
    top, below = label_layers(out, "coffee.jpg", "object")[:2]
    assert top[76, 152] == "coffee" and below[76, 152] == "cup" and top[5, 300] == "table"
    assert label_layers(out, "coffee.jpg", "scene")[0][0, 0] == "coffee shop-s"
    tripod = label_layers(out, "camera.jpg", "object")[0]
    assert tripod[260, 222] == "tripod" and tripod[260, 160] == "tripod"  # the two rotated legs
    parts = label_layers(out, "chelsea.jpg", "part")[0]
    assert parts[85, 120] == "eye" and parts[175, 185] == "nose"
    assert "mast" not in ds.label_names() and "whiskers" not in ds.label_names()
    assert_valid(out)


def _cvat_export_rule(points: list[tuple[float, float]], h: int, w: int) -> np.ndarray:
    """CVAT's Segmentation mask export: datumaro polygons_to_masks/boxes_to_masks, i.e. pycocotools."""
    from pycocotools import mask as cocomask

    rle = cocomask.frPyObjects([[v for p in points for v in p]], h, w)
    return cocomask.decode(cocomask.merge(rle)).astype(bool)


def _rotated_box(x0: float, y0: float, x1: float, y1: float, degrees: float) -> list[tuple[float, float]]:
    """CVAT's RotatedBoxesToPolygons: the corners rotated about the centre by ``rotation`` degrees."""
    import math

    a, cx, cy = math.radians(degrees), (x0 + x1) / 2, (y0 + y1) / 2
    return [(cx + math.cos(a) * (x - cx) - math.sin(a) * (y - cy), cy + math.sin(a) * (x - cx) + math.cos(a) * (y - cy))
            for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]


def test_polygons_and_boxes_follow_cvats_mask_export(tmp_path: Path) -> None:
    h, w = 30, 36
    poly = [(2.6, 1.3), (30.2, 4.8), (25.5, 27.4), (6.1, 20.9)]
    root = tmp_path / "frac"
    write_cvat_xml(root / "annotations.xml", [{"name": "a.png", "width": w, "height": h, "shapes": [
        ("polygon", {"label": "wall", "occluded": 0, "z_order": 0, "points": ";".join(f"{x},{y}" for x, y in poly)}, {}),
        ("box", {"label": "sign", "occluded": 0, "z_order": 1, "xtl": 8.3, "ytl": 9.6, "xbr": 27.7, "ybr": 15.2, "rotation": 33.0}, {}),
        ("box", {"label": "door", "occluded": 0, "z_order": 2, "xtl": 0.5, "ytl": 22.4, "xbr": 7.5, "ybr": 29.6}, {}),
    ]}])
    save_image(root / "images" / "a.png", rgb(h, w))
    r = CvatBuilder(root).load(0)
    expected = np.full((h, w), "", object)
    for name, points in (("wall", poly), ("sign", _rotated_box(8.3, 9.6, 27.7, 15.2, 33.0)),
                         ("door", [(0.5, 22.4), (7.5, 22.4), (7.5, 29.6), (0.5, 29.6)])):
        expected[_cvat_export_rule(points, h, w)] = name
    assert (_names(r, "object", r.pixel["object"][0]) == expected).all()
