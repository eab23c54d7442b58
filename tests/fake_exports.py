"""Writers of small annotation-tool exports in their real on-disk layouts (XML, JSON, PNG, zip)."""

from __future__ import annotations

import base64
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def rgb(h: int, w: int, value: int = 120) -> np.ndarray:
    """A flat grey RGB image."""
    return np.full((h, w, 3), value, np.uint8)


def save_image(path: Path, pixels: np.ndarray) -> Path:
    """Write an image (JPEG or PNG by suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    """Encode an array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def cvat_rle(mask: np.ndarray) -> str:
    """Encode a box-sized boolean mask as CVAT XML RLE (row-major runs, background first)."""
    flat = mask.astype(np.uint8).ravel()
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return ", ".join(str(r) for r in runs)


def write_cvat_xml(path: Path, images: list[dict], *, project: bool = False) -> Path:
    """Write a CVAT for images 1.1 XML; each image dict: name, width, height, [subset], shapes.

    A shape is ``(tag, {attribute: value}, {attribute name: value})``: XML attributes, then child
    <attribute> elements.
    """
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(ET.SubElement(meta, "project") if project else meta, "task")
    ET.SubElement(task, "name").text = "fake"
    for i, img in enumerate(images):
        attrs = {"id": str(i), "name": img["name"], "width": str(img["width"]), "height": str(img["height"])}
        if img.get("subset"):
            attrs["subset"] = img["subset"]
        el = ET.SubElement(root, "image", attrs)
        for tag, geometry, children in img.get("shapes", []):
            shape = ET.SubElement(el, tag, {k: str(v) for k, v in geometry.items()})
            for name, value in children.items():
                ET.SubElement(shape, "attribute", {"name": name}).text = value
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip a folder's contents (paths relative to the folder), as CVAT downloads."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return archive


def write_coco(path: Path, images: list[dict], categories: list[dict], annotations: list[dict]) -> Path:
    """Write a compact COCO instances JSON as CVAT does."""
    data = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
        "categories": categories,
        "images": [{"license": 0, "flickr_url": "", "coco_url": "", "date_captured": 0, **im} for im in images],
        "annotations": annotations,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def write_labelme_xml(path: Path, filename: str, folder: str, size: tuple[int, int] | None, objects: list[dict]) -> Path:
    """Write an MIT LabelMe annotation; object dict: name, id, [deleted], [polygon], [mask], [ispartof], [hasparts]."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(root, "folder").text = folder
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "sourceImage").text = "The MIT-CSAIL database of objects and scenes"
    size_el = ET.SubElement(root, "imagesize")
    if size:
        ET.SubElement(size_el, "nrows").text = str(size[0])
        ET.SubElement(size_el, "ncols").text = str(size[1])
    for obj in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj["name"]
        ET.SubElement(o, "deleted").text = str(obj.get("deleted", 0))
        ET.SubElement(o, "verified").text = "0"
        ET.SubElement(o, "occluded").text = "no"
        ET.SubElement(o, "attributes").text = obj.get("attributes", "")
        parts = ET.SubElement(o, "parts")
        ET.SubElement(parts, "hasparts").text = obj.get("hasparts", "")
        ET.SubElement(parts, "ispartof").text = obj.get("ispartof", "")
        ET.SubElement(o, "date").text = "01-Jan-2020 00:00:00"
        ET.SubElement(o, "id").text = str(obj["id"])
        if "box" in obj:
            ET.SubElement(o, "type").text = "bounding_box"
        if "polygon" in obj or "box" in obj:
            pts = obj.get("polygon") or [(obj["box"][0], obj["box"][1]), (obj["box"][2], obj["box"][1]),
                                           (obj["box"][2], obj["box"][3]), (obj["box"][0], obj["box"][3])]
            poly = ET.SubElement(o, "polygon")
            ET.SubElement(poly, "username").text = "anonymous"
            for x, y in pts:
                pt = ET.SubElement(poly, "pt")
                ET.SubElement(pt, "x").text = f" {x} "
                ET.SubElement(pt, "y").text = str(y)
        if "mask" in obj:
            segm = ET.SubElement(o, "segm")
            ET.SubElement(segm, "username").text = "anonymous"
            box = ET.SubElement(segm, "box")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), obj.get("mask_box", (0, 0, 0, 0))):
                ET.SubElement(box, k).text = str(v)
            ET.SubElement(segm, "mask").text = obj["mask"]
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8")
    return path


def labelme_rgba_mask(mask: np.ndarray) -> np.ndarray:
    """An RGBA mask as LabelMe stores them: antialiased alpha with a core of 153 (Precisions 7)."""
    out = np.zeros(mask.shape + (4,), np.uint8)
    out[mask] = (255, 0, 0, 153)
    return out


def write_labelme_json(path: Path, image_path: str | None, shapes: list[dict], *, size: tuple[int, int],
                       image_data: bytes | None = None, flags: dict | None = None) -> Path:
    """Write a labelme JSON file (version 5.x layout)."""
    data = {
        "version": "5.4.1",
        "flags": flags or {},
        "shapes": [{"group_id": None, "description": "", "flags": {}, "mask": None, **s} for s in shapes],
        "imagePath": image_path,
        "imageData": base64.b64encode(image_data).decode() if image_data is not None else None,
        "imageHeight": size[0],
        "imageWidth": size[1],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def label_layers(out: Path, image_suffix: str, category: str) -> list[np.ndarray]:
    """The built dataset's label names per pixel, one ``sh x sw`` object array per layer, for one image.

    ``image_suffix`` picks the sample whose ``index.csv`` image path ends with it; image-level
    numbers become constant layers, as NetDissect-Lite reads them.
    """
    from concepts.broden.reader import open_dataset

    ds = open_dataset(out)
    names = np.array(ds.label_names(), dtype=object)
    matches = [s for s in ds if s.image.endswith(image_suffix)]
    assert len(matches) == 1, [s.image for s in ds]
    data = ds.load_labels(matches[0], category)
    if isinstance(data, list):
        return [np.full((matches[0].sh, matches[0].sw), names[n], object) for n in data]
    return [names[layer] for layer in data]


def assert_valid(out: Path) -> None:
    """Run the dataset validator (when it exists yet) and fail on any finding of severity error."""
    try:
        from concepts.validate import validate
    except ImportError:
        return
    report = validate(out)
    errors = [f for f in getattr(report, "findings", report) if getattr(f, "severity", "") == "error"]
    assert not errors, errors
