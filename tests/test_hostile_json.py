"""Hostile JSON exports and folder sources (issue 11, sections 3, 5 and 6).

COCO and labelme JSON files and the folder source name files outside the input, declare sizes
that would allocate gigabytes, hold non-finite numbers, wrong types, deep nesting and broken RLE
runs. Each must end in one line (an error, or a counted skip), never a traceback, with nothing from
outside the input in the output and nothing changed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts.builders.coco import CocoBuilder
from concepts.builders.labelme_json import LabelmeJsonBuilder
from concepts.errors import SourceError, SourceItemError
from fake_exports import png_bytes, rgb, save_image, write_coco, write_labelme_json
from folder_source import solid, write_folder_source
from hostile import SECRET, assert_no_leftovers, assert_not_in_tree, assert_one_error, assert_unchanged, invoke, snapshot

H, W = 6, 8
SQUARE = [[0, 0, 4, 0, 4, 4, 0, 4]]


def _secret_jpeg(path: Path, h: int = H, w: int = W) -> Path:
    """A JPEG outside the input whose bytes hold SECRET (a comment): copied as-is, it would leak."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(h, w, 77)).save(path, "JPEG", comment=SECRET.encode())
    assert SECRET.encode() in path.read_bytes()
    return path


def _coco(root: Path, images: list[dict], annotations: list[dict] | None = None, categories: list[dict] | None = None) -> Path:
    """A COCO export; every image gets one ``dog`` square unless annotations are given."""
    if annotations is None:
        annotations = [{"id": i + 1, "image_id": im["id"], "category_id": 1, "segmentation": SQUARE, "bbox": [0, 0, 4, 4],
                        "iscrowd": 0} for i, im in enumerate(images)]
    write_coco(root / "annotations" / "instances_default.json", images, categories or [{"id": 1, "name": "dog"}], annotations)
    return root


def _good_image(root: Path) -> dict:
    save_image(root / "images" / "good.jpg", rgb(H, W))
    return {"id": 1, "width": W, "height": H, "file_name": "good.jpg"}


def _build(tmp_path: Path, source: str, *extra: str):
    before = snapshot(tmp_path)
    out = invoke(["build", "--workers", "1", "--from", source, "-o", tmp_path / "out", *extra])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert_unchanged(before, snapshot(tmp_path))
    assert_no_leftovers(tmp_path)
    return out


def _skipped(tmp_path: Path, source: str, reason: str, *needles: str) -> None:
    """The bad item is skipped with a counted reason; under --strict it is one error line."""
    out = _build(tmp_path, source)
    assert out.code == 0, out.stderr
    assert f"skipped 1 image(s): {reason}" in out.stdout, out.stdout
    assert_not_in_tree(tmp_path / "out")
    strict = invoke(["build", "--workers", "1", "--from", source, "-o", tmp_path / "strict", "--strict"])
    assert_one_error(strict, *needles)
    assert not (tmp_path / "strict").exists()
    assert_no_leftovers(tmp_path)


# --- section 3: nothing is read from outside the input ----------------------------------------------


@pytest.mark.parametrize("name", ["../../outside/secret.jpg", "ABS", "link.jpg"])
def test_coco_file_name_outside_the_export_is_skipped(tmp_path: Path, name: str) -> None:
    secret = _secret_jpeg(tmp_path / "outside" / "secret.jpg")
    root = tmp_path / "coco"
    good = _good_image(root)
    if name == "ABS":
        name = str(secret)
    if name == "link.jpg":
        os.symlink(secret, root / "images" / "link.jpg")
    _coco(root, [good, {"id": 2, "width": W, "height": H, "file_name": name}])
    _skipped(tmp_path, f"coco={root}", "path outside the input", "images[1].file_name", "outside the input")


def test_coco_file_name_with_nul_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _coco(root, [_good_image(root), {"id": 2, "width": W, "height": H, "file_name": "a\x00.jpg"}])
    _skipped(tmp_path, f"coco={root}", "bad path", "NUL byte")


def test_labelme_image_path_outside_the_export_is_not_read(tmp_path: Path) -> None:
    secret = _secret_jpeg(tmp_path / "outside" / "secret.jpg")
    root = tmp_path / "lm"
    save_image(root / "good.jpg", rgb(H, W))
    shape = {"label": "dog", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}
    write_labelme_json(root / "good.json", "good.jpg", [shape], size=(H, W))
    write_labelme_json(root / "bad.json", os.path.relpath(secret, root), [shape], size=(H, W))
    _skipped(tmp_path, f"labelme-json={root}", "path outside the input", "bad.json", "imagePath", "outside the input")


def test_labelme_image_path_outside_falls_back_to_embedded_image(tmp_path: Path) -> None:
    secret = _secret_jpeg(tmp_path / "outside" / "secret.jpg")
    root = tmp_path / "lm"
    shape = {"label": "dog", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}
    write_labelme_json(root / "a.json", str(secret), [shape], size=(H, W), image_data=png_bytes(rgb(H, W, 9)))
    out = _build(tmp_path, f"labelme-json={root}")
    assert out.code == 0 and "skipped" not in out.stdout, out.stdout + out.stderr
    assert_not_in_tree(tmp_path / "out")


@pytest.mark.parametrize("what", ["image", "mask", "images-folder"])
def test_folder_source_links_outside_are_skipped(tmp_path: Path, what: str) -> None:
    secret = _secret_jpeg(tmp_path / "outside" / "secret.jpg", 4, 4)
    ids = np.ones((4, 4), np.uint8)
    root = write_folder_source(tmp_path / "src", {"good.jpg": solid(4, 4, (200, 0, 0))}, {"object": {"good.jpg": ids}},
                               {("object", 1): ["dog"]})
    if what == "image":
        os.symlink(secret, root / "images" / "bad.jpg")
    elif what == "mask":
        save_image(root / "images" / "bad.jpg", rgb(4, 4))
        outside_mask = tmp_path / "outside" / "mask.png"
        Image.fromarray(ids).save(outside_mask)
        os.symlink(outside_mask, root / "masks" / "object" / "bad.png")
    else:
        os.symlink(secret.parent, root / "images" / "sub")
        save_image(root / "images" / "bad.jpg", rgb(4, 4))
        (root / "images" / "bad.jpg").unlink()
        os.symlink(root / "images" / "sub" / "secret.jpg", root / "images" / "bad.jpg")
    _skipped(tmp_path, f"folder={root}", "path outside the input", "outside the input")


# --- section 5: resources are bounded ----------------------------------------------------------------


@pytest.mark.parametrize("size", [[200000, 200000], [2**40, 2**40], [1e400, 4], [0, 16], [-4, -4], ["4", 4], [4], None, [True, 4]])
def test_coco_rle_size_is_checked_before_decoding(tmp_path: Path, size) -> None:
    root = tmp_path / "coco"
    good = _good_image(root)
    save_image(root / "images" / "b.jpg", rgb(H, W))
    # Runs that cover the declared size exactly: only the size check stands before the allocation.
    counts = [size[0] * size[1]] if isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size) else [16]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "bbox": [0, 0, 4, 4]},
            {"id": 2, "image_id": 2, "category_id": 1, "segmentation": {"size": size, "counts": counts}, "bbox": [0, 0, 4, 4]}]
    _coco(root, [good, {"id": 2, "width": W, "height": H, "file_name": "b.jpg"}], anns)
    _skipped(tmp_path, f"coco={root}", "bad mask", "annotations[1]", "RLE")


@pytest.mark.parametrize(("width", "height"), [(200000, 200000), (1e400, 4), (float("nan"), 4), ("abc", 4), (True, 4), (-1, 4)])
def test_coco_declared_image_size_is_checked(tmp_path: Path, width, height) -> None:
    root = tmp_path / "coco"
    save_image(root / "images" / "b.jpg", rgb(H, W))
    _coco(root, [_good_image(root), {"id": 2, "width": width, "height": height, "file_name": "b.jpg"}])
    reason = "image too large" if width == 200000 else "bad image size"
    _skipped(tmp_path, f"coco={root}", reason, "b.jpg")


@pytest.mark.parametrize(("height", "width"), [(200000, 200000), (1e400, 8), (float("nan"), 8), ("x", 8)])
def test_labelme_declared_size_is_checked(tmp_path: Path, height, width) -> None:
    root = tmp_path / "lm"
    save_image(root / "good.jpg", rgb(H, W))
    save_image(root / "bad.jpg", rgb(H, W))
    shape = {"label": "dog", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}
    write_labelme_json(root / "good.json", "good.jpg", [shape], size=(H, W))
    write_labelme_json(root / "bad.json", "bad.jpg", [shape], size=(height, width))
    reason = "image too large" if height == 200000 else "bad image size"
    _skipped(tmp_path, f"labelme-json={root}", reason, "bad.json")


def test_labelme_embedded_image_above_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    save_image(root / "good.jpg", rgb(H, W))
    shape = {"label": "dog", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}
    write_labelme_json(root / "good.json", "good.jpg", [shape], size=(H, W))
    write_labelme_json(root / "bad.json", None, [shape], size=(0, 0), image_data=png_bytes(np.zeros((300, 400), np.uint8)))
    before = snapshot(tmp_path)
    out = invoke(["--max-pixels", "100000", "build", "--workers", "1", "--from", f"labelme-json={root}", "-o", tmp_path / "out"])
    assert out.code == 0 and "skipped 1 image(s): image too large" in out.stdout, out.stdout + out.stderr
    assert_unchanged(before, snapshot(tmp_path))


def test_twenty_thousand_overlapping_annotations_paint_in_linear_time(tmp_path: Path) -> None:
    """Each new shape used to push every layer below it down: quadratic in overlapping shapes."""
    n = 20000
    root = tmp_path / "coco"
    save_image(root / "images" / "a.jpg", rgb(2, 3))
    cats = [{"id": 10**23 + i, "name": f"c{i}"} for i in range(n)]  # ids need not be small
    anns = [{"id": i, "image_id": 1, "category_id": 10**23 + i, "segmentation": [], "bbox": [0, 0, 3, 2]} for i in range(n)]
    _coco(root, [{"id": 1, "width": 3, "height": 2, "file_name": "a.jpg"}], anns, cats)
    started = time.perf_counter()
    builder = CocoBuilder(root)
    record = builder.load(builder.items()[0])
    assert time.perf_counter() - started < 30
    layers = record.pixel["object"]
    assert len(layers) == n
    # The last annotation painted is on top, the first at the bottom.
    assert record.names[("object", int(layers[0][0, 0]))] == (f"c{n - 1}",)
    assert record.names[("object", int(layers[-1][1, 2]))] == ("c0",)


# --- section 6: one line, never a traceback ------------------------------------------------------------


@pytest.mark.parametrize(("counts", "message"), [
    ([-5, 21], "negative run (-5)"),
    ([10**30, 0], "add up to 1000000000000000000000000000000, not 4 x 4 = 16"),
    ([3, 4], "add up to 7, not 4 x 4 = 16"),
    ([8, "8"], "not a whole number"),
    ([8.0, 8], "not a whole number"),
    (5, "neither a list of runs nor a compressed string"),
    ({"a": 1}, "neither a list of runs nor a compressed string"),
    ("\x7f\x7f", "not a COCO RLE character"),
    ("00000000000000000000", "add up to"),
    ("o", "ends in the middle of a number"),
])
def test_coco_bad_rle_is_one_line(tmp_path: Path, counts, message: str) -> None:
    root = tmp_path / "coco"
    save_image(root / "images" / "b.jpg", rgb(4, 4))
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "bbox": [0, 0, 4, 4]},
            {"id": 2, "image_id": 2, "category_id": 1, "segmentation": {"size": [4, 4], "counts": counts}, "bbox": [0, 0, 4, 4]}]
    _coco(root, [_good_image(root), {"id": 2, "width": 4, "height": 4, "file_name": "b.jpg"}], anns)
    _skipped(tmp_path, f"coco={root}", "bad mask", message)


@pytest.mark.parametrize("field", ["id", "image_id", "category_id"])
@pytest.mark.parametrize("value", ["1", 1.0, True, None, [1]])
def test_coco_ids_of_the_wrong_type_are_one_line(tmp_path: Path, field: str, value) -> None:
    root = tmp_path / "coco"
    image = _good_image(root)
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "bbox": [0, 0, 4, 4]}
    cat = {"id": 1, "name": "dog"}
    (image if field == "id" else ann)[field] = value
    _coco(root, [image], [ann], [cat])
    before = snapshot(tmp_path)
    out = invoke(["build", "--workers", "1", "--from", f"coco={root}", "-o", tmp_path / "out"])
    assert_one_error(out, "instances_default.json", "not a whole number")
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("segmentation", [7, "x", [[0, 0, 1e400, 0, 4, 4]], [[0, float("nan"), 4, 0, 4, 4]],
                                          [[0, 0, 1e300, 0, 1e300, 1e300, 0, 1e300]], [["a", "b", "c", "d", "e", "f"]],
                                          [[-1e9, -1e9, 1e9, -1e9, 1e9, 1e9]], [{"x": 1}], [[[[]]]]])
@pytest.mark.parametrize("bbox", [[0, 0, 4, 4], [0, 0, 1e400, 4], [float("nan")] * 4, "box", None])
def test_coco_odd_geometry_never_crashes(tmp_path: Path, segmentation, bbox) -> None:
    root = tmp_path / "coco"
    image = _good_image(root)
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation, "bbox": bbox,
           "attributes": {"rotation": 1e400, "colour": {"nested": [1]}}}
    _coco(root, [image], [ann])
    out = _build(tmp_path, f"coco={root}")
    assert out.code == 0 or len(out.errors) == 1, out.stderr


@pytest.mark.parametrize("text", ["[" * 100000, '{"images": ' * 50000, "\xff\xfe{", "", "{}", "[]", '{"images": 1, "annotations": [], "categories": []}',
                                  '{"images": [5], "annotations": [], "categories": []}',
                                  '{"images": [], "annotations": [], "categories": [{"id": 1, "name": 5}]}'])
def test_coco_broken_file_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "coco" / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe{" else b"\xff\xfe{")
    before = snapshot(tmp_path)
    out = invoke(["build", "--workers", "1", "--from", f"coco={tmp_path / 'coco'}", "-o", tmp_path / "out"])
    assert_one_error(out, str(path))
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("data", [
    {"shapes": {}, "imagePath": "a.jpg"},
    {"shapes": [], "flags": [], "imagePath": "a.jpg"},
    {"shapes": [], "imagePath": 5},
    {"shapes": [5, "x", None, {"label": {"a": 1}}, {"label": "dog", "shape_type": 3}], "imagePath": "a.jpg"},
    {"shapes": [{"label": "dog", "points": [[0, 0], [1e308, 1e308]], "shape_type": "circle"},
                {"label": "dog", "points": [[-1e308, -1e308], [1e308, 1e308]], "shape_type": "circle"},
                {"label": "dog", "points": [[1e300, 1e300], [1e301, 1e301]], "shape_type": "mask", "mask": "AAAA"},
                {"label": "dog", "points": [[0, 0], [float("inf"), 2]], "shape_type": "rectangle"},
                {"label": "dog", "points": [[0, 0], [1e300, 0], [1e300, 1e300]], "shape_type": "polygon"},
                {"label": "dog", "points": "nope"}], "imagePath": "a.jpg"},
    {"shapes": [], "imagePath": None, "imageData": 5},
    {"shapes": [], "imagePath": None, "imageData": "!!not base64!!"},
    {"shapes": [{"label": "dog\nnew line", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}], "imagePath": "a.jpg"},
    {"shapes": [], "flags": {"bad\x00flag": True}, "imagePath": "a.jpg"},
    "deep",
])
def test_labelme_odd_files_never_crash(tmp_path: Path, data) -> None:
    root = tmp_path / "lm"
    save_image(root / "a.jpg", rgb(H, W))
    save_image(root / "good.jpg", rgb(H, W))
    write_labelme_json(root / "good.json", "good.jpg", [{"label": "cat", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}],
                       size=(H, W))
    bad = root / "bad.json"
    bad.write_text('{"shapes": [], "imagePath": "a.jpg", "x": ' + "[" * 50000 + "]" * 50000 + "}" if data == "deep"
                   else json.dumps(data))
    out = _build(tmp_path, f"labelme-json={root}")
    assert out.code == 0, out.stderr
    strict = invoke(["build", "--workers", "1", "--from", f"labelme-json={root}", "-o", tmp_path / "strict", "--strict"])
    assert "Traceback" not in strict.stderr
    assert strict.code == 0 or len(strict.errors) == 1, strict.stderr


def test_labelme_bad_label_name_names_the_file_and_shape(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    save_image(root / "a.jpg", rgb(H, W))
    save_image(root / "good.jpg", rgb(H, W))
    ok = {"label": "cat", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"}
    write_labelme_json(root / "good.json", "good.jpg", [ok], size=(H, W))
    write_labelme_json(root / "bad.json", "a.jpg", [ok, {**ok, "label": "dog\r\nx"}], size=(H, W))
    _skipped(tmp_path, f"labelme-json={root}", "bad label name", "bad.json", "shapes[1].label", "U+000D")


def test_folder_tables_that_are_not_utf8_or_have_huge_fields_are_one_line(tmp_path: Path) -> None:
    root = write_folder_source(tmp_path / "src", {"a.png": solid(4, 4, (200, 0, 0))}, {}, {("object", 1): ["dog"]},
                               tags=[("a.png", "scene", "park")])
    cases = [("labels.csv", "category,id,names\nobject,1,caf\xe9\n".encode("latin-1"), "not UTF-8"),
             ("labels.csv", b"category,id,names\nobject,1," + b"x" * 200000 + b"\n", "field larger than field limit"),
             ("tags.csv", b"image,category,name\na.png,scene,\xff\xfe\n", "not UTF-8"),
             ("labels.csv", b"category,id,names\nobject,1,dog\x00\n", "U+0000"),
             ("labels.csv", b"category,id\nobject,1\n", "missing column(s) names"),
             ("labels.csv", b"category,id,names\nobject\n", "row 2")]
    for name, content, needle in cases:
        saved = (root / name).read_bytes()
        (root / name).write_bytes(content)
        before = snapshot(tmp_path)
        out = invoke(["build", "--workers", "1", "--from", f"folder={root}", "-o", tmp_path / "out"])
        assert_one_error(out, str(root / name), needle)
        assert_unchanged(before, snapshot(tmp_path))
        (root / name).write_bytes(saved)


@pytest.mark.parametrize("layout", ["coco-dir", "coco-garbage", "labelme-dir", "labelme-garbage"])
def test_detection_survives_broken_json(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "src"
    if layout == "coco-dir":
        (root / "annotations" / "instances_default.json").mkdir(parents=True)
    elif layout == "coco-garbage":
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "instances_default.json").write_bytes(b'{"images": [' + b"\xff" * 10)
    elif layout == "labelme-dir":
        (root / "a.json").mkdir(parents=True)
    else:
        root.mkdir()
        (root / "a.json").write_bytes(b'{"shapes": [}, "imagePath": \xff')
    out = invoke(["build", "--workers", "1", "--from", root, "-o", tmp_path / "out"])
    # A recognisable but broken labelme file is detected, skipped (a warning names it), and then
    # nothing is left to build; the others are not recognised at all.
    assert_one_error(out, *(["no label survived"] if layout == "labelme-garbage" else [str(root)]))


def test_coco_ids_like_ten_to_the_23_work(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    image = {**_good_image(root), "id": 10**23}
    ann = {"id": 10**23, "image_id": 10**23, "category_id": 10**23, "segmentation": SQUARE, "bbox": [0, 0, 4, 4]}
    _coco(root, [image], [ann], [{"id": 10**23, "name": "dog"}])
    out = _build(tmp_path, f"coco={root}")
    assert out.code == 0, out.stderr
    assert "dog" in (tmp_path / "out" / "label.csv").read_text()


def test_builder_api_raises_concepts_errors(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True)
    path.write_text("[" * 100000)
    with pytest.raises(SourceError, match="nested too deeply"):
        CocoBuilder(root).items()
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "a.json").write_text('{"shapes": {}, "imagePath": "a.jpg"}')
    b = LabelmeJsonBuilder(lm)
    with pytest.raises(SourceItemError, match="shapes is dict, not a list"):
        b.load(b.items()[0])
