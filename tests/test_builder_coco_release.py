"""The COCO release as downloaded (instances, stuff, panoptic, and the files beside them), built by the CLI.

Expected pixels come from the format's own tools: pycocotools' ``COCO.annToMask`` on the very file
written (polygons and RLE), and planted panoptic ids (R + 256 G + 256^2 B) for panoptic PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from concepts import builders
from concepts.builders.coco import CocoBuilder
from concepts.errors import SourceItemError
from coco_release import H, IMAGES, W, id_png, panoptic_ids, write_release
from hostile import assert_one_error, invoke


def _names(record, category: str, layer: np.ndarray) -> np.ndarray:
    lookup = {0: ""} | {i: n[0] for (c, i), n in record.names.items() if c == category}
    return np.vectorize(lookup.get, otypes=[object])(layer)


def _painted_in_order(path: Path, image_id: int, skip: tuple[str, ...] = ()) -> tuple[np.ndarray, list]:
    """Top label per pixel painting annToMask masks in file order (later on top), and the masks."""
    coco = COCO(str(path))
    top = np.full((H, W), "", object)
    masks = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        name = coco.loadCats(ann["category_id"])[0]["name"]
        if name in skip:
            continue
        mask = coco.annToMask(ann).astype(bool)
        masks.append((name, mask))
        top[mask] = name
    return top, masks


def _build(tmp_path: Path, *args) -> tuple:
    out = invoke(["build", "--from", *args, "-o", tmp_path / "out", "--workers", "1"])
    return out, invoke(["validate", tmp_path / "out"]) if out.code == 0 else None


def test_release_builds_detected_and_validates(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco")
    assert builders.detect(root) is CocoBuilder
    out, valid = _build(tmp_path, root)
    assert out.code == 0, out.stderr
    assert ("skipped 3 COCO files that are not instance annotations: captions_val2017.json, "
            "image_info_test-dev2017.json, person_keypoints_val2017.json") in out.stderr
    assert valid.code == 0, valid.stdout + valid.stderr
    rows = (tmp_path / "out" / "label.csv").read_text().splitlines()
    labels = {row.split(",")[1]: row.split(",")[2].split("(")[0] for row in rows[1:]}
    assert {k: v for k, v in labels.items() if v != "color"} == {
        "person": "object", "chair": "object", "bear": "object", "grass": "stuff", "sky-other": "stuff"}
    assert "skipped 2 annotation(s): COCO-Stuff 'other' (thing pixels)" in out.stdout


def test_instance_and_stuff_pixels_follow_pycocotools(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco")
    b = CocoBuilder(root)
    assert b.items() == [0, 1]
    for item, image in enumerate(IMAGES):
        r = b.load(item)
        assert r.key == f"val2017/{image['file_name'][:-4]}"
        assert r.image == root / "val2017" / image["file_name"]
        things, masks = _painted_in_order(root / "annotations" / "instances_val2017.json", image["id"])
        assert (_names(r, "object", r.pixel["object"][0]) == things).all()
        stuff, _ = _painted_in_order(root / "annotations" / "stuff_val2017.json", image["id"], skip=("other",))
        assert (_names(r, "stuff", r.pixel["stuff"][0]) == stuff).all()
        assert len(r.pixel["stuff"]) == 1
    # Image 139: the chair stays in the second layer under the people (polygon and crowd RLE).
    r = b.load(0)
    _, masks = _painted_in_order(root / "annotations" / "instances_val2017.json", 139)
    people = masks[1][1] | masks[2][1]
    second = np.where(masks[0][1] & people, "chair", "")
    assert (_names(r, "object", r.pixel["object"][1]) == second).all()


@pytest.mark.parametrize("nested", [False, True], ids=["panoptic_val2017", "nested"])
def test_panoptic_pixels_are_the_planted_segments(tmp_path: Path, nested: bool) -> None:
    root = write_release(tmp_path / "coco", things=False, stuff=False, panoptic=True, nested_png=nested)
    assert builders.detect(root) is CocoBuilder
    b = CocoBuilder(root)
    assert b.items() == [0]
    r = b.load(0)
    ids = panoptic_ids()
    expected_object = np.where(ids == 2_000_001, "bear", "")
    expected_stuff = np.select([ids == 6_953_322, ids == 11_768_063], ["sky-other-merged", "grass-merged"], "")
    assert (_names(r, "object", r.pixel["object"][0]) == expected_object).all()
    assert (_names(r, "stuff", r.pixel["stuff"][0]) == expected_stuff).all()
    assert len(r.pixel["object"]) == len(r.pixel["stuff"]) == 1
    out, valid = _build(tmp_path, root)
    assert out.code == 0 and valid.code == 0, out.stderr


def test_panoptic_png_with_an_unlisted_segment_is_skipped(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", things=False, stuff=False, panoptic=True)
    ids = panoptic_ids()
    ids[0, 0] = 5
    id_png(ids).save(root / "annotations" / "panoptic_val2017" / "000000000285.png")
    with pytest.raises(SourceItemError, match="segment id 5 that segments_info does not list"):
        CocoBuilder(root).load(0)
    (root / "annotations" / "panoptic_val2017" / "000000000285.png").unlink()
    with pytest.raises(SourceItemError, match=r"panoptic PNG '000000000285.png' is missing; looked in annotations/panoptic_val2017/"):
        CocoBuilder(root).load(0)


def test_instances_stuff_and_panoptic_all_paint_one_image(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", panoptic=True)
    r = CocoBuilder(root).load(1)
    objects = {n[0] for (c, _), n in r.names.items() if c == "object"}
    stuff = {n[0] for (c, _), n in r.names.items() if c == "stuff"}
    assert objects == {"bear"}
    assert stuff == {"sky-other", "grass", "sky-other-merged", "grass-merged"}


@pytest.mark.parametrize("image_dir", ["val2017", "images/val2017", "images", ""])
def test_image_layouts(tmp_path: Path, image_dir: str) -> None:
    root = write_release(tmp_path / "coco", image_dir=image_dir)
    # Files of other formats beside the release: a labelme JSON and a text file.
    (root / "val2017").mkdir(exist_ok=True)
    (root / "val2017" / "000000000139.json").write_text(json.dumps(
        {"version": "5.4.1", "flags": {}, "shapes": [], "imagePath": "000000000139.jpg", "imageData": None,
         "imageHeight": H, "imageWidth": W}))
    (root / "README.txt").write_text("COCO 2017\n")
    assert builders.detect(root) is CocoBuilder
    b = CocoBuilder(root)
    assert [b.load(i).image for i in b.items()] == [root / image_dir / im["file_name"] for im in IMAGES]


def test_file_names_with_subfolders(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", stuff=False, image_dir="val2017/part")
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    for im in data["images"]:
        im["file_name"] = "part/" + im["file_name"]
    path.write_text(json.dumps(data))
    b = CocoBuilder(root)
    r = b.load(0)
    assert r.key == "val2017/part/000000000139"
    assert r.image == root / "val2017" / "part" / "000000000139.jpg"


def test_missing_image_says_where_it_was_looked_for(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", skip_images=("000000000285.jpg",))
    with pytest.raises(SourceItemError) as e:
        CocoBuilder(root).load(1)
    assert "image '000000000285.jpg' is missing; looked in val2017/, images/val2017/, images/default/, images/, ./" in str(e.value)
    out, valid = _build(tmp_path, root)
    assert out.code == 0 and "skipped 1 image(s): missing image" in out.stdout, out.stdout + out.stderr
    strict = invoke(["build", "--from", root, "-o", tmp_path / "strict", "--workers", "1", "--strict"])
    assert_one_error(strict, "image '000000000285.jpg' is missing", "looked in val2017/")


def test_malformed_instances_file_is_an_error_other_files_are_not_read(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco")
    (root / "annotations" / "captions_val2017.json").write_text("{not json")
    out, valid = _build(tmp_path, root)
    assert out.code == 0 and valid.code == 0, out.stderr
    (root / "annotations" / "instances_val2017.json").write_text("[]")
    out = invoke(["build", "--from", root, "-o", tmp_path / "bad", "--workers", "1"])
    assert_one_error(out, "instances_val2017.json", "not a COCO instances file")


def test_keypoints_and_captions_alone_are_refused(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", things=False, stuff=False)
    out = invoke(["build", "--from", f"coco={root}", "-o", tmp_path / "out", "--workers", "1"])
    assert_one_error(out, "no COCO instance annotations found", "captions_val2017.json", "person_keypoints_val2017.json")


def test_a_file_read_by_its_content(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", stuff=False)
    (root / "annotations" / "instances_val2017.json").rename(root / "annotations" / "my_export.json")
    (root / "annotations" / "settings.json").write_text('{"threshold": 0.5}')
    (root / "my_export").symlink_to(root / "val2017")
    assert builders.detect(root) is CocoBuilder
    b = CocoBuilder(root)
    assert b.load(0).key == "my_export/000000000139"


def test_mapping_moves_stuff_and_paints_supercategories(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco")
    mapping = tmp_path / "m.toml"
    mapping.write_text('[labels]\ngrass = { category = "material" }\nother = { category = "stuff", name = "thing pixels" }\n'
                       '[attributes]\nsupercategory = "supercategory"\n')
    b = CocoBuilder(root, {"concepts": mapping})
    r = b.load(1)
    _, masks = _painted_in_order(root / "annotations" / "stuff_val2017.json", 285)
    grass = dict(masks)["grass"]
    assert (_names(r, "material", r.pixel["material"][0]) == np.where(grass, "grass", "")).all()
    assert {n[0] for (c, _), n in r.names.items() if c == "stuff"} == {"sky-other", "thing pixels"}
    parents = {n[0] for (c, _), n in r.names.items() if c == "supercategory"}
    assert parents == {"animal", "plant", "sky", "other"}
    out, valid = _build(tmp_path, root, "--concepts", mapping)
    assert out.code == 0 and valid.code == 0, out.stderr


@pytest.mark.parametrize("edit, needles", [
    (lambda d: d["annotations"][0].update(segments_info={"id": 1}), ("annotations[0].segments_info", "is not a list")),
    (lambda d: d["categories"][1].update(isthing=2), ("categories[1].isthing 2 is not 0 or 1",)),
    (lambda d: d["annotations"][0]["segments_info"][0].update(id=0), ("segments_info[0].id 0 is not a segment id",)),
    (lambda d: d["annotations"][0]["segments_info"][2].update(category_id=999), ("segments_info[2] refers to unknown category 999",)),
], ids=["segments-not-list", "isthing", "segment-id-0", "unknown-category"])
def test_malformed_panoptic_file_is_one_error_naming_it(tmp_path: Path, edit, needles) -> None:
    root = write_release(tmp_path / "coco", things=False, stuff=False, panoptic=True)
    path = root / "annotations" / "panoptic_val2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    out = invoke(["build", "--from", root, "-o", tmp_path / "out", "--workers", "1"])
    assert_one_error(out, "panoptic_val2017.json", *needles)
    assert not (tmp_path / "out").exists()


def test_panoptic_png_outside_the_input_is_not_read(tmp_path: Path) -> None:
    root = write_release(tmp_path / "coco", things=False, stuff=False, panoptic=True)
    id_png(panoptic_ids()).save(tmp_path / "secret.png")
    path = root / "annotations" / "panoptic_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["file_name"] = "../../../secret.png"
    path.write_text(json.dumps(data))
    with pytest.raises(SourceItemError, match="lies outside the input"):
        CocoBuilder(root).load(0)


def test_starter_mapping_keeps_stuff_as_stuff(tmp_path: Path) -> None:
    # A starter file passed straight back must build the same categories as no mapping at all.
    root = write_release(tmp_path / "coco")
    starter = invoke(["build", "--from", root, "--print-concepts"])
    assert starter.code == 0, starter.stderr
    assert '"grass": {category: stuff' in starter.stdout and '"person": {category: object' in starter.stdout
    mapping = tmp_path / "starter.yaml"
    mapping.write_text(starter.stdout)
    out, valid = _build(tmp_path, root, "--concepts", mapping)
    assert out.code == 0 and valid.code == 0, out.stderr
    rows = (tmp_path / "out" / "label.csv").read_text().splitlines()
    assert any(row.split(",")[1] == "grass" and row.split(",")[2].startswith("stuff") for row in rows[1:])
