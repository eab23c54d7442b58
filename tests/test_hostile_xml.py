"""Hostile CVAT, CVAT segmentation-mask and MIT LabelMe exports, and archives (issue 11, §3, §5, §6).

Each case builds through the CLI as a user would and checks the harness promises: the exit code,
one ``error:`` line naming the file (or a counted skip), no traceback, inputs unchanged, nothing
from outside the input in the output, no staging leftovers. Expected pixels come from planted
shapes whose answer is known by construction.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fake_exports import label_layers, rgb, save_image, write_cvat_xml, write_labelme_xml
from hostile import SECRET, assert_no_leftovers, assert_not_in_tree, assert_one_error, assert_unchanged, invoke, snapshot

GOOD = ("polygon", {"label": "wall", "points": "0,0;6,0;6,6;0,6", "z_order": 0}, {})


def secret_jpeg(path: Path) -> Path:
    """A valid JPEG that carries :data:`SECRET` in a comment: copied into a dataset, it would show."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb(8, 8, 90)).save(path, "JPEG", comment=SECRET.encode())
    return path


def build(tmp_path: Path, source: Path | str, *extra: str, pre: tuple[str, ...] = ()):
    """``concepts [PRE] build`` of one source into ``tmp_path/out``, checking inputs stay unchanged."""
    out = tmp_path / "out"
    watched = [p for p in (tmp_path / "export", tmp_path / "outside") if p.exists()]
    before = snapshot(*watched)
    result = invoke([*pre, "build", "--from", source, "-o", out, "--workers", "1", "--no-color", *extra])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert_unchanged(before, snapshot(*watched))
    assert_no_leftovers(tmp_path)
    if out.exists():
        assert_not_in_tree(out)
    return result, out


def _cvat(root: Path, bad: dict) -> Path:
    write_cvat_xml(root / "annotations.xml", [{"name": "good.jpg", "width": 8, "height": 8, "shapes": [GOOD]}, bad])
    save_image(root / "images" / "good.jpg", rgb(8, 8))
    return root


# --- §3 nothing is read from outside the input ----------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_cvat_image_outside_the_export(tmp_path: Path, how: str) -> None:
    secret = secret_jpeg(tmp_path / "outside" / "secret.jpg")
    root = tmp_path / "export"
    name = {"absolute": str(secret), "dotdot": "../../outside/secret.jpg", "symlink": "link.jpg"}[how]
    _cvat(root, {"name": name, "width": 8, "height": 8, "shapes": [GOOD]})
    if how == "symlink":
        (root / "images").mkdir(exist_ok=True)
        os.symlink(secret, root / "images" / "link.jpg")
    result, out = build(tmp_path, root)
    assert result.code == 0, result.stderr
    assert "skipped 1 image(s): path outside the input" in result.stdout
    assert len((out / "index.csv").read_text().splitlines()) == 2  # header and good.jpg
    result, out = build(tmp_path, root, "--strict", "--overwrite")
    line = assert_one_error(result, "annotations.xml", "<image name=", "outside the input")
    assert "drop --strict" in line


@pytest.mark.parametrize("how", ["filename", "mask", "symlink"])
def test_labelme_paths_outside_the_export(tmp_path: Path, how: str) -> None:
    secret = secret_jpeg(tmp_path / "outside" / "secret.jpg")
    outside_mask = tmp_path / "outside" / "mask.png"
    Image.fromarray(np.full((8, 8, 4), 255, np.uint8)).save(outside_mask)
    root = tmp_path / "export"
    box = {"name": "wall", "id": 0, "box": (0, 0, 6, 6)}
    write_labelme_xml(root / "Annotations" / "f" / "good.xml", "good.jpg", "f", (8, 8), [box])
    save_image(root / "Images" / "f" / "good.jpg", rgb(8, 8))
    if how == "filename":
        write_labelme_xml(root / "Annotations" / "f" / "bad.xml", "../../../outside/secret.jpg", "f", (8, 8), [box])
    elif how == "mask":
        write_labelme_xml(root / "Annotations" / "f" / "bad.xml", "bad.jpg", "f", (8, 8),
                          [{"name": "blob", "id": 0, "mask": str(outside_mask)}])
        save_image(root / "Images" / "f" / "bad.jpg", rgb(8, 8))
    else:
        write_labelme_xml(root / "Annotations" / "f" / "bad.xml", "bad.jpg", "f", (8, 8), [box])
        os.symlink(secret, root / "Images" / "f" / "bad.jpg")
    result, out = build(tmp_path, root)
    assert result.code == 0, result.stderr
    assert "skipped 1 image(s): path outside the input" in result.stdout
    result, _ = build(tmp_path, root, "--strict", "--overwrite")
    element = "<segm><mask>" if how == "mask" else "<filename>"
    assert_one_error(result, "bad.xml", element, "outside the input")


def _cvat_mask(root: Path, listed: list[str]) -> Path:
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text("background:0,0,0::\nsky:51,221,255::\n")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(["good", *listed]) + "\n")
    seg = np.zeros((4, 5, 3), np.uint8)
    seg[:2] = (51, 221, 255)
    save_image(root / "SegmentationClass" / "good.png", seg)
    save_image(root / "JPEGImages" / "good.jpg", rgb(4, 5))
    return root


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_cvat_mask_names_outside_the_export(tmp_path: Path, how: str) -> None:
    secret = secret_jpeg(tmp_path / "outside" / "secret.jpg")
    root = tmp_path / "export"
    listed = {"dotdot": "../../outside/secret", "absolute": str(secret.with_suffix("")), "symlink": "linked"}[how]
    _cvat_mask(root, [listed])
    if how == "symlink":
        os.symlink(secret, root / "JPEGImages" / "linked.jpg")
    result, out = build(tmp_path, root)
    assert result.code == 0, result.stderr
    assert "skipped 1 image(s): path outside the input" in result.stdout
    result, _ = build(tmp_path, root, "--strict", "--overwrite")
    assert_one_error(result, "default.txt", "outside the input")


def test_annotation_files_linked_from_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_cvat_xml(outside / "annotations.xml", [{"name": "good.jpg", "width": 8, "height": 8, "shapes": [GOOD]}])
    root = tmp_path / "export"
    save_image(root / "images" / "good.jpg", rgb(8, 8))
    os.symlink(outside / "annotations.xml", root / "annotations.xml")
    result, out = build(tmp_path, root)
    assert_one_error(result, "annotations.xml", "outside the input")
    assert not out.exists()
    (outside / "labelmap.txt").write_text("background:0,0,0::\nsky:51,221,255::\n")
    mask = tmp_path / "export2"
    _cvat_mask(mask, [])
    (mask / "labelmap.txt").unlink()
    os.symlink(outside / "labelmap.txt", mask / "labelmap.txt")
    result, _ = build(tmp_path, mask)
    assert_one_error(result, "labelmap.txt", "outside the input")


# --- §5 resources are bounded -----------------------------------------------------------------------


def test_zip_bomb_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """80 MiB of zeros in an 80 KB zip: over 100 times its size, refused from the declared sizes."""
    import tempfile

    bomb = tmp_path / "export" / "bomb.zip"
    bomb.parent.mkdir()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("annotations.xml", "w") as f:
            for _ in range(80):
                f.write(bytes(1 << 20))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # archives extract here; nothing may stay
    result, out = build(tmp_path, bomb)
    assert_one_error(result, "bomb.zip", "CONCEPTS_MAX_ARCHIVE_RATIO", "declares 83,886,080 uncompressed bytes")
    assert not out.exists() and not any(scratch.iterdir())


def test_archive_lying_header_stops_at_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Actual bytes are counted too: with the declared check fooled, extraction stops at the limit."""
    from concepts import archive as arc
    from concepts.errors import UnsafeInputError

    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("small.txt", b"s" * 10)
        zf.writestr("big.bin", b"b" * 5000)
    monkeypatch.setenv("CONCEPTS_MAX_ARCHIVE_BYTES", "1000")
    monkeypatch.setattr(arc._Budget, "declared", lambda self, total: None)
    with pytest.raises(UnsafeInputError, match="expands beyond its declared sizes .at member 'big.bin'"):
        arc.extract_archive(z, tmp_path / "d")
    written = sum(p.stat().st_size for p in (tmp_path / "d").rglob("*") if p.is_file())
    assert written <= 1000


def test_tar_bomb_and_limits_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concepts import archive as arc
    from concepts.errors import UnsafeInputError, UsageError

    t = tmp_path / "a.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        info = tarfile.TarInfo("export/annotations.xml")
        info.size = 300_000
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    # 300 kB from about 300 bytes: above the ratio, but under the floor below which ratios pass.
    assert (arc.extract_archive(t, tmp_path / "ok") / "annotations.xml").stat().st_size == 300_000
    monkeypatch.setenv("CONCEPTS_MAX_ARCHIVE_BYTES", "100000")
    with pytest.raises(UnsafeInputError, match="declares 300,000 uncompressed bytes") as e:
        arc.extract_archive(t, tmp_path / "d")
    assert "CONCEPTS_MAX_ARCHIVE_BYTES" in str(e.value) and not any((tmp_path / "d").rglob("*.xml"))
    monkeypatch.setenv("CONCEPTS_MAX_ARCHIVE_BYTES", "lots")
    with pytest.raises(UsageError, match="CONCEPTS_MAX_ARCHIVE_BYTES='lots'"):
        arc.extract_archive(t, tmp_path / "d2")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_mask_header_goes_through_the_pixel_limit(tmp_path: Path) -> None:
    from concepts.limits import set_max_pixels

    root = _cvat_mask(tmp_path / "export", [])
    try:
        result, _ = build(tmp_path, root, "--strict", pre=("--max-pixels", "16"))
    finally:
        set_max_pixels(None)
    assert_one_error(result, "good.png", "exceeds the limit of 16 pixels")


def test_ten_thousand_overlapping_shapes_on_one_image(tmp_path: Path) -> None:
    """Each shape pushes the ones below it down a layer: 10,000 stacked labels in seconds.

    Pushing every layer down for every shape took 30 s for 2,000 such shapes and grew with the
    square of their number (about 12 minutes for these); the count is the test.
    """
    from concepts.builders.cvat import CvatBuilder

    n = 10_000
    shapes = [("box", {"label": f"l{i}", "xtl": 1, "ytl": 1, "xbr": 3, "ybr": 2}, {}) for i in range(n)]
    root = tmp_path / "export"
    write_cvat_xml(root / "annotations.xml", [{"name": "a.png", "width": 4, "height": 3, "shapes": shapes}])
    save_image(root / "images" / "a.png", rgb(3, 4))
    record = CvatBuilder(root).load(0)
    layers = record.pixel["object"]
    assert len(layers) == n
    for depth in (0, 1, n // 2, n - 1):
        layer = layers[depth]
        assert record.names[("object", int(layer[1, 1]))] == (f"l{n - 1 - depth}",)
        assert (layer[1, 1:3] == layer[1, 1]).all() and layer.sum() == 2 * layer[1, 1]


def test_mask_with_twenty_thousand_colours(tmp_path: Path) -> None:
    from concepts.builders.cvat_mask import CvatMaskBuilder

    n = 20_000
    root = tmp_path / "export"
    (root / "SegmentationClass").mkdir(parents=True)
    codes = np.arange(1, n + 1)
    colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1)
    (root / "labelmap.txt").write_text("background:0,0,0::\n" + "".join(f"l{i}:{r},{g},{b}::\n" for i, (r, g, b) in enumerate(colours)))
    save_image(root / "SegmentationClass" / "a.png", colours.reshape(100, 200, 3).astype(np.uint8))
    save_image(root / "JPEGImages" / "a.png", rgb(100, 200))
    record = CvatMaskBuilder(root).load(("", "a"))
    layer = record.pixel["object"][0]
    assert len(np.unique(layer)) == n
    assert record.names[("object", int(layer[0, 5]))] == ("l5",) and record.names[("object", int(layer[99, 199]))] == (f"l{n - 1}",)


# --- §6 one line, never a traceback ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-1e400", "-5", "12.5", "ten"])
def test_cvat_bad_declared_size(tmp_path: Path, value: str) -> None:
    root = _cvat(tmp_path / "export", {"name": "bad.jpg", "width": value, "height": 8, "shapes": [GOOD]})
    save_image(root / "images" / "bad.jpg", rgb(8, 8))
    result, _ = build(tmp_path, root)
    assert result.code == 0 and "skipped 1 image(s): bad image size" in result.stdout, result.stderr
    result, _ = build(tmp_path, root, "--strict", "--overwrite")
    assert_one_error(result, "annotations.xml", "bad.jpg", value)


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-1e400", "1e308"])
def test_cvat_bad_numbers_in_shapes(tmp_path: Path, value: str) -> None:
    shapes = [
        ("polygon", {"label": "a", "points": f"0,0;{value},0;4,4"}, {}),
        ("polygon", {"label": "a", "points": f"0,0;{value},1;-{value},5;1,7"}, {}),
        ("box", {"label": "b", "xtl": 0, "ytl": 0, "xbr": value, "ybr": 4}, {}),
        ("box", {"label": "b", "xtl": 0, "ytl": 0, "xbr": 4, "ybr": 4, "rotation": value}, {}),
        ("ellipse", {"label": "c", "cx": 2, "cy": 2, "rx": value, "ry": 1}, {}),
        ("ellipse", {"label": "c", "cx": 2, "cy": 2, "rx": 1, "ry": 1, "rotation": value}, {}),
        ("mask", {"label": "d", "rle": "0, 4", "left": value, "top": 0, "width": 2, "height": 2}, {}),
        ("polygon", {"label": "e", "points": "0,0;4,0;4,4", "z_order": value}, {}),
    ]
    root = _cvat(tmp_path / "export", {"name": "bad.jpg", "width": 8, "height": 8, "shapes": shapes})
    save_image(root / "images" / "bad.jpg", rgb(8, 8))
    result, out = build(tmp_path, root)
    # The mask's box cannot be placed: the item is skipped with its reason; the rest builds.
    assert result.code == 0, result.stderr
    if value != "1e308":  # a finite left edge only puts the mask off the image
        assert "skipped 1 image(s): bad mask" in result.stdout and "bad.jpg" in result.stderr


def test_cvat_unknown_encoding_and_bad_bytes(tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    (root / "annotations.xml").write_text('<?xml version="1.0" encoding="x-bogus"?>\n<annotations><image name="a.jpg" width="2" height="2"/></annotations>')
    result, _ = build(tmp_path, root)
    assert_one_error(result, "annotations.xml", "x-bogus")
    (root / "annotations.xml").write_bytes(b'<?xml version="1.0" encoding="utf-8"?>\n<annotations><image name="\xff\xfe.jpg" width="2" height="2"/></annotations>')
    result, _ = build(tmp_path, root)
    assert_one_error(result, "annotations.xml", "broken XML")


def test_cvat_deep_nesting_and_odd_elements(tmp_path: Path) -> None:
    root = _cvat(tmp_path / "export", {"name": "bad.jpg", "width": 8, "height": 8, "shapes": [GOOD]})
    save_image(root / "images" / "bad.jpg", rgb(8, 8))
    xml = (root / "annotations.xml").read_text()
    deep = "<box label='x'>" * 50_000 + "</box>" * 50_000
    odd = "<polygon label='y' points='a,b;c'/><polygon points='0,0;4,0;4,4'/><mask label='m' rle='x'/><tag/><image/>"
    (root / "annotations.xml").write_text(xml.replace("</image></annotations>", deep + odd + "</image></annotations>"))
    result, _ = build(tmp_path, root)
    assert "Traceback" not in result.stderr
    assert result.code == 0 or len(result.errors) == 1, result.stderr


def test_labelme_unknown_encoding_directory_and_nul(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_labelme_xml(root / "Annotations" / "f" / "good.xml", "good.jpg", "f", (8, 8), [{"name": "wall", "id": 0, "box": (0, 0, 6, 6)}])
    save_image(root / "Images" / "f" / "good.jpg", rgb(8, 8))
    (root / "Annotations" / "f" / "enc.xml").write_text('<?xml version="1.0" encoding="x-bogus"?><annotation><filename>good.jpg</filename></annotation>')
    (root / "Annotations" / "f" / "folder.xml").mkdir()
    result, _ = build(tmp_path, root)
    assert result.code == 0, result.stderr
    assert "skipped 1 image(s): broken annotation" in result.stdout
    result, _ = build(tmp_path, root, "--strict", "--overwrite")
    assert_one_error(result, "enc.xml", "x-bogus")


@pytest.mark.parametrize("case", ["labelmap-binary", "labelmap-dir", "list-dir", "list-binary", "list-nul", "bad-colour"])
def test_cvat_mask_bad_text_files(tmp_path: Path, case: str) -> None:
    root = _cvat_mask(tmp_path / "export", [])
    labelmap, listing = root / "labelmap.txt", root / "ImageSets" / "Segmentation" / "default.txt"
    if case == "labelmap-binary":
        labelmap.write_bytes(b"sky:1,2,3::\n\xff\xfe\n")
    elif case == "labelmap-dir":
        labelmap.unlink()
        labelmap.mkdir()
    elif case == "list-dir":
        (root / "ImageSets" / "Segmentation" / "val.txt").mkdir()
    elif case == "list-binary":
        listing.write_bytes(b"good\n\xff\n")
    elif case == "list-nul":
        listing.write_text("good\nba\x00d\n")
    else:
        labelmap.write_text("background:0,0,0::\nsky:999,0,1e400::\n")
    result, _ = build(tmp_path, root)
    if case == "list-nul":
        assert result.code == 0 and "skipped 1 image(s): bad path" in result.stdout, result.stderr
        result, _ = build(tmp_path, root, "--strict", "--overwrite")
        assert_one_error(result, "default.txt", "NUL")
        return
    culprit = {"list-dir": "val.txt", "list-binary": "default.txt"}.get(case, "labelmap.txt")
    assert_one_error(result, culprit)


def test_cvat_real_size_differs_from_annotated(tmp_path: Path) -> None:
    """Annotated as 8 x 8, the file is 16 x 12: the box stays at its pixel coordinates, with a warning."""
    root = tmp_path / "export"
    box = ("box", {"label": "door", "xtl": 2, "ytl": 1, "xbr": 6, "ybr": 4}, {})
    write_cvat_xml(root / "annotations.xml", [{"name": "a.png", "width": 8, "height": 8, "shapes": [box]}])
    save_image(root / "images" / "a.png", rgb(12, 16))
    result, out = build(tmp_path, root)
    assert result.code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "a.png" in line and "8 x 8" in line]
    assert len(warning) == 1 and "16 x 12" in warning[0], result.stderr
    (layer,) = label_layers(out, "a.jpg", "object")
    expected = np.full((12, 16), "-", object)
    expected[1:4, 2:6] = "door"
    assert (np.where(layer == "door", "door", "-") == expected).all()
    # A file turned by its EXIF orientation is the annotated frame, not a mismatch.
    turned = Image.fromarray(rgb(8, 6))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.save(root / "images" / "a.png", exif=exif)
    write_cvat_xml(root / "annotations.xml", [{"name": "a.png", "width": 8, "height": 6, "shapes": [box]}])
    result, out = build(tmp_path, root, "--overwrite")
    assert result.code == 0 and "painting the shapes" not in result.stderr, result.stderr


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_colour_bands_go_through_the_pixel_limit(tmp_path: Path) -> None:
    """Pillow only refuses images over twice its limit; the band reader applies the limit itself."""
    from concepts.builders._bands import read_bands
    from concepts.errors import SourceItemError
    from concepts.limits import set_max_pixels

    path = save_image(tmp_path / "seg.png", rgb(10, 10))
    set_max_pixels(60)
    try:
        with pytest.raises(SourceItemError, match="exceeds the limit of 60 pixels") as e:
            read_bands(path, [0, 1])
    finally:
        set_max_pixels(None)
    assert e.value.reason == "image too large"
    assert [band.size for band in read_bands(path, [0, 1])] == [(10, 10), (10, 10)]


def test_detection_survives_odd_files(tmp_path: Path) -> None:
    """A folder named like an annotation, or a corrupt zip, is simply not recognised."""
    from concepts.builders.cvat import CvatBuilder
    from concepts.builders.labelme import LabelMeBuilder

    (tmp_path / "lm" / "Annotations" / "a.xml").mkdir(parents=True)
    assert not LabelMeBuilder.detect(tmp_path / "lm")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations.xml", "<annotations>" + "x" * 5000)
    data = bytearray(bad.read_bytes())
    data[40:60] = b"\xff" * 20  # corrupt the deflate stream, keep the directory
    bad.write_bytes(bytes(data))
    assert not CvatBuilder.detect(bad)


def test_folders_where_files_are_expected(tmp_path: Path) -> None:
    root = _cvat(tmp_path / "export", {"name": "bad.jpg", "width": 8, "height": 8, "shapes": [GOOD]})
    (root / "images" / "bad.jpg").mkdir()
    result, _ = build(tmp_path, root)
    assert result.code == 0 and "skipped 1 image(s): missing image" in result.stdout, result.stderr
    xml = root / "annotations.xml"
    xml.rename(root / "kept")
    xml.mkdir()
    result, _ = build(tmp_path, f"cvat={root}", "--overwrite")
    assert_one_error(result, "no CVAT XML")
