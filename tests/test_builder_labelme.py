"""MIT LabelMe XML and labelme JSON: real XML/JSON/PNG written here, checked pixel by pixel."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts import builders
from concepts.builders.labelme import LabelMeBuilder
from concepts.builders.labelme_json import LabelmeJsonBuilder
from concepts.errors import SourceItemError, UnsafeInputError
from fake_exports import labelme_rgba_mask, png_bytes, rgb, save_image, write_labelme_json, write_labelme_xml

H, W = 10, 12


def _named(record, category, layer):
    lookup = {0: ""} | {i: n[0] for (c, i), n in record.names.items() if c == category}
    return np.vectorize(lookup.get, otypes=[object])(layer)


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "lm"
    mask = np.zeros((H, W), bool)
    mask[6:9, 0:3] = True
    rgba = labelme_rgba_mask(mask)
    rgba[5, 0:3] = (255, 0, 0, 20)  # faint antialiased fringe: below the threshold
    save_image(root / "Masks" / "street" / "s1_mask_4.png", rgba)
    write_labelme_xml(root / "Annotations" / "street" / "s1.xml", "s1.jpg", "street", (H, W), [
        {"name": "car", "id": 0, "polygon": [(0, 0), (8, 0), (8, 5), (0, 5)], "hasparts": "1,2"},
        {"name": "wheel", "id": 1, "polygon": [(1, 3), (3, 3), (3, 5), (1, 5)], "ispartof": "0"},
        {"name": "window", "id": 2, "box": (4, 0, 7, 2), "ispartof": "0", "attributes": "glass, tinted=yes"},
        {"name": "tree", "id": 3, "polygon": [(6, 2), (12, 2), (12, 10), (6, 10)], "deleted": 1},
        {"name": "puddle", "id": 4, "mask": "s1_mask_4.png"},
        {"name": "person", "id": 5, "polygon": [(7, 0), (10, 0), (10, 4), (7, 4)]},
    ])
    save_image(root / "Images" / "street" / "s1.jpg", rgb(H, W))
    return root


def test_labelme_xml_objects_parts_masks(collection: Path) -> None:
    assert builders.detect(collection) is LabelMeBuilder
    b = LabelMeBuilder(collection)
    assert b.items() == [0]
    r = b.load(0)
    assert r.key == "street/s1" and r.image == collection / "Images" / "street" / "s1.jpg"
    obj = [_named(r, "object", layer) for layer in r.pixel["object"]]
    expected = np.full((H, W), "", object)
    expected[0:5, 0:8] = "car"
    expected[6:9, 0:3] = "puddle"
    expected[0:4, 7:10] = "person"
    assert len(obj) == 2 and (obj[0] == expected).all()
    assert (obj[1] == np.where((np.arange(H)[:, None] < 4) & (np.arange(W) == 7), "car", "")).all()
    part = [_named(r, "part", layer) for layer in r.pixel["part"]]
    expected_part = np.full((H, W), "", object)
    expected_part[3:5, 1:3] = "wheel"
    expected_part[0:2, 4:7] = "window"
    assert len(part) == 1 and (part[0] == expected_part).all()
    assert r.skipped == {"deleted": 1}


def test_labelme_xml_attributes_mapping(collection: Path, tmp_path: Path) -> None:
    m = tmp_path / "c.yaml"
    m.write_text("labels:\n  wheel: {category: object}\nattributes:\n  glass: {category: material}\n  tinted: drop\n")
    b = LabelMeBuilder(collection, {"concepts": m})
    b.items()
    r = b.load(0)
    mat = r.pixel["material"][0]
    assert ((mat > 0) == np.pad(np.ones((2, 3), bool), ((0, H - 2), (4, W - 7)))).all()
    assert r.names[("material", int(mat[0, 4]))] == ("glass",)
    assert _named(r, "object", r.pixel["object"][0])[3, 1] == "wheel"


def test_labelme_xml_missing_image_and_entities(collection: Path) -> None:
    (collection / "Images" / "street" / "s1.jpg").unlink()
    with pytest.raises(SourceItemError, match="not in the collection"):
        LabelMeBuilder(collection).load(0)
    bad = collection / "Annotations" / "street" / "s2.xml"
    bad.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><annotation><filename>&x;</filename></annotation>')
    with pytest.raises(UnsafeInputError, match="s2.xml"):
        LabelMeBuilder(collection).items()


def test_labelme_json(tmp_path: Path) -> None:
    root = tmp_path / "lj"
    patch = np.zeros((3, 2), np.uint8)
    patch[1:, :] = 1
    shapes = [
        {"label": "sky", "points": [[0, 0], [12, 0], [12, 3], [0, 3]], "shape_type": "polygon"},
        {"label": "box", "points": [[9, 9], [5, 6]], "shape_type": "rectangle"},
        {"label": "sun", "points": [[2.5, 1.5], [3.5, 1.5]], "shape_type": "circle"},
        {"label": "blob", "points": [[0, 6], [1, 8]], "shape_type": "mask", "mask": base64.b64encode(png_bytes(patch * 255)).decode()},
        {"label": "wire", "points": [[0, 0], [5, 5]], "shape_type": "line"},
        {"label": "p", "points": [[1, 1]], "shape_type": "point"},
        {"label": "_background_", "points": [[0, 0], [1, 0], [1, 1]], "shape_type": "polygon"},
        {"label": "old", "points": [[10, 5], [12, 5], [12, 6], [10, 6]]},  # no shape_type: polygon
    ]
    write_labelme_json(root / "a" / "one.json", "..\\img\\one.jpg", shapes, size=(H, W), flags={"outdoor": True, "blurry": False})
    save_image(root / "img" / "one.jpg", rgb(H, W))
    # Embedded imageData, no file on disk.
    write_labelme_json(root / "two.json", "missing.png", [shapes[0]], size=(4, 5), image_data=png_bytes(rgb(4, 5)))
    assert builders.detect(root) is LabelmeJsonBuilder
    b = LabelmeJsonBuilder(root)
    assert b.items() == [0, 1]
    r = b.load(0)
    assert r.key == "a/one"
    # Pixels are labelme's own (tests/test_builder_labelme_json.py checks them against shape_to_mask);
    # here: lines, points and the eraser are painted, not skipped.
    assert not {"line", "point", "_background_"} & set(r.skipped)
    assert [r.names[("scene", i)] for i in r.image_level["scene"]] == [("outdoor-s",)]
    two = b.load(1)
    assert isinstance(two.image, bytes) and Image.open(__import__("io").BytesIO(two.image)).size == (5, 4)


def test_labelme_json_exif_and_size_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "exif"
    im = Image.fromarray(rgb(4, 6))  # stored 6 wide x 4 high; orientation 6 shows it 4 wide x 6 high
    exif = Image.Exif()
    exif[0x0112] = 6
    (root).mkdir()
    im.save(root / "r.jpg", exif=exif.tobytes())
    write_labelme_json(root / "r.json", "r.jpg", [{"label": "a", "points": [[0, 0], [4, 0], [4, 2], [0, 2]], "shape_type": "polygon"}], size=(6, 4))
    r = LabelmeJsonBuilder(root).load(0)
    assert isinstance(r.image, Image.Image) and r.image.size == (4, 6)
    assert r.pixel["object"][0].shape == (6, 4) and r.pixel["object"][0][:2].all()
    data = json.loads((root / "r.json").read_text())
    data["imageHeight"], data["imageWidth"] = 4, 6
    (root / "r.json").write_text(json.dumps(data))
    with pytest.raises(SourceItemError, match="disagree with the image"):
        LabelmeJsonBuilder(root).load(0)


def _voc_box_xml(path: Path, stem: str) -> None:
    """A Pascal VOC annotation (devkit / LabelImg style): root <annotation> too, but <size> and <bndbox>."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>VOC2012</folder><filename>{stem}.jpg</filename><size><width>{W}</width>"
                    f"<height>{H}</height><depth>3</depth></size><segmented>0</segmented><object><name>cat</name>"
                    "<pose>Left</pose><truncated>0</truncated><difficult>0</difficult><bndbox><xmin>2</xmin>"
                    "<ymin>2</ymin><xmax>8</xmax><ymax>6</ymax></bndbox></object></annotation>")


def test_labelme_xml_detection_leaves_pascal_voc_xml(collection: Path, tmp_path: Path) -> None:
    # A MIT LabelMe collection whose first file annotates nothing yet is still LabelMe.
    write_labelme_xml(collection / "Annotations" / "street" / "a0.xml", "a0.jpg", "street", None, [])
    assert LabelMeBuilder.detect(collection).confidence == 0.9
    # VOC folders (Annotations/ + JPEGImages/) and LabelImg-style VOC files beside images are not LabelMe.
    voc = tmp_path / "VOC2012"
    for stem in ("2008_000001", "2008_000002"):
        _voc_box_xml(voc / "Annotations" / f"{stem}.xml", stem)
        save_image(voc / "JPEGImages" / f"{stem}.jpg", rgb(H, W))
    # A VOC file for an image without boxes (no <object>) sorts first; the sample decides, not one file.
    (voc / "Annotations" / "2008_000000.xml").write_text("<annotation><filename>2008_000000.jpg</filename></annotation>")
    flat = tmp_path / "labelimg"
    _voc_box_xml(flat / "img.xml", "img")
    save_image(flat / "img.jpg", rgb(H, W))
    for folder in (voc, flat):
        found = LabelMeBuilder.detect(folder)
        assert not found and "bndbox" in found.unmet[0], (folder, found)
    # CVAT's LabelMe 3.0 layout (xml beside the image) stays LabelMe.
    cvat = tmp_path / "cvat_labelme"
    write_labelme_xml(cvat / "img.xml", "img.jpg", "", (H, W), [{"name": "car", "id": 0, "polygon": [(0, 0), (4, 0), (4, 4)]}])
    assert LabelMeBuilder.detect(cvat).confidence == 0.6
