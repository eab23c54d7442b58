"""Writers of small Pascal VOC releases in the devkit's on-disk layout (VOCdevkit/VOC2012/...).

The palette and the class list are restated here from the devkit (VOClabelcolormap.m, VOCinit.m),
independently of the builder, so tests compare the builder against the devkit's published rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: VOCinit.m's VOCopts.classes, preceded by index 0 background (the devkit's segmentation table).
CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def _bitget(value: int, bit: int) -> int:
    return (value >> bit) & 1


def colormap(n: int = 256) -> np.ndarray:
    """VOClabelcolormap.m restated: for j = 0..7, R |= bitget(c,0) << (7-j), G bit 1, B bit 2, c >>= 3."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r = r | (_bitget(c, 0) << (7 - j))
            g = g | (_bitget(c, 1) << (7 - j))
            b = b | (_bitget(c, 2) << (7 - j))
            c = c >> 3
        cmap[i] = (r, g, b)
    return cmap


def save_palette_png(path: Path, indices: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """A mode "P" PNG of class indices with the devkit palette, as the release's masks are stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(indices.astype(np.uint8), "P")
    im.putpalette((colormap() if palette is None else palette).astype(np.uint8).ravel().tolist())
    im.save(path)
    return path


def plant(h: int, w: int, objects: list[tuple[int, tuple[int, int, int, int]]]) -> np.ndarray:
    """Class indices: each object a rectangle (rows r0:r1, cols c0:c1) whose outermost ring is void 255."""
    idx = np.zeros((h, w), np.uint8)
    for cls, (r0, r1, c0, c1) in objects:
        idx[r0:r1, c0:c1] = 255
        idx[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = cls
    return idx


def expected_names(idx: np.ndarray) -> np.ndarray:
    """The label per pixel the devkit's convention gives: class name, '' for background (0) and void (255)."""
    out = np.full(idx.shape, "", object)
    for i in np.unique(idx).tolist():
        if 0 < i < len(CLASSES):
            out[idx == i] = CLASSES[i]
    return out


def voc_xml(path: Path, filename: str, size: tuple[int, int], boxes: list[tuple[str, tuple[int, int, int, int]]],
            segmented: bool) -> Path:
    """An Annotations/<id>.xml as the devkit ships it (1-based inclusive <bndbox> corners)."""
    h, w = size
    objects = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
        f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for name, (x0, y0, x1, y1) in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{filename}</filename>\n\t<source>\n"
        "\t\t<database>The VOC2007 Database</database>\n\t\t<annotation>PASCAL VOC2007</annotation>\n"
        "\t\t<image>flickr</image>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>{int(segmented)}</segmented>\n{objects}</annotation>\n")
    return path


def write_devkit_files(devkit: Path) -> None:
    """The devkit's own files beside the VOC2012 folder (code, docs, results and local folders)."""
    (devkit / "VOCcode").mkdir(parents=True, exist_ok=True)
    (devkit / "VOCcode" / "VOCinit.m").write_text("VOCopts.classes={'aeroplane' 'bicycle' 'bird'};\n")
    (devkit / "VOCcode" / "VOClabelcolormap.m").write_text("function cmap = VOClabelcolormap(N)\n")
    (devkit / "devkit_doc.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (devkit / "viewanno.m").write_text("% view annotations\n")
    (devkit / "results" / "VOC2012" / "Segmentation" / "comp5_val_cls").mkdir(parents=True, exist_ok=True)
    (devkit / "local" / "VOC2012").mkdir(parents=True, exist_ok=True)
