"""CVAT Segmentation mask 1.1: a real export layout (labelmap.txt, ImageSets, SegmentationClass,
SegmentationObject, JPEGImages; folder and zip) built end to end and checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts import builders
from concepts.builders.cvat_mask import CvatMaskBuilder
from concepts.errors import SourceError
from concepts.unify import BuildOptions, build_dataset
from fake_exports import assert_valid, label_layers, rgb, save_image, zip_folder

H, W = 6, 8
LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\nsky:51,221,255::\ngrass:36,179,83::\n"
COLOURS = {"cat": (250, 50, 83), "sky": (51, 221, 255), "grass": (36, 179, 83)}


def _paint(names: np.ndarray) -> np.ndarray:
    out = np.zeros(names.shape + (3,), np.uint8)
    for name, colour in COLOURS.items():
        out[names == name] = colour
    return out


def _scene() -> np.ndarray:
    names = np.full((H, W), "", object)
    names[:2] = "sky"
    names[2:] = "grass"
    names[2:5, 1:4] = "cat"
    names[5, 7] = ""  # background
    return names


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A project-style export with train and val subsets, one image without a mask, one palette PNG."""
    root = tmp_path / "smask"
    (root / "labelmap.txt").parent.mkdir(parents=True)
    (root / "labelmap.txt").write_text(LABELMAP)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("field\nfolder/plain\n")
    (sets / "val.txt").write_text("palette\n")
    scene = _scene()
    save_image(root / "SegmentationClass" / "field.png", _paint(scene))
    # SegmentationObject holds instance colours; it must not be read as classes.
    save_image(root / "SegmentationObject" / "field.png", np.full((H, W, 3), (128, 0, 0), np.uint8))
    # A VOC-style palette PNG: indices whose palette entries are the labelmap colours.
    idx = np.zeros((H, W), np.uint8)
    idx[:3] = 1
    idx[3:, 4:] = 2
    pal = Image.fromarray(idx, "P")
    # Palette order differs from labelmap.txt order, so indices must not be read as line numbers.
    pal.putpalette([0, 0, 0, *COLOURS["sky"], *COLOURS["cat"]] + [0] * (256 - 3) * 3)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    pal.save(root / "SegmentationClass" / "palette.png")
    save_image(root / "JPEGImages" / "field.jpg", rgb(H, W))
    save_image(root / "JPEGImages" / "folder" / "plain.png", rgb(H, W, 200))
    save_image(root / "JPEGImages" / "palette.jpeg", rgb(H, W, 60))
    return root


def test_build_pixels_categories_and_zip(export: Path, tmp_path: Path) -> None:
    archive = zip_folder(export, tmp_path / "smask.zip")
    assert builders.detect(export) is CvatMaskBuilder
    mapping = tmp_path / "concepts.yaml"
    mapping.write_text("labels:\n  grass: {category: material, name: lawn, synonyms: [turf]}\n")
    for n, source in enumerate((export, archive)):
        out = tmp_path / f"out{n}"
        summary = build_dataset([CvatMaskBuilder(source, {"concepts": mapping})], out, BuildOptions(workers=1, color=False))
        assert summary.images == {"cvat_mask": 2} and summary.skipped == {"no data": 1}
        expected = _scene()
        obj = np.where(expected == "grass", "", expected)
        (field,) = label_layers(out, "field.jpg", "object")
        assert (field == obj).all()
        (material,) = label_layers(out, "field.jpg", "material")
        assert (material == np.where(expected == "grass", "lawn", "")).all()
        (palette,) = label_layers(out, "palette.jpg", "object")
        want = np.full((H, W), "", object)
        want[:3] = "sky"
        want[3:, 4:] = "cat"
        assert (palette == want).all()
        assert_valid(out)
    syns = (tmp_path / "out0" / "syns.txt").read_text()
    assert "turf" in syns


def test_items_keys_and_unknown_colours(export: Path) -> None:
    b = CvatMaskBuilder(export)
    assert b.items() == [("train", "field"), ("train", "folder/plain"), ("val", "palette")]
    seg = np.asarray(Image.open(export / "SegmentationClass" / "field.png")).copy()
    seg[0, 0] = (9, 9, 9)
    Image.fromarray(seg).save(export / "SegmentationClass" / "field.png")
    r = b.load(("train", "field"))
    assert r.key == "train/field" and r.skipped == {"colour not in labelmap.txt": 1}
    assert r.pixel["object"][0][0, 0] == 0
    plain = b.load(("train", "folder/plain"))
    assert plain.pixel == {} and plain.image == export / "JPEGImages" / "folder" / "plain.png"


def test_missing_labelmap_and_bad_line(export: Path) -> None:
    (export / "labelmap.txt").write_text("background:0,0,0::\ncat:red::\n")
    with pytest.raises(SourceError, match=r"row 2: expected 'name:R,G,B:parts:actions'"):
        CvatMaskBuilder(export)
    (export / "labelmap.txt").unlink()
    with pytest.raises(SourceError, match="labelmap.txt is missing"):
        CvatMaskBuilder(export)


def test_mapping_category_color_clashes_with_the_computed_colour(export: Path, tmp_path: Path) -> None:
    from hostile import assert_one_error, invoke

    mapping = tmp_path / "m.yaml"
    mapping.write_text("version: 1\nlabels:\n  cat: {category: color, name: cat}\n")
    out = invoke(["build", "--from", f"cvat-mask={export}", "--concepts", mapping, "-o", tmp_path / "out", "--workers", "1"])
    assert_one_error(out, "m.yaml", "color", code=2)
    ok = invoke(["build", "--from", f"cvat-mask={export}", "--concepts", mapping, "-o", tmp_path / "out", "--workers", "1", "--no-color"])
    assert ok.code == 0, ok.stderr


VOID = (224, 224, 192)  # the VOC devkit colour of index 255


def _void_export(root: Path, labelmap: str) -> Path:
    """A VOC-style export whose mask draws void (224,224,192) along the cat's outline, as VOC does."""
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "labelmap.txt").write_text(labelmap)
    seg = np.zeros((H, W, 3), np.uint8)
    seg[1:5, 1:6] = VOID
    seg[2:4, 2:5] = COLOURS["cat"]
    Image.fromarray(seg).save(root / "SegmentationClass" / "a.png")
    save_image(root / "JPEGImages" / "a.jpg", rgb(H, W))
    return root


def _cat_only() -> np.ndarray:
    want = np.full((H, W), "", object)
    want[2:4, 2:5] = "cat"
    return want


@pytest.mark.parametrize("void_line", ["ignored:224,224,192::\n", "void:224,224,192::\n", " Ignored :224,224,192::\n", ""])
def test_void_is_unlabeled_like_background(tmp_path: Path, void_line: str) -> None:
    """Named ``ignored``/``void`` in labelmap.txt (CVAT/Datumaro), or not listed at all: no concept, no skip."""
    root = _void_export(tmp_path / "e", "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\n" + void_line)
    b = CvatMaskBuilder(root)
    r = b.load(b.items()[0])
    names = {i: n[0] for (c, i), n in r.names.items()}
    got = np.vectorize(lambda i: names.get(int(i), ""), otypes=[object])(r.pixel["object"][0])
    assert (got == _cat_only()).all() and set(names.values()) == {"cat"} and r.skipped == {}
    assert {n for n, count in b.inventory().labels.items() if count} == {"cat"}  # the starter mapping offers no void


def test_void_elsewhere_and_in_single_channel_masks(tmp_path: Path) -> None:
    # A label named void with a colour of its own: that colour is unlabeled too.
    root = _void_export(tmp_path / "e", "background:0,0,0::\ncat:250,50,83::\nvoid:10,20,30::\n")
    seg = np.asarray(Image.open(root / "SegmentationClass" / "a.png")).copy()
    seg[0] = (10, 20, 30)
    Image.fromarray(seg).save(root / "SegmentationClass" / "a.png")
    r = CvatMaskBuilder(root).load(("", "a"))
    assert r.skipped == {} and {n[0] for n in r.names.values()} == {"cat"}
    # 1-channel masks hold line indices; 255 is VOC's void index, not a missing line.
    idx = np.zeros((H, W), np.uint8)
    idx[1:5, 1:6] = 255
    idx[2:4, 2:5] = 1
    Image.fromarray(idx, "L").save(root / "SegmentationClass" / "a.png")
    r = CvatMaskBuilder(root).load(("", "a"))
    got = np.vectorize(lambda i: r.names[("object", int(i))][0] if i else "", otypes=[object])(r.pixel["object"][0])
    assert (got == _cat_only()).all() and r.skipped == {}


def test_a_label_given_the_void_colour_keeps_it(tmp_path: Path) -> None:
    """labelmap.txt is explicit: a real label whose CVAT colour happens to be 224,224,192 stays that label."""
    root = _void_export(tmp_path / "e", "background:0,0,0::\ncat:250,50,83::\nfence:224,224,192::\n")
    r = CvatMaskBuilder(root).load(("", "a"))
    got = np.vectorize(lambda i: r.names[("object", int(i))][0] if i else "", otypes=[object])(r.pixel["object"][0])
    want = np.full((H, W), "", object)
    want[1:5, 1:6] = "fence"
    want[2:4, 2:5] = "cat"
    assert (got == want).all()


def test_void_build_via_cli_has_no_boundary_concept(tmp_path: Path) -> None:
    from hostile import invoke

    root = _void_export(tmp_path / "e", "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\nignored:224,224,192::\n")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("a\n")
    assert builders.detect(root) is CvatMaskBuilder
    out = tmp_path / "out"
    result = invoke(["build", "--from", root, "-o", out, "--workers", "1", "--no-color"])
    assert result.code == 0, result.stderr
    (layer,) = label_layers(out, "a.jpg", "object")
    assert (layer == _cat_only()).all()
    assert "ignored" not in (out / "label.csv").read_text()
    check = invoke(["validate", out])
    assert check.code == 0, check.stdout + check.stderr


def test_union_lists_are_read_once(export: Path) -> None:
    """A VOC-style trainval.txt repeating train and val does not read any image twice."""
    sets = export / "ImageSets" / "Segmentation"
    (sets / "trainval.txt").write_text("field\nfolder/plain\npalette\n")
    assert CvatMaskBuilder(export).items() == [("train", "field"), ("train", "folder/plain"), ("val", "palette")]
