"""A small Cityscapes release in its real on-disk layout, for the Cityscapes builder's tests.

What the release holds (``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip``, ``gtCoarse.zip``
extracted into one folder)::

    README, license.txt
    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png        8-bit RGB
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_color.png             RGBA, label colours
                                                  _gtFine_instanceIds.png   16-bit grey
                                                  _gtFine_labelIds.png      8-bit grey
                                                  _gtFine_polygons.json     imgHeight, imgWidth, objects
    gtCoarse/<split>/<city>/..._gtCoarse_*                                  the same four files

The label images follow cityscapesScripts' ``json2labelImg`` / ``json2instanceImg`` rules, restated
here: the canvas starts as ``unlabeled`` (id 0); objects are painted in file order, later over
earlier; in the instance image a label with instances gets ``id * 1000 + n`` (n counting that
label's objects from 0), a ``<label>group`` object and a label without instances get the plain id.
Objects here are axis-aligned boxes, so the painted pixels are known by construction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: The entries of cityscapesScripts' label table the tests use: name -> (id, hasInstances, colour).
TABLE = {
    "unlabeled": (0, False, (0, 0, 0)),
    "ego vehicle": (1, False, (0, 0, 0)),
    "rectification border": (2, False, (0, 0, 0)),
    "out of roi": (3, False, (0, 0, 0)),
    "ground": (6, False, (81, 0, 81)),
    "road": (7, False, (128, 64, 128)),
    "sidewalk": (8, False, (244, 35, 232)),
    "parking": (9, False, (250, 170, 160)),
    "building": (11, False, (70, 70, 70)),
    "bridge": (15, False, (150, 100, 100)),
    "vegetation": (21, False, (107, 142, 35)),
    "terrain": (22, False, (152, 251, 152)),
    "sky": (23, False, (70, 130, 180)),
    "person": (24, True, (220, 20, 60)),
    "car": (26, True, (0, 0, 142)),
    "bicycle": (33, True, (119, 11, 32)),
}


@dataclass
class Frame:
    """One image of the release: where it sits, and the boxes of each annotation kind."""

    split: str
    city: str
    seq: int
    frame: int
    #: ``{"gtFine": [(label, (x0, y0, x1, y1)), ...], "gtCoarse": [...]}``; boxes are half-open.
    annotations: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """``<city>_<seq>_<frame>``, zero-padded as the release names files."""
        return f"{self.city}_{self.seq:06d}_{self.frame:06d}"


def paint(objects: list[tuple[str, tuple[int, int, int, int]]], h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label names, class ids and instance ids of a list of boxes, painted in order."""
    names = np.full((h, w), "unlabeled", object)
    ids = np.zeros((h, w), np.uint8)
    instances = np.zeros((h, w), np.uint16)
    counts: dict[str, int] = {}
    for label, (x0, y0, x1, y1) in objects:
        group = label.endswith("group") and label not in TABLE
        base = label[: -len("group")] if group else label
        ident, has_instances, _ = TABLE[base]
        names[y0:y1, x0:x1] = base
        ids[y0:y1, x0:x1] = ident
        value = ident
        if has_instances and not group:
            value = ident * 1000 + counts.get(base, 0)
            counts[base] = counts.get(base, 0) + 1
        instances[y0:y1, x0:x1] = value
    return names, ids, instances


def write_release(root: Path, frames: list[Frame], h: int, w: int) -> Path:
    """Write the release files of ``frames`` under ``root`` (the folder holding leftImg8bit/)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README").write_text("The Cityscapes Dataset\n")
    (root / "license.txt").write_text("The Cityscapes Dataset license\n")
    rng = np.random.default_rng(7)
    for f in frames:
        image = root / "leftImg8bit" / f.split / f.city / f"{f.stem}_leftImg8bit.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
        for kind, objects in f.annotations.items():
            folder = root / kind / f.split / f.city
            folder.mkdir(parents=True, exist_ok=True)
            prefix = folder / f"{f.stem}_{kind}_"
            names, ids, instances = paint(objects, h, w)
            Image.fromarray(ids).save(f"{prefix}labelIds.png")
            # 16-bit greyscale, as the release's instance images are stored.
            Image.fromarray(instances).save(f"{prefix}instanceIds.png")
            colour = np.zeros((h, w, 4), np.uint8)
            colour[..., 3] = 255
            for name in set(names.ravel().tolist()):
                colour[names == name, :3] = TABLE[name][2]
            Image.fromarray(colour).save(f"{prefix}color.png")
            polygons = {"imgHeight": h, "imgWidth": w, "objects": [
                {"label": label, "polygon": [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]}
                for label, (x0, y0, x1, y1) in objects]}
            Path(f"{prefix}polygons.json").write_text(json.dumps(polygons, indent=4))
    return root
