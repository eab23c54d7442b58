"""Each format's polygons are rasterised as its own tool does (docs/decisions/rasterisation.md):
pycocotools for COCO and CVAT (whose mask export goes through datumaro's polygons_to_masks), PIL
ImageDraw for labelme, and ``_background_``/``__ignore__`` erase what was painted before them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as cocomask

from concepts.builders._raster import Shape, paint_layers, pycocotools_polygon_mask
from concepts.builders.labelme_json import labelme_mask
from fake_exports import label_layers, rgb, save_image, write_coco, write_cvat_xml
from hostile import invoke

POLYGONS = [
    [(1.0, 1.0), (9.0, 2.0), (7.0, 8.0), (2.0, 6.0)],
    [(0.3, 0.7), (11.6, 0.2), (11.9, 9.4), (5.5, 4.5), (0.2, 9.9)],
    [(2, 2), (10, 8), (10, 2), (2, 8)],  # self-intersecting bow tie
    [(-3.5, -2.0), (14.2, 3.3), (4.4, 12.8)],  # reaching past the canvas
]


def _coco(points: list, h: int, w: int) -> np.ndarray:
    rle = cocomask.frPyObjects([np.asarray(points, float).ravel().tolist()], h, w)
    return cocomask.decode(cocomask.merge(rle)).astype(bool)


@pytest.mark.parametrize("points", POLYGONS)
def test_pycocotools_polygon_mask_is_pycocotools(points: list) -> None:
    assert (pycocotools_polygon_mask(np.asarray(points, float), 10, 12) == _coco(points, 10, 12)).all()


def test_eraser_clears_every_category_below_it_only() -> None:
    h, w = 4, 6
    box = lambda x0, y0, x1, y1: Shape("bitmap", (x0, y0, np.ones((y1 - y0, x1 - x0), bool)), ())  # noqa: E731
    shapes = [
        Shape("bitmap", box(0, 0, 6, 4).data, (("object", 1),)),
        Shape("bitmap", box(0, 0, 3, 4).data, (("floor", 2),)),
        Shape("erase", box(2, 1, 5, 3), ()),
        Shape("bitmap", box(4, 0, 6, 2).data, (("object", 3),)),
    ]
    layers = paint_layers(shapes, h, w, Path("x"))
    expected_obj = np.ones((h, w), int)
    expected_obj[1:3, 2:5] = 0
    expected_obj[0:2, 4:6] = 3
    assert (layers["object"][0] == expected_obj).all()
    below = np.zeros((h, w), int)
    below[0, 4:6] = 1  # the object painted after the eraser covers object 1 where the eraser did not reach
    below[1, 5] = 1
    assert (layers["object"][1] == below).all()
    floor = np.zeros((h, w), int)
    floor[:, 0:3] = 2
    floor[1:3, 2] = 0
    assert len(layers["floor"]) == 1 and (layers["floor"][0] == floor).all()


def test_labelme_far_lines_and_circles_are_the_same_pixels_safely() -> None:
    h, w = 10, 12
    for kind, points in [("line", [(-1000.0, 5.0), (1000.0, 5.0)]), ("linestrip", [(-300.0, -300.0), (6.0, 5.0), (700.0, 5.0)])]:
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).line(points, fill=1, width=10)
        assert (labelme_mask(kind, np.asarray(points), h, w) == np.asarray(canvas, bool)).all(), kind
    # A radius PIL would walk for minutes covers the canvas; a far point misses it.
    assert labelme_mask("circle", np.array([(5.0, 5.0), (5.0, 1e9)]), h, w).all()
    assert not labelme_mask("point", np.array([(1e12, 3.0)]), h, w).any()


def test_cvat_and_coco_readers_agree_with_pycocotools(tmp_path: Path) -> None:
    h, w = 40, 50
    points = [(3.4, 2.2), (46.7, 5.9), (38.2, 36.6), (12.5, 31.1), (20.3, 17.8)]
    cvat = tmp_path / "cvat"
    write_cvat_xml(cvat / "annotations.xml", [{"name": "a.jpg", "width": w, "height": h, "shapes": [
        ("polygon", {"label": "blob", "occluded": 0, "z_order": 0, "points": ";".join(f"{x},{y}" for x, y in points)}, {})]}])
    save_image(cvat / "images" / "a.jpg", rgb(h, w))
    coco = tmp_path / "coco"
    flat = [v for p in points for v in p]
    write_coco(coco / "annotations" / "instances_default.json", [{"id": 1, "width": w, "height": h, "file_name": "a.jpg"}],
               [{"id": 1, "name": "blob", "supercategory": ""}],
               [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 1, 1], "segmentation": [flat]}])
    save_image(coco / "images" / "a.jpg", rgb(h, w))
    expected = _coco(points, h, w)
    for name, root in (("cvat", cvat), ("coco", coco)):
        out = tmp_path / f"out-{name}"
        result = invoke(["build", "--from", f"{name}={root}", "-o", out, "--workers", "1"])
        assert result.code == 0, result.stdout + result.stderr
        (layer,) = label_layers(out, "a.jpg", "object")
        assert ((layer == "blob") == expected).all(), name
