"""Pascal VOC segmentation: a devkit-layout release (VOCdevkit/VOC2012 with its other folders and the
devkit's own files) written with real palette PNGs, built through the CLI and checked pixel by pixel
against indices planted by construction; detection against LabelMe, CVAT masks and boxes-only VOC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts import builders
from concepts.builders.cvat_mask import CvatMaskBuilder
from concepts.builders.labelme import LabelMeBuilder
from concepts.builders.voc import DEVKIT_CLASSES, VocBuilder, devkit_colour
from concepts.errors import SourceError, SourceItemError
from fake_exports import label_layers, rgb, save_image, write_labelme_xml
from hostile import assert_one_error, invoke
from voc_release import CLASSES, colormap, expected_names, plant, save_palette_png, voc_xml, write_devkit_files

H, W = 12, 16
TRAIN, VAL, BOXES_ONLY = "2007_000032", "2007_000039", "2008_000008"
SCENES = {
    # aeroplane and person rectangles, each with a void ring as the devkit's masks have along outlines.
    TRAIN: [(1, (0, 6, 0, 9)), (15, (5, 12, 8, 16))],
    # tvmonitor touching the image edge, a dog inside a sofa (later paints over earlier).
    VAL: [(20, (0, 5, 10, 16)), (18, (4, 12, 0, 10)), (12, (6, 10, 2, 7))],
}


def _release(root: Path, *, labelmap: str | None = None) -> Path:
    """``root/VOCdevkit/VOC2012`` as the trainval tar extracts, plus the devkit's own files."""
    devkit = root / "VOCdevkit"
    voc = devkit / "VOC2012"
    write_devkit_files(devkit)
    for stem, objects in SCENES.items():
        idx = plant(H, W, objects)
        save_palette_png(voc / "SegmentationClass" / f"{stem}.png", idx)
        # Instance indices 1..n in the same palette; not read (see the builder's docstring).
        inst = np.where(idx == 255, 255, 0).astype(np.uint8)
        for n, (cls, _) in enumerate(objects, start=1):
            inst[idx == cls] = n
        save_palette_png(voc / "SegmentationObject" / f"{stem}.png", inst)
        boxes = [(CLASSES[cls], (c0 + 1, r0 + 1, c1, r1)) for cls, (r0, r1, c0, c1) in objects]
        voc_xml(voc / "Annotations" / f"{stem}.xml", f"{stem}.jpg", (H, W), boxes, segmented=True)
        save_image(voc / "JPEGImages" / f"{stem}.jpg", rgb(H, W))
    voc_xml(voc / "Annotations" / f"{BOXES_ONLY}.xml", f"{BOXES_ONLY}.jpg", (H, W), [("cat", (2, 2, 8, 8))], segmented=False)
    save_image(voc / "JPEGImages" / f"{BOXES_ONLY}.jpg", rgb(H, W))
    sets = voc / "ImageSets"
    for task, lists in {"Segmentation": {"train": [TRAIN], "val": [VAL], "trainval": [TRAIN, VAL]},
                        "Main": {"train": [TRAIN, BOXES_ONLY], "val": [VAL], "trainval": [TRAIN, BOXES_ONLY, VAL],
                                 "cat_train": [f"{TRAIN} -1", f"{BOXES_ONLY}  1"]},
                        "Layout": {"train": []}, "Action": {"train": []}}.items():
        for name, ids in lists.items():
            (sets / task).mkdir(parents=True, exist_ok=True)
            (sets / task / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    if labelmap is not None:
        (voc / "labelmap.txt").write_text(labelmap)
    return voc


def test_devkit_table_is_the_published_one() -> None:
    """The 21 classes and the bit-interleaved colour map, as VOCinit.m and VOClabelcolormap.m give them."""
    assert list(DEVKIT_CLASSES) == CLASSES
    cmap = colormap()
    assert [devkit_colour(i) for i in range(256)] == [tuple(int(v) for v in c) for c in cmap]
    # Values printed in the devkit documentation's class colour figure.
    assert tuple(cmap[1]) == (128, 0, 0) and tuple(cmap[15]) == (192, 128, 128)
    assert tuple(cmap[20]) == (0, 64, 128) and tuple(cmap[255]) == (224, 224, 192)


def test_release_builds_with_detection_and_validates(tmp_path: Path) -> None:
    download = tmp_path / "download"
    voc = _release(download)
    (download / "README.txt").write_text("VOC2012 trainval, extracted\n")
    (download / "notes.json").write_text('{"annotations": "see VOCdevkit"}\n')
    for path in (download, download / "VOCdevkit", voc):
        assert builders.detect(path) is VocBuilder, path
        assert not LabelMeBuilder.detect(path), path
    b = VocBuilder(download)
    assert b.base == voc and b.items() == [TRAIN, VAL]  # trainval repeats train + val: each image once

    out = tmp_path / "out"
    result = invoke(["build", "--from", download, "-o", out, "--workers", "1", "--no-color", "--no-synonyms"])
    assert result.code == 0, result.stderr
    assert "wrote 2 images (voc: 2)" in result.stdout and "skipped" not in result.stdout
    for stem, objects in SCENES.items():
        (layer,) = label_layers(out, f"{stem}.jpg", "object")
        assert (layer == expected_names(plant(H, W, objects))).all(), (stem, layer)
    labels = (out / "label.csv").read_text()
    for absent in ("background", "void", "ignored", "cat"):
        assert f",{absent}," not in labels and f"\n{absent}," not in labels, labels
    check = invoke(["validate", out])
    assert check.code == 0, check.stdout + check.stderr


def test_masks_read_as_the_devkit_reads_them(tmp_path: Path) -> None:
    voc = _release(tmp_path)
    b = VocBuilder(voc)
    b.items()
    idx = plant(H, W, SCENES[TRAIN])
    idx[11, 0] = 40  # an index that is no VOC class
    save_palette_png(voc / "SegmentationClass" / f"{TRAIN}.png", idx)
    r = b.load(TRAIN)
    names = {i: n[0] for (c, i), n in r.names.items()}
    got = np.vectorize(lambda i: names.get(int(i), ""), otypes=[object])(r.pixel["object"][0])
    assert (got == expected_names(idx)).all() and r.skipped == {"value not a VOC class or colour": 1}
    # A re-saved RGB mask: the same labels through the devkit colours (void 224,224,192 included).
    rgb_mask = colormap()[plant(H, W, SCENES[TRAIN])]
    Image.fromarray(rgb_mask).save(voc / "SegmentationClass" / f"{TRAIN}.png")
    r = b.load(TRAIN)
    names = {i: n[0] for (c, i), n in r.names.items()}
    got = np.vectorize(lambda i: names.get(int(i), ""), otypes=[object])(r.pixel["object"][0])
    assert (got == expected_names(plant(H, W, SCENES[TRAIN]))).all() and r.skipped == {}
    # A palette whose colours disagree with the indices: which class is meant is not knowable.
    other = colormap()
    other[[1, 15]] = other[[15, 1]]
    save_palette_png(voc / "SegmentationClass" / f"{TRAIN}.png", plant(H, W, SCENES[TRAIN]), other)
    with pytest.raises(SourceItemError, match=r"palette colour of index 1 is \(192, 128, 128\).*'aeroplane'"):
        b.load(TRAIN)
    # Listed in the subsets without a mask (a test-set image): skipped, named.
    (voc / "SegmentationClass" / f"{VAL}.png").unlink()
    with pytest.raises(SourceItemError, match="no SegmentationClass mask") as e:
        b.load(VAL)
    assert e.value.reason == "no segmentation mask"


def test_detection_only_voc_is_named_as_such(tmp_path: Path) -> None:
    voc = _release(tmp_path / "det")
    import shutil

    shutil.rmtree(voc / "SegmentationClass")
    shutil.rmtree(voc / "SegmentationObject")
    shutil.rmtree(voc / "ImageSets" / "Segmentation")
    assert builders.detect(tmp_path / "det") is VocBuilder
    assert not LabelMeBuilder.detect(voc) and "bndbox" in " ".join(LabelMeBuilder.detect(voc).unmet)
    result = invoke(["build", "--from", tmp_path / "det", "-o", tmp_path / "out", "--workers", "1"])
    line = assert_one_error(result, "detection boxes only", "no SegmentationClass/", "Segmentation mask 1.1")
    assert "not in the collection" not in line and str(voc) in line


def test_mit_labelme_collection_is_not_voc(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    write_labelme_xml(root / "Annotations" / "street" / "s1.xml", "s1.jpg", "street", (H, W),
                      [{"name": "car", "id": 0, "polygon": [(0, 0), (8, 0), (8, 5), (0, 5)]}])
    save_image(root / "Images" / "street" / "s1.jpg", rgb(H, W))
    assert builders.detect(root) is LabelMeBuilder
    assert not VocBuilder.detect(root)


def test_labelmap_folder_cvat_mask_wins_and_voc_agrees(tmp_path: Path) -> None:
    """With labelmap.txt both readers apply; cvat-mask wins detection and both give the same labels."""
    labelmap = "# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{','.join(str(int(v)) for v in colormap()[i])}::\n" for i, name in enumerate(CLASSES)) + "ignored:224,224,192::\n"
    voc = _release(tmp_path, labelmap=labelmap)
    assert builders.detect(voc) is CvatMaskBuilder
    assert 0 < VocBuilder.detect(voc).confidence < CvatMaskBuilder.detect(voc).confidence
    cvat, via_voc = CvatMaskBuilder(voc), VocBuilder(voc)
    assert [n for _, n in cvat.items()] == via_voc.items() == [TRAIN, VAL]
    for (subset, name), item in zip(cvat.items(), via_voc.items()):
        a, b = cvat.load((subset, name)), via_voc.load(item)
        named = [np.vectorize(lambda i, r=r: r.names[("object", int(i))][0] if i else "", otypes=[object])(r.pixel["object"][0])
                 for r in (a, b)]
        assert (named[0] == named[1]).all() and (named[1] == expected_names(plant(H, W, SCENES[name]))).all()
        assert a.skipped == b.skipped == {}
    for out, spec in ((tmp_path / "o1", f"voc={voc}"), (tmp_path / "o2", f"cvat-mask={voc}")):
        result = invoke(["build", "--from", spec, "-o", out, "--workers", "1", "--no-color", "--no-synonyms"])
        assert result.code == 0, result.stderr
    assert (tmp_path / "o1" / "label.csv").read_text() == (tmp_path / "o2" / "label.csv").read_text()


def test_two_releases_must_be_named(tmp_path: Path) -> None:
    _release(tmp_path / "a")
    (tmp_path / "a" / "VOCdevkit" / "VOC2012").rename(tmp_path / "a" / "VOCdevkit" / "VOC2011")
    _release(tmp_path / "a")
    with pytest.raises(SourceError, match=r"holds 2 VOC segmentation folders .*voc="):
        VocBuilder(tmp_path / "a")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_listed_names_never_lead_outside(tmp_path: Path, how: str) -> None:
    import os

    from hostile import SECRET, assert_not_in_tree, assert_unchanged, snapshot

    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    Image.fromarray(rgb(H, W, 90)).save(secret, "JPEG", comment=SECRET.encode())
    save_palette_png(tmp_path / "outside" / "secret.png", plant(H, W, SCENES[TRAIN]))
    voc = _release(tmp_path / "export")
    listed = {"dotdot": "../../../outside/secret", "absolute": str(secret.with_suffix("")), "symlink": "linked"}[how]
    if how == "symlink":
        os.symlink(secret, voc / "JPEGImages" / "linked.jpg")
        os.symlink(tmp_path / "outside" / "secret.png", voc / "SegmentationClass" / "linked.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(f"{VAL}\n{listed}\n")
    before = snapshot(tmp_path / "export", tmp_path / "outside")
    result = invoke(["build", "--from", voc, "-o", tmp_path / "out", "--workers", "1", "--no-color"])
    assert result.code == 0, result.stderr
    assert "wrote 2 images" in result.stdout and "skipped 1 image(s): path outside the input" in result.stdout
    assert_not_in_tree(tmp_path / "out")
    strict = invoke(["build", "--from", voc, "-o", tmp_path / "out2", "--workers", "1", "--strict"])
    assert_one_error(strict, "val.txt", "outside the input")
    assert_unchanged(before, snapshot(tmp_path / "export", tmp_path / "outside"))


def test_pascal_context_beside_the_voc2010_release_stays_pascal(tmp_path: Path) -> None:
    """The VOC2010 release holds SegmentationClass/ too; with Context/Part beside it, ``pascal`` wins."""
    from concepts.builders.pascal import PascalBuilder
    from fake_sources import PascalImage, write_pascal

    root = write_pascal(tmp_path / "p", [PascalImage("2008_000002", rgb(H, W), context=np.full((H, W), 2, np.uint16))])
    voc2010 = root / "VOCdevkit" / "VOC2010"
    save_palette_png(voc2010 / "SegmentationClass" / "2008_000002.png", plant(H, W, SCENES[TRAIN]))
    (voc2010 / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc2010 / "ImageSets" / "Segmentation" / "train.txt").write_text("2008_000002\n")
    assert builders.detect(root) is PascalBuilder
    assert builders.detect(voc2010) is VocBuilder
