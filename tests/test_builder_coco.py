"""COCO (CVAT COCO 1.0 layout): real compact JSON, real images, zip; checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as cocomask

from concepts import builders
from concepts.builders.coco import CocoBuilder
from concepts.errors import SourceError, SourceItemError
from fake_exports import rgb, save_image, write_coco, zip_folder

H, W = 8, 10
BLOB = np.zeros((H, W), np.uint8)
BLOB[5:7, 1:4] = 1


def _column_major_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.ravel()
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    cats = [{"id": 3, "name": "dog", "supercategory": ""}, {"id": 17, "name": "ball", "supercategory": ""},
            {"id": 40, "name": "rug", "supercategory": ""}]
    anns = [
        # Two polygons, one object; then a ball over it; a crowd RLE (uncompressed); a bbox-only rug.
        {"id": 1, "image_id": 5, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [6, 0, 8, 0, 8, 2, 6, 2]],
         "area": 20, "bbox": [0, 0, 8, 4], "iscrowd": 0, "attributes": {"occluded": False, "colour": "brown"}},
        {"id": 2, "image_id": 5, "category_id": 17, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]], "area": 16,
         "bbox": [2, 2, 4, 4], "iscrowd": 0, "attributes": {"occluded": False}},
        {"id": 3, "image_id": 5, "category_id": 3, "segmentation": {"counts": _column_major_counts(BLOB), "size": [H, W]},
         "area": 6, "bbox": [1, 5, 3, 2], "iscrowd": 1, "attributes": {"occluded": False}},
        {"id": 4, "image_id": 5, "category_id": 40, "segmentation": [], "area": 4, "bbox": [8, 6, 2, 2], "iscrowd": 0,
         "attributes": {"occluded": False, "rotation": 0.0}},
        # Compressed-string RLE in the other subset, whose image id clashes with the first file.
        {"id": 1, "image_id": 5, "category_id": 17, "iscrowd": 1, "area": 6, "bbox": [1, 5, 3, 2],
         "segmentation": {"counts": cocomask.encode(np.asfortranarray(BLOB))["counts"].decode(), "size": [H, W]}},
    ]
    write_coco(root / "annotations" / "instances_train.json", [{"id": 5, "width": W, "height": H, "file_name": "x/a.jpg"}], cats, anns[:4])
    write_coco(root / "annotations" / "instances_val.json", [{"id": 5, "width": W, "height": H, "file_name": "x/a.jpg"},
                                                             {"id": 6, "width": W, "height": H, "file_name": "gone.jpg"}], cats, anns[4:])
    save_image(root / "images" / "train" / "x" / "a.jpg", rgb(H, W))
    save_image(root / "images" / "val" / "x" / "a.jpg", rgb(H, W))
    return root


def _decode(record, layer):
    lookup = {0: ""} | {i: n[0] for (c, i), n in record.names.items() if c == "object"}
    return np.vectorize(lookup.get, otypes=[object])(layer)


def test_pixels_and_subsets(export: Path) -> None:
    b = CocoBuilder(export)
    assert builders.detect(export) is CocoBuilder
    assert b.items() == [0, 1, 2]
    r = b.load(0)
    assert r.key == "train/x/a"
    top = _decode(r, r.pixel["object"][0])
    expected = np.full((H, W), "", object)
    expected[0:4, 0:4] = "dog"
    expected[0:2, 6:8] = "dog"
    expected[2:6, 2:6] = "ball"
    expected[BLOB.astype(bool)] = "dog"
    expected[6:8, 8:10] = "rug"
    assert (top == expected).all()
    second = np.full((H, W), "", object)
    second[2:4, 2:4] = "dog"
    second[5, 2:4] = "ball"
    assert (_decode(r, r.pixel["object"][1]) == second).all()
    assert len(r.pixel["object"]) == 2
    v = b.load(1)
    assert v.key == "val/x/a"
    assert (_decode(v, v.pixel["object"][0]) == np.where(BLOB.astype(bool), "ball", "")).all()
    with pytest.raises(SourceItemError, match=r"image 'gone.jpg' is missing; looked in val/, images/val/, images/default/, images/, \./"):
        b.load(2)


def test_attribute_mapping_and_zip(export: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text('[attributes.colour]\ncategory = "color_name"\n[labels.rug]\ndrop = true\n')
    archive = zip_folder(export, tmp_path / "coco.zip")
    assert CocoBuilder.detect(archive)
    b = CocoBuilder(archive, {"concepts": mapping})
    b.items()
    r = b.load(0)
    extra = r.pixel["color_name"][0]
    assert r.names[("color_name", int(extra[0, 0]))] == ("brown",)
    assert (extra > 0).sum() == 16 + 4
    assert r.pixel["object"][0][7, 9] == 0  # the rug is dropped


def test_bad_rle_and_bad_json(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    write_coco(root / "annotations" / "instances_default.json", [{"id": 1, "width": 4, "height": 4, "file_name": "a.jpg"}],
               [{"id": 1, "name": "x"}], [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 1, 1],
                                           "segmentation": {"counts": [3, 4], "size": [4, 4]}}])
    save_image(root / "images" / "a.jpg", rgb(4, 4))
    b = CocoBuilder(root)
    with pytest.raises(SourceItemError, match="RLE counts add up to 7, not 4 x 4 = 16"):
        b.load(0)
    (root / "annotations" / "instances_default.json").write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        CocoBuilder(root).items()
