"""Property-based fuzzing of the XML export readers (CVAT, MIT LabelMe) and the CVAT mask export.

Whatever element shapes and attribute values an export holds, reading it ends in records or in a
ConceptsError (one line); no other exception may escape. The number of examples comes from the
hypothesis profile in conftest.py (CONCEPTS_FUZZ_EXAMPLES=N for more); a failure prints the
minimal export that caused it.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from hypothesis import example, given, strategies as st

from concepts.errors import ConceptsError
from fake_exports import rgb, save_image

# Names for which an image exists, so that items get past the lookup and are painted.
IMAGES = ("a.jpg", "sub/b.png")

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
_any_text = st.text(max_size=12)  # control characters too: broken XML must be a clean error
_number = st.one_of(
    st.integers(-5, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-1e400", "1e308", "", " 7 ", "0x10", "\u0663", "1,2", "1;2"]),
    _text,
)
_points = st.lists(st.tuples(_number, _number), max_size=6).map(lambda pts: ";".join(f"{x},{y}" for x, y in pts))
_attr_name = st.sampled_from(["label", "points", "xtl", "ytl", "xbr", "ybr", "cx", "cy", "rx", "ry", "rotation",
                              "z_order", "outside", "rle", "left", "top", "width", "height", "occluded", "source"])


def _children(tags: list[str], depth: int = 2) -> st.SearchStrategy:
    leaf = st.tuples(st.sampled_from(tags), st.dictionaries(_attr_name, _number, max_size=6), _text, st.just([]))
    if depth == 0:
        return st.lists(leaf, max_size=3)
    node = st.tuples(st.sampled_from(tags), st.dictionaries(_attr_name, _number, max_size=6), _text,
                     _children(tags, depth - 1))
    return st.lists(st.one_of(leaf, node), max_size=4)


def _element(parent: ET.Element, spec: tuple) -> None:
    tag, attrs, text, children = spec
    el = ET.SubElement(parent, tag, attrs)
    el.text = text or None
    for child in children:
        _element(el, child)


_SHAPE_TAGS = ["polygon", "box", "ellipse", "mask", "polyline", "points", "tag", "attribute", "cuboid", "image", "x"]

_cvat_shape = st.one_of(
    st.tuples(st.just("polygon"), st.fixed_dictionaries({"label": st.sampled_from(["wall", "", " door "]), "points": _points},
                                                        optional={"z_order": _number, "outside": _number}), _text, st.just([])),
    st.tuples(st.just("box"), st.fixed_dictionaries({"label": st.just("door"), "xtl": _number, "ytl": _number, "xbr": _number,
                                                    "ybr": _number}, optional={"rotation": _number}), _text, st.just([])),
    st.tuples(st.just("ellipse"), st.fixed_dictionaries({"label": st.just("ball"), "cx": _number, "cy": _number, "rx": _number,
                                                        "ry": _number}, optional={"rotation": _number}), _text, st.just([])),
    st.tuples(st.just("mask"), st.fixed_dictionaries({"label": st.just("puddle"), "rle": st.one_of(_points, _number),
                                                     "left": _number, "top": _number, "width": _number, "height": _number}),
              _text, st.just([])),
    st.tuples(st.just("tag"), st.fixed_dictionaries({"label": _text}), _text, st.just([])),
    _children(_SHAPE_TAGS, 1).map(lambda kids: ("polygon", {"label": "wall", "points": "0,0;4,0;4,4"}, "", kids)),
)

_cvat_image = st.tuples(
    st.one_of(st.sampled_from(IMAGES), _text, st.sampled_from(["../a.jpg", "/etc/hostname", "images/../a.jpg", "sub\\b.png"])),
    st.one_of(st.sampled_from(["4", "6"]), _number),
    st.one_of(st.sampled_from(["4", "6"]), _number),
    st.one_of(st.none(), _text),
    st.lists(_cvat_shape, max_size=6),
)


def _read_all(builder_cls, root: Path) -> None:
    """List and load every item; only records or ConceptsError may come out."""
    try:
        builder = builder_cls(root)
        items = builder.items()
        builder.inventory()
    except ConceptsError as e:
        assert "\n" not in str(e), str(e)
        return
    for item in items:
        try:
            record = builder.load(item)
        except ConceptsError as e:
            assert "\n" not in str(e), str(e)
            continue
        for layers in record.pixel.values():
            for layer in layers:
                assert np.asarray(layer).ndim == 2


def _write_images(root: Path, *folders: str) -> None:
    for folder in folders:
        for name in IMAGES:
            save_image(root / folder / name, rgb(6, 4) if name.endswith(".jpg") else rgb(4, 6))


@given(images=st.lists(_cvat_image, max_size=3), junk=_children(["meta", "version", "track", "image", "foo"], 1))
@example(images=[("a.jpg", "4", "6", None, [("box", {"label": "door", "xtl": "0", "ytl": "0", "xbr": "3", "ybr": "1e400"}, "", [])])],
         junk=[])
def test_fuzz_cvat_xml(images: list, junk: list) -> None:
    root = ET.Element("annotations")
    for spec in junk:
        _element(root, spec)
    for i, (name, width, height, subset, shapes) in enumerate(images):
        attrs = {"id": str(i), "name": name, "width": width, "height": height}
        if subset is not None:
            attrs["subset"] = subset
        el = ET.SubElement(root, "image", attrs)
        for spec in shapes:
            _element(el, spec)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        ET.ElementTree(root).write(folder / "annotations.xml", encoding="utf-8", xml_declaration=True)
        _write_images(folder, "images")
        from concepts.builders.cvat import CvatBuilder

        _read_all(CvatBuilder, folder)


@given(head=st.one_of(st.sampled_from(["utf-8", "x-bogus", "utf-32", "latin-1", "utf-16", "", "ascii\x00"]), _any_text),
       body=_any_text, where=st.integers(0, 200))
def test_fuzz_cvat_raw_text(head: str, body: str, where: int) -> None:
    """Arbitrary declarations and characters spliced into a valid export."""
    doc = (f'<?xml version="1.0" encoding="{head}"?>\n<annotations><image id="0" name="a.jpg" width="4" height="6">'
           '<box label="door" xtl="0" ytl="0" xbr="2" ybr="3"/></image></annotations>')
    doc = doc[:where] + body + doc[where:]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        (folder / "annotations.xml").write_bytes(doc.encode("utf-8", "surrogatepass"))
        _write_images(folder, "images")
        from concepts.builders.cvat import CvatBuilder

        _read_all(CvatBuilder, folder)


_labelme_object = st.fixed_dictionaries(
    {"name": st.one_of(st.just("wall"), _text)},
    optional={
        "deleted": _number,
        "attributes": st.one_of(_text, st.just("color=red, big")),
        "parts": st.tuples(_text, _text),
        "polygon": st.lists(st.tuples(_number, _number), max_size=5),
        "mask": st.one_of(st.just("m.png"), _text, st.just("../../../etc/hostname")),
        "extra": _children(["object", "polygon", "pt", "x", "segm"], 1),
    },
)


@given(filename=st.one_of(st.sampled_from(["a.jpg", "../a.jpg", "/etc/hostname", ""]), _text),
       size=st.one_of(st.none(), st.tuples(_number, _number)), objects=st.lists(_labelme_object, max_size=4))
def test_fuzz_labelme_xml(filename: str, size: tuple | None, objects: list) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(root, "folder").text = "f"
    if size is not None:
        s = ET.SubElement(root, "imagesize")
        ET.SubElement(s, "nrows").text, ET.SubElement(s, "ncols").text = size
    for obj in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj["name"]
        for key in ("deleted", "attributes"):
            if key in obj:
                ET.SubElement(o, key).text = obj[key]
        if "parts" in obj:
            parts = ET.SubElement(o, "parts")
            ET.SubElement(parts, "hasparts").text, ET.SubElement(parts, "ispartof").text = obj["parts"]
        if "polygon" in obj:
            poly = ET.SubElement(o, "polygon")
            for x, y in obj["polygon"]:
                pt = ET.SubElement(poly, "pt")
                ET.SubElement(pt, "x").text, ET.SubElement(pt, "y").text = x, y
        if "mask" in obj:
            ET.SubElement(ET.SubElement(o, "segm"), "mask").text = obj["mask"]
        for spec in obj.get("extra", []):
            _element(o, spec)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        (folder / "Annotations" / "f").mkdir(parents=True)
        ET.ElementTree(root).write(folder / "Annotations" / "f" / "x.xml", encoding="utf-8")
        save_image(folder / "Images" / "f" / "a.jpg", rgb(6, 4))
        mask = np.zeros((6, 4, 4), np.uint8)
        mask[:3] = (255, 0, 0, 153)
        save_image(folder / "Masks" / "f" / "m.png", mask)
        from concepts.builders.labelme import LabelMeBuilder

        _read_all(LabelMeBuilder, folder)


@given(labelmap=st.lists(st.one_of(st.just("sky:51,221,255::"), st.just("background:0,0,0::"),
                                   st.tuples(_text, _number, _number, _number).map(lambda t: f"{t[0]}:{t[1]},{t[2]},{t[3]}::"),
                                   _any_text), min_size=1, max_size=5),
       listed=st.lists(st.one_of(st.just("a"), _any_text, st.just("../../a")), max_size=4),
       mode=st.sampled_from(["RGB", "L", "P", "I;16", "1", "LA", "RGBA"]))
def test_fuzz_cvat_mask(labelmap: list, listed: list, mode: str) -> None:
    from PIL import Image

    from concepts.builders.cvat_mask import CvatMaskBuilder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        (folder / "ImageSets" / "Segmentation").mkdir(parents=True)
        (folder / "SegmentationClass").mkdir()
        (folder / "labelmap.txt").write_bytes("\n".join(labelmap).encode("utf-8", "surrogatepass"))
        (folder / "ImageSets" / "Segmentation" / "default.txt").write_bytes("\n".join(listed).encode("utf-8", "surrogatepass"))
        seg = np.zeros((4, 5, 3), np.uint8)
        seg[:2] = (51, 221, 255)
        Image.fromarray(seg).convert(mode).save(folder / "SegmentationClass" / "a.png")
        save_image(folder / "JPEGImages" / "a.jpg", rgb(4, 5))
        _read_all(CvatMaskBuilder, folder)


@given(x=st.tuples(st.floats(-4, 12), st.floats(-4, 12)), y=st.tuples(st.floats(-4, 12), st.floats(-4, 12)),
       start=st.integers(0, 3), reverse=st.booleans())
def test_box_fast_path_matches_the_polygon_rule(x: tuple, y: tuple, start: int, reverse: bool) -> None:
    """An axis-aligned box paints exactly the pixels of the general even-odd rasteriser."""
    from concepts.builders._raster import polygon_mask

    (x0, x1), (y0, y1) = sorted(x), sorted(y)
    pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    pts = np.roll(pts[::-1] if reverse else pts, start, axis=0)
    # A collinear midpoint keeps the outline but takes the general path.
    general = np.vstack([pts[:1], (pts[0] + pts[1]) / 2, pts[1:]])
    assert (polygon_mask(pts, 9, 10) == polygon_mask(general, 9, 10)).all()


def _reference_polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """The rasteriser as it was before it was limited to the polygon's box (full-canvas running sums)."""
    out = np.zeros((height, width + 1), dtype=np.uint8)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
    last = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
    counts = np.maximum(last - first, 0)
    if not counts.sum():
        return out[:, :width].astype(bool)
    edge = np.repeat(np.arange(len(points)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + first[edge]
    t = (rows + 0.5 - y0[edge]) / (y1[edge] - y0[edge])
    xc = x0[edge] + t * (x1[edge] - x0[edge])
    cols = np.clip(np.ceil(xc - 0.5), 0, width).astype(np.int64)
    np.add.at(out, (rows, cols), 1)
    return (np.cumsum(out, axis=1, dtype=np.int64)[:, :width] & 1).astype(bool)


_coord = st.one_of(st.integers(-3, 12).map(float), st.floats(-3, 12), st.sampled_from([0.5, 1.5, 2.5, 7.5]))


@given(points=st.lists(st.tuples(_coord, _coord), min_size=3, max_size=8))
def test_box_limited_rasteriser_matches_the_full_canvas_one(points: list) -> None:
    """Accumulating only the polygon's bounding box paints the same pixels as the whole canvas did."""
    from concepts.builders._raster import polygon_mask

    pts = np.array(points, dtype=np.float64)
    assert (polygon_mask(pts, 9, 10) == _reference_polygon_mask(pts, 9, 10)).all()
