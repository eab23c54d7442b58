"""Writers of fake raw source trees in the real on-disk layouts of the Broden sources.

Each ``write_*`` function lays out one source exactly as its release does (FORMATS.md B.1-B.7):
MATLAB structs through ``scipy.io.savemat``, RG-encoded PNGs, text files with their quirks
(trailing spaces, tabs), a real pickle for ADE20K 2021. Tests pass explicit label arrays and check
the records and datasets pixel by pixel; ``random_*`` helpers make many realistic images for the
multi-source tests and the build-speed benchmark.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

# -- images and encodings -------------------------------------------------------------------------


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like RGB image (gradients plus a few flat patches)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(h + w - 2, 1))], -1)
    out = out.astype(np.uint8)
    for _ in range(4):
        top, left = rng.integers(0, h), rng.integers(0, w)
        out[top : top + h // 4, left : left + w // 4] = rng.integers(0, 256, 3)
    return out


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """An ``h x w`` image of one colour."""
    out = np.zeros((h, w, 3), np.uint8)
    out[:] = rgb
    return out


def save_jpeg(path: Path, pixels: np.ndarray, quality: int = 92) -> None:
    """Write an RGB array as a JPEG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=quality)


def ade_encode(classes: np.ndarray) -> np.ndarray:
    """ADE20K ``_seg.png`` pixels: R = class // 256 * 10, G = class % 256, B = instance (0 where unlabeled)."""
    classes = np.asarray(classes, dtype=np.int64)
    out = np.zeros(classes.shape + (3,), np.uint8)
    out[..., 0] = (classes // 256) * 10
    out[..., 1] = classes % 256
    # Instance values are arbitrary in the release; give each class a distinct non-zero one.
    _, inverse = np.unique(classes, return_inverse=True)
    out[..., 2] = np.where(classes > 0, (inverse.reshape(classes.shape) * 37 + 5) % 251 + 1, 0)
    return out


def blocks(h: int, w: int, ids: list[int], rng: np.random.Generator, count: int = 6) -> np.ndarray:
    """A label map of random rectangles drawn from ``ids`` (later over earlier), 0 elsewhere."""
    out = np.zeros((h, w), np.int32)
    for _ in range(count):
        top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
        out[top : top + int(rng.integers(h // 8, h // 2 + 1)), left : left + int(rng.integers(w // 8, w // 2 + 1))] = rng.choice(ids)
    return out


def write_v73_header(path: Path) -> None:
    """A MAT-file whose header says v7.3 (HDF5), which scipy cannot read."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path.write_bytes(text.ljust(116, b" ") + bytes(8) + b"\x00\x02IM" + bytes(512))


def _cell(values: list) -> np.ndarray:
    """A MATLAB 1xN cell array."""
    arr = np.empty((1, len(values)), dtype=object)
    for i, v in enumerate(values):
        arr[0, i] = v
    return arr


# -- ADE20K 2016 / 2021 -----------------------------------------------------------------------------


@dataclass
class AdeImage:
    """One ADE image: ``folder`` under ``images/`` (``training/a/abbey``), raw index scene, label arrays."""

    stem: str
    folder: str
    scene: str
    pixels: np.ndarray
    objects: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)


def _write_ade_files(folder: Path, im: AdeImage) -> None:
    save_jpeg(folder / f"{im.stem}.jpg", im.pixels)
    Image.fromarray(ade_encode(im.objects)).save(folder / f"{im.stem}_seg.png")
    for level, part in enumerate(im.parts, start=1):
        Image.fromarray(ade_encode(part)).save(folder / f"{im.stem}_parts_{level}.png")


def _presence(objectnames: list[str], images: list[AdeImage]) -> tuple[np.ndarray, np.ndarray]:
    presence = np.zeros((len(objectnames), len(images)))
    is_part = np.zeros_like(presence)
    for j, im in enumerate(images):
        for c in np.unique(im.objects):
            if 0 < c <= len(objectnames):
                presence[c - 1, j] += 1
        for part in im.parts:
            for c in np.unique(part):
                if 0 < c <= len(objectnames):
                    presence[c - 1, j] += 1
                    is_part[c - 1, j] += 1
    return presence, is_part


def write_ade20k_2016(root: Path, objectnames: list[str], images: list[AdeImage]) -> Path:
    """Lay out ``root/ADE20K_2016_07_26`` with ``index_ade20k.mat``; return that folder."""
    base = root / "ADE20K_2016_07_26"
    for im in images:
        folder = base / "images" / im.folder
        folder.mkdir(parents=True, exist_ok=True)
        _write_ade_files(folder, im)
        # Deliberately bad ids (beyond the names) are written to the PNGs but not described.
        known = [c for c in np.unique(im.objects) if 0 < c <= len(objectnames)]
        lines = [f"{i:03d} # 0 # 0 # {objectnames[c - 1]} # {objectnames[c - 1].split(',')[0]} # \"\"" for i, c in enumerate(known, 1)]
        (folder / f"{im.stem}_atr.txt").write_text("\n".join(lines) + "\n")
    presence, is_part = _presence(objectnames, images)
    index = {
        "filename": _cell([f"{im.stem}.jpg" for im in images]),
        "folder": _cell([f"ADE20K_2016_07_26/images/{im.folder}" for im in images]),
        "typeset": np.array([[1 if "train" in im.stem else 2 for im in images]], dtype=float),
        "scene": _cell([im.scene for im in images]),
        "objectnames": _cell(objectnames),
        "objectcounts": presence.sum(1).reshape(-1, 1),
        "objectPresence": presence,
        "objectIsPart": is_part,
        "proportionClassIsPart": (is_part.sum(1) / np.maximum(presence.sum(1), 1)).reshape(-1, 1),
        "wordnet_found": np.ones((len(objectnames), 1)),
        "wordnet_synset": _cell([n.split(",")[0] + ".n.01" for n in objectnames]),
        "wordnet_hypernym": _cell(["entity" for _ in objectnames]),
        "wordnet_gloss": _cell(["" for _ in objectnames]),
    }
    scipy.io.savemat(base / "index_ade20k.mat", {"index": index}, do_compression=True)
    return base


@dataclass
class AdeInstance:
    """One annotated ADE instance: class id (1-based into the names), mask, and its ``_atr.txt`` fields."""

    cls: int
    mask: np.ndarray
    raw: str = ""
    occluded: int = 0
    attributes: str = ""


@dataclass
class AdeAnnotatedImage:
    """An ADE 2016 image given instance by instance: ``levels[0]`` objects, ``levels[N]`` parts of level N."""

    stem: str
    folder: str
    scene: str
    pixels: np.ndarray
    levels: list[list[AdeInstance]]

    def classes(self, level: int) -> np.ndarray:
        """The class map of one level, instances painted in order (later over earlier)."""
        out = np.zeros(self.pixels.shape[:2], np.int32)
        for inst in self.levels[level]:
            out[inst.mask] = inst.cls
        return out


def write_ade20k_2016_annotated(root: Path, objectnames: list[str], images: list[AdeAnnotatedImage], *, index: bool = True) -> Path:
    """Lay out ``root/ADE20K_2016_07_26`` as :func:`write_ade20k_2016` does, with real instances.

    Each level's PNG holds the instances in B, the k-th instance of a level having the k-th
    smallest non-zero B value (loadAde20K.m numbers instances by the rank of their B value); the
    values step by 9 so that a reader using the values themselves goes wrong. ``_atr.txt`` lists
    every instance of every level, ``NNN # level # occluded # WordNet name # raw name # "attributes"``,
    objects first, as the release's files do. ``index=False`` leaves out ``index_ade20k.mat``.
    """
    plain = [AdeImage(im.stem, im.folder, im.scene, im.pixels, im.classes(0), [im.classes(n) for n in range(1, len(im.levels))])
             for im in images]
    base = write_ade20k_2016(root, objectnames, plain)
    for im in images:
        folder = base / "images" / im.folder
        rows = []
        for level, instances in enumerate(im.levels):
            blue = np.zeros(im.pixels.shape[:2], np.uint8)
            for k, inst in enumerate(instances, start=1):
                blue[inst.mask] = 3 + 9 * k
                name = objectnames[inst.cls - 1]
                rows.append(f"{k:03d} # {level} # {inst.occluded} # {name} # {inst.raw or name.split(',')[0]} # \"{inst.attributes}\"")
            rgb = ade_encode(im.classes(level))
            rgb[..., 2] = blue
            Image.fromarray(rgb).save(folder / (f"{im.stem}_seg.png" if level == 0 else f"{im.stem}_parts_{level}.png"))
        (folder / f"{im.stem}_atr.txt").write_text("\n".join(rows) + "\n")
    if not index:
        (base / "index_ade20k.mat").unlink()
    return base


def _ade_json(im: AdeImage, objectnames: list[str]) -> dict:
    """The per-image JSON of the 2021 release, with its type quirks (int-or-list, string crop)."""
    objects = []
    layers = [im.objects] + im.parts
    owner: dict[tuple[int, int], int] = {}
    next_id = 0
    for level, layer in enumerate(layers):
        for c in np.unique(layer):
            if not c:
                continue
            ys, xs = np.nonzero(layer == c)
            parent = owner.get((level - 1, int(layers[level - 1][ys[0], xs[0]]))) if level else None
            obj = {
                "id": next_id,
                "name": objectnames[c - 1],
                "name_ndx": int(c),
                "hypernym": [],
                "raw_name": objectnames[c - 1].split(",")[0],
                "attributes": "walking" if next_id % 3 == 1 else [],
                "depth_ordering_rank": next_id + 1,
                "occluded": ["no", "yes", []][next_id % 3],
                "crop": str(next_id % 2),
                "parts": {"hasparts": [], "ispartof": parent if parent is not None else [], "part_level": level},
                "instance_mask": f"{im.stem}/instance_{next_id:03d}_{im.stem}.png",
                "polygon": {"x": [int(xs.min()), int(xs.max()), int(xs.max())], "y": [int(ys.min()), int(ys.min()), int(ys.max())], "click_date": []},
                "saved_date": "18-Dec-2005 06:56:48",
            }
            owner[(level, int(c))] = next_id
            objects.append(obj)
            next_id += 2  # ids are unique but skip, as in the release
    by_id = {o["id"]: o for o in objects}
    for o in objects:
        parent = o["parts"]["ispartof"]
        if parent != []:
            has = by_id[parent]["parts"]["hasparts"]
            by_id[parent]["parts"]["hasparts"] = [has, o["id"]] if isinstance(has, int) else (has + [o["id"]] if has else o["id"])
    h, w = im.objects.shape
    return {"annotation": {"filename": f"{im.stem}.jpg", "folder": f"ADE20K_2021_17_01/images/ADE/{im.folder}", "imsize": [h, w, 3],
                           "source": {"folder": "x", "filename": "y.jpg", "origin": ""}, "scene": ["outdoor"] + im.folder.split("/")[1:],
                           "object": objects}}


def write_ade20k_2021(root: Path, objectnames: list[str], images: list[AdeImage], *, pickle_index: bool = True, latin1: tuple[str, ...] = ()) -> Path:
    """Lay out ``root/ADE20K_2021_17_01`` (+ ``root/index_ade20k.pkl``); return ``root``.

    ``latin1`` names images whose JSON is written in Latin-1 instead of UTF-8.
    """
    base = root / "ADE20K_2021_17_01"
    for im in images:
        folder = base / "images" / "ADE" / im.folder
        folder.mkdir(parents=True, exist_ok=True)
        _write_ade_files(folder, im)
        ann = _ade_json(im, objectnames)
        (folder / im.stem).mkdir(exist_ok=True)
        layers = [im.objects] + im.parts
        for obj in ann["annotation"]["object"]:
            mask = layers[obj["parts"]["part_level"]] == obj["name_ndx"]
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(folder / obj["instance_mask"])
        text = json.dumps(ann, ensure_ascii=False)
        (folder / f"{im.stem}.json").write_bytes(text.encode("latin-1" if im.stem in latin1 else "utf-8"))
    if pickle_index:
        presence, is_part = _presence(objectnames, images)
        index = {
            "filename": [f"{im.stem}.jpg" for im in images],
            "folder": [f"ADE20K_2021_17_01/images/ADE/{im.folder}" for im in images],
            "scene": ["/" + im.scene for im in images],
            "objectnames": list(objectnames),
            "objectcounts": presence.sum(1),
            "objectPresence": presence,
            "objectIsPart": is_part,
            "proportionClassIsPart": is_part.sum(1) / np.maximum(presence.sum(1), 1),
            "wordnet_found": [True] * len(objectnames),
            "wordnet_level1": [""] * len(objectnames),
            "description": {"filename": "image file names", "folder": "folder of each image"},
        }
        with (root / "index_ade20k.pkl").open("wb") as f:
            pickle.dump(index, f)
    return root


# -- ADE20K SceneParsing ----------------------------------------------------------------------------


def write_scene_parsing(root: Path, names: dict[int, str], images: list[tuple[str, str, np.ndarray, np.ndarray | None, str]]) -> Path:
    """Lay out ``root/ADEChallengeData2016``; images are ``(split, stem, pixels, labels, scene)``."""
    base = root / "ADEChallengeData2016"
    for split, stem, pixels, labels, _ in images:
        save_jpeg(base / "images" / split / f"{stem}.jpg", pixels)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        if labels is not None:
            Image.fromarray(labels.astype(np.uint8), "L").save(base / "annotations" / split / f"{stem}.png")
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    for i, name in sorted(names.items()):
        # The real file has trailing spaces after some indices and names.
        lines.append(f"{i}{' ' if i % 2 else ''}\t0.{1000 - i:04d}\t{100 + i}\t{10 + i}\t{name}{' ' if i % 3 == 0 else ''}")
    (base / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    (base / "sceneCategories.txt").write_text("".join(f"{stem} {scene}\n" for _, stem, _, _, scene in images))
    return base


# -- Pascal-Context and Pascal-Part ---------------------------------------------------------------

# part2ind.m in compact form, class by class (VOC order): ("part", code, comment), ("loop", base, count,
# offset, comment), ("copy", class index, comment), ("remove", codes), ("silhouette", spelling).
PART2IND = [
    ("aeroplane", [("part", "body", None), ("part", "stern", None), ("part", "lwing", "left wing"), ("part", "rwing", "right wing"),
                   ("part", "tail", None), ("loop", "engine", 10, 10, "multiple engines"), ("loop", "wheel", 10, 20, "multiple wheels")]),
    ("bicycle", [("part", "fwheel", "front wheel"), ("part", "bwheel", "back wheel"), ("part", "saddle", None),
                 ("part", "handlebar", "handle bar"), ("part", "chainwheel", "chain wheel"), ("loop", "headlight", 10, 10, None)]),
    ("bird", [("part", "head", None), ("part", "leye", "left eye"), ("part", "reye", "right eye"), ("part", "beak", None),
              ("part", "torso", None), ("part", "neck", None), ("part", "lwing", "left wing"), ("part", "rwing", "right wing"),
              ("part", "lleg", "left leg"), ("part", "lfoot", "left foot"), ("part", "rleg", "right leg"),
              ("part", "rfoot", "right foot"), ("part", "tail", None)]),
    ("boat", [("silhouette", "silhouette")]),
    ("bottle", [("part", "cap", None), ("part", "body", None)]),
    ("bus", [("part", "frontside", None), ("part", "leftside", None), ("part", "rightside", None), ("part", "backside", None),
             ("part", "roofside", None), ("part", "leftmirror", None), ("part", "rightmirror", None),
             ("part", "fliplate", "front license plate"), ("part", "bliplate", "back license plate"),
             ("loop", "door", 10, 10, None), ("loop", "wheel", 10, 20, None), ("loop", "headlight", 10, 30, None),
             ("loop", "window", 20, 40, None)]),
    ("car", [("copy", 6, "car has the same set of parts with bus")]),
    ("cat", [("part", "head", None), ("part", "leye", "left eye"), ("part", "reye", "right eye"), ("part", "lear", "left ear"),
             ("part", "rear", "right ear"), ("part", "nose", None), ("part", "torso", None), ("part", "neck", None),
             ("part", "lfleg", "left front leg"), ("part", "lfpa", "left front paw"), ("part", "rfleg", "right front leg"),
             ("part", "rfpa", "right front paw"), ("part", "lbleg", "left back leg"), ("part", "lbpa", "left back paw"),
             ("part", "rbleg", "right back leg"), ("part", "rbpa", "right back paw"), ("part", "tail", None)]),
    ("chair", [("silhouette", "sihouette")]),
    ("cow", [("part", "head", None), ("part", "leye", "left eye"), ("part", "reye", "right eye"), ("part", "lear", "left ear"),
             ("part", "rear", "right ear"), ("part", "muzzle", None), ("part", "lhorn", "left horn"), ("part", "rhorn", "right horn"),
             ("part", "torso", None), ("part", "neck", None), ("part", "lfuleg", "left front upper leg"),
             ("part", "lflleg", "left front lower leg"), ("part", "rfuleg", "right front upper leg"),
             ("part", "rflleg", "right front lower leg"), ("part", "lbuleg", "left back upper leg"),
             ("part", "lblleg", "left back lower leg"), ("part", "rbuleg", "right back upper leg"),
             ("part", "rblleg", "right back lower leg"), ("part", "tail", None)]),
    ("diningtable", [("silhouette", "silhouette")]),
    ("dog", [("copy", 8, "dog has the same set of parts with cat,"), ("part", "muzzle", None)]),
    ("horse", [("copy", 10, "horse has the same set of parts with cow,"), ("remove", ["lhorn", "rhorn"]),
               ("part", "lfho", None), ("part", "rfho", None), ("part", "lbho", None), ("part", "rbho", None)]),
    ("motorbike", [("part", "fwheel", None), ("part", "bwheel", None), ("part", "handlebar", None), ("part", "saddle", None),
                   ("loop", "headlight", 10, 10, None)]),
    ("person", [("part", "head", None), ("part", "leye", "left eye"), ("part", "reye", "right eye"), ("part", "lear", "left ear"),
                ("part", "rear", "right ear"), ("part", "lebrow", "left eyebrow"), ("part", "rebrow", "right eyebrow"),
                ("part", "nose", None), ("part", "mouth", None), ("part", "hair", None), ("part", "torso", None),
                ("part", "neck", None), ("part", "llarm", "left lower arm"), ("part", "luarm", "left upper arm"),
                ("part", "lhand", "left hand"), ("part", "rlarm", "right lower arm"), ("part", "ruarm", "right upper arm"),
                ("part", "rhand", "right hand"), ("part", "llleg", "left lower leg"), ("part", "luleg", "left upper leg"),
                ("part", "lfoot", "left foot"), ("part", "rlleg", "right lower leg"), ("part", "ruleg", "right upper leg"),
                ("part", "rfoot", "right foot")]),
    ("pottedplant", [("part", "pot", None), ("part", "plant", None)]),
    ("sheep", [("copy", 10, "sheep has the same set of parts with cow")]),
    ("sofa", [("silhouette", "sihouette")]),
    ("train", [("part", "head", None), ("part", "hfrontside", "head front side"), ("part", "hleftside", "head left side"),
               ("part", "hrightside", "head right side"), ("part", "hbackside", "head back side"),
               ("part", "hroofside", "head roof side"), ("loop", "headlight", 10, 10, None), ("loop", "coach", 10, 20, None),
               ("loop", "cfrontside", 10, 30, "coach front side"), ("loop", "cleftside", 10, 40, "coach left side"),
               ("loop", "crightside", 10, 50, "coach right side"), ("loop", "cbackside", 10, 60, "coach back side"),
               ("loop", "croofside", 10, 70, "coach roof side")]),
    ("tvmonitor", [("part", "screen", None)]),
]


def render_part2ind(spec: list = PART2IND) -> str:
    """part2ind.m text in the release's MATLAB syntax (maps, sprintf loops, copies, removals)."""
    out = ["function pimap = part2ind()", "% Define the part index of each objects.",
           "% pimap{15}('llleg')      = 19;               % left lower leg", "", "pimap = cell(20, 1);",
           "for ii = 1:20", "    pimap{ii} = containers.Map('KeyType','char','ValueType','int32');", "end", ""]
    for k, (name, statements) in enumerate(spec, start=1):
        out.append(f"% [{name}]")
        value = 1
        for st in statements:
            if st[0] == "part":
                comment = f"\t% {st[2]}" if st[2] else ""
                out.append(f"pimap{{{k}}}('{st[1]}'){' ' * max(1, 12 - len(st[1]))}= {value};{comment}")
                value += 1
            elif st[0] == "loop":
                comment = f" % {st[4]}" if st[4] else ""
                out += [f"for ii = 1:{st[2]}", f"    pimap{{{k}}}(sprintf('{st[1]}_%d', ii)) = {st[3]} + ii;{comment}", "end"]
            elif st[0] == "copy":
                out += [f"keySet = keys(pimap{{{st[1]}}});", f"valueSet = values(pimap{{{st[1]}}});",
                        f"pimap{{{k}}} = containers.Map(keySet, valueSet);         \t% {st[2]}"]
                value = 20 if name == "dog" else 30
            elif st[0] == "remove":
                out.append(f"remove(pimap{{{k}}}, {{{', '.join(repr(c) for c in st[1])}}});")
            elif st[0] == "silhouette":
                out.append(f"% only has {st[1]} mask ")
        out.append("")
    return "\n".join(out) + "\n"


# How the release writes each class's loops: the value expression and the sprintf spacing differ by class.
_RELEASE_LOOP_STYLE = {"aeroplane": ("{offset}+ii", ", "), "bus": ("{offset} + ii", ","), "train": ("{offset} + ii", ",")}


def part2ind_as_released(spec: list = PART2IND, values: dict[tuple[int, str], str] | None = None,
                         extra: dict[int, list[str]] | None = None) -> str:
    """part2ind.m with the release's own layout: its header, padded values, tabs, trailing spaces,
    ``10+ii`` and ``sprintf('door_%d',ii)`` loops, multi-line copy comments and blank-line groups.

    ``values`` replaces the index expression of an assignment, as a user editing the file does:
    ``{(15, "leye"): "1"}`` for a key, ``{(1, "engine_%d"): "11"}`` for a loop pattern.
    ``extra`` appends statement lines at the end of a class's section (class index -> lines).
    """
    values = values or {}
    out = ["function pimap = part2ind()", "% Define the part index of each objects. ",
           "% Parts can be merged by giving them one index, for example the left lower and upper leg:",
           "% pimap{15}('llleg')      = 19;               % left lower leg",
           "% pimap{15}('luleg')      = 19;               % left upper leg", "",
           "pimap = cell(20, 1);                    ",
           "% One part index map per PASCAL VOC class, in the standard VOC order. ",
           "for ii = 1:20", "    pimap{ii} = containers.Map('KeyType','char','ValueType','int32');", "end", ""]
    for k, (name, statements) in enumerate(spec, start=1):
        out.append(f"% [{name}]")
        value = 1
        expr, comma = _RELEASE_LOOP_STYLE.get(name, ("{offset} + ii", ", "))
        for st in statements:
            if st[0] == "part":
                code = f"pimap{{{k}}}('{st[1]}')"
                text = values.get((k, st[1]), str(value))
                line = f"{code}{' ' * max(1, 24 - len(code))}= {text};"
                pad = " " * max(1, 44 - len(line))
                # Person's leg rows and train's head rows put a tab before the comment, as the release does.
                tab = "\t" if (name == "person" and value >= 19) or name == "train" else ""
                out.append(f"{line}{pad}{tab}% {st[2]}" if st[2] else f"{line}{pad}")
                if name == "person" and st[1] in ("hair", "rhand"):
                    out.append("")  # the release groups head, body and legs with blank lines
                value += 1
            elif st[0] == "loop":
                pattern = f"{st[1]}_%d"
                text = values.get((k, pattern), expr.format(offset=st[3]))
                comment = f" % {st[4]}" if st[4] else ""
                if name == "train":
                    out.append("")
                out += [f"for ii = 1:{st[2]}", f"    pimap{{{k}}}(sprintf('{pattern}'{comma}ii)) = {text};{comment}", "end"]
            elif st[0] == "copy":
                out += [f"keySet = keys(pimap{{{st[1]}}});", f"valueSet = values(pimap{{{st[1]}}});",
                        f"pimap{{{k}}} = containers.Map(keySet, valueSet);         \t% {st[2]} "]
                if name == "dog":
                    out += [" " * 44 + "\t\t% except for the additional", " " * 44 + "\t\t% muzzle"]
                if name == "horse":
                    out.append(" " * 56 + "% except it has hoof instead of horn")
                value = 20 if name == "dog" else 30
            elif st[0] == "remove":
                out.append(f"remove(pimap{{{k}}}, {{{', '.join(repr(c) for c in st[1])}}});")
            elif st[0] == "silhouette":
                out.append(f"% only has {st[1]} mask ")
        out += (extra or {}).get(k, [])
        out.append("")
    return "\n".join(out) + "\n"


def edit_part2ind_values(text: str, values: dict[tuple[int, str], str]) -> str:
    """Change the index of assignments in any part2ind.m text, line by line, as an editor would."""
    lines = text.split("\n")
    for (cls, key), value in values.items():
        quoted = re.escape(f"'{key}'")
        pattern = re.compile(rf"^(\s*pimap\{{{cls}\}}\((?:sprintf\()?{quoted}[^=]*=\s*)[^;]+;")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert len(hits) == 1, f"pimap{{{cls}}}({key!r}) found on {len(hits)} lines"
        lines[hits[0]] = pattern.sub(lambda m: f"{m[1]}{value};", lines[hits[0]])
    return "\n".join(lines)


def context_labels(count: int = 459) -> dict[int, str]:
    """A labels.txt vocabulary in the real numbering: the 59 common classes and ``unknown`` (431) in place."""
    from concepts.builders.pascal import CONTEXT_59_INDICES, CONTEXT_59_NAMES

    labels = {i: f"thing {i}" for i in range(1, count + 1)}  # names with spaces, as 'traffic light'
    labels.update(zip(CONTEXT_59_INDICES, CONTEXT_59_NAMES))
    labels[431] = "unknown"
    return labels


@dataclass
class PartObject:
    """A Pascal-Part object: VOC class name, silhouette mask and ``(part code, mask)`` pairs."""

    cls: str
    mask: np.ndarray
    parts: list[tuple[str, np.ndarray]] = field(default_factory=list)


@dataclass
class PascalImage:
    """A VOC2010 image with an optional Context LabelMap and optional Part objects."""

    voc_id: str
    pixels: np.ndarray
    context: np.ndarray | None = None
    objects: list[PartObject] | None = None


def _struct_array(dtype: list, rows: list[tuple]) -> np.ndarray:
    arr = np.zeros((1, len(rows)), dtype=dtype) if rows else np.zeros((0, 0), dtype=dtype)
    for i, row in enumerate(rows):
        arr[0, i] = row
    return arr


def write_part_mat(path: Path, voc_id: str, objects: list[PartObject]) -> None:
    """Write ``anno`` as Annotations_Part holds it: imname and a 1xK ``objects`` struct array."""
    from concepts.builders.pascal import VOC_CLASSES

    part_dt = [("part_name", "O"), ("mask", "O")]
    obj_dt = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    rows = []
    for obj in objects:
        parts = _struct_array(part_dt, [(name, m.astype(np.uint8)) for name, m in obj.parts])
        rows.append((obj.cls, np.array([[float(VOC_CLASSES.index(obj.cls) + 1)]]), obj.mask.astype(np.uint8), parts))
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (voc_id, _struct_array(obj_dt, rows) if rows else np.zeros((0, 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"anno": anno}, do_compression=True)


def write_pascal(root: Path, images: list[PascalImage], *, labels: dict[int, str] | None = None, layout: str = "broden") -> Path:
    """Lay out VOC2010 JPEGs with Context and Part annotations; return ``root``.

    ``layout="broden"``: ``context/{trainval,labels.txt}``, ``part/{Annotations_Part,part2ind.m}``;
    ``layout="extracted"``: each archive extracted into its own ``trainval`` folder, as downloaded.
    """
    labels = labels or context_labels()
    jpeg = root / "VOCdevkit" / "VOC2010" / "JPEGImages"
    if layout == "broden":
        ctx, part = root / "context", root / "part"
        ctx_mats, part_mats = ctx / "trainval", part / "Annotations_Part"
    else:
        ctx, part = root / "PASCAL-Context", root / "pascal-part" / "trainval"
        ctx_mats, part_mats = ctx / "trainval", part / "Annotations_Part"
    ctx_mats.mkdir(parents=True, exist_ok=True)
    part_mats.mkdir(parents=True, exist_ok=True)
    (ctx / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in sorted(labels.items())))
    (part / "part2ind.m").write_text(render_part2ind())
    for im in images:
        save_jpeg(jpeg / f"{im.voc_id}.jpg", im.pixels)
        if im.context is not None:
            scipy.io.savemat(ctx_mats / f"{im.voc_id}.mat", {"LabelMap": im.context.astype(np.uint16)}, do_compression=True)
        if im.objects is not None:
            write_part_mat(part_mats / f"{im.voc_id}.mat", im.voc_id, im.objects)
    return root


# -- OpenSurfaces -----------------------------------------------------------------------------------


@dataclass
class OsPhoto:
    """An OpenSurfaces photo; ``material``/``objects`` are label-resolution red/green codes."""

    photo_id: int
    pixels: np.ndarray | None
    scene: str
    material: np.ndarray
    objects: np.ndarray


def write_opensurfaces(root: Path, substances: list[str], names: list[str], scenes: list[str], photos: list[OsPhoto]) -> Path:
    """Lay out release 0 as process_opensurfaces_release_0.py writes it; return ``root``.

    Colour codes are 1..n in alphabetical name order; pass the lists sorted.
    """
    (root / "photos").mkdir(parents=True, exist_ok=True)
    (root / "photos-labels").mkdir(parents=True, exist_ok=True)
    for filename, header, values in (
        ("label-substance-colors.csv", ("substance_id", "substance_name", "red_color"), substances),
        ("label-name-colors.csv", ("name_id", "name_name", "green_color"), names),
        ("label-scene-colors.csv", ("scene_category_id", "scene_category_name", "blue_color"), scenes),
    ):
        with (root / filename).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows((100 + i, v, i) for i, v in enumerate(values, start=1))
    with (root / "photos.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("photo_id", "scene_category_name", "scene_category_score", "whitebalanced", "whitebalanced_score",
                    "fov", "flickr_url", "license_name", "license_is_creative_commons"))
        for p in photos:
            w.writerow((p.photo_id, p.scene, 0.9, True, 0.8, 55.0, f"http://www.flickr.com/photos/u/{p.photo_id}/", "CC BY", True))
    for p in photos:
        if p.pixels is not None:
            save_jpeg(root / "photos" / f"{p.photo_id}.jpg", p.pixels)
        blue = scenes.index(p.scene) + 1 if p.scene in scenes else 0
        rgb = np.stack([p.material, p.objects, np.full_like(p.material, blue)], -1).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(root / "photos-labels" / f"{p.photo_id}.png")
    return root


# -- DTD --------------------------------------------------------------------------------------------


def write_dtd(root: Path, entries: list[tuple[str, list[str], np.ndarray]]) -> Path:
    """Lay out ``root/dtd`` from ``(relative path, attributes, pixels)``; return ``root/dtd``."""
    base = root / "dtd"
    for rel, _, pixels in entries:
        save_jpeg(base / "images" / rel, pixels)
    (base / "labels").mkdir(parents=True, exist_ok=True)
    # Every line ends with a space in the release.
    (base / "labels" / "labels_joint_anno.txt").write_text("".join(f"{rel} {' '.join(attrs)} \n" for rel, attrs, _ in entries))
    for split in ("train1", "val1", "test1"):
        (base / "labels" / f"{split}.txt").write_text("".join(f"{rel}\n" for rel, _, _ in entries[:: 3]))
    return base


# -- many random images (multi-source tests, benchmark) --------------------------------------------

ADE_NAMES = ["wall", "floor, flooring", "person, individual, someone, somebody, mortal, soul", "car, auto, automobile, machine, motorcar",
             "wheel", "door", "window", "tree", "head", "sky"]
DTD_CLASSES = ["banded", "polka-dotted", "striped", "zigzagged"]
OS_SUBSTANCES = ["Brick", "Carpet/rug", "Fabric/cloth", "Plastic - clear", "Wood"]
OS_NAMES = ["Cabinet/cupboard", "Floor", "Wall"]
OS_SCENES = ["Bathroom", "Kitchen", "Living room"]


def random_sources(root: Path, count: int, h: int = 384, w: int = 512, seed: int = 0) -> dict[str, Path]:
    """Write ADE 2016, Pascal, OpenSurfaces and DTD trees with ``count`` images in all; return their folders."""
    rng = np.random.default_rng(seed)
    share = [count - 3 * (count // 4)] + [count // 4] * 3
    ade = []
    for i in range(share[0]):
        objects = blocks(h, w, [1, 2, 3, 4, 6, 7, 8, 10], rng)
        parts = [np.where(objects == 4, blocks(h, w, [5, 7], rng, 3), 0), np.where(objects == 3, 9, 0)]
        split = "training" if i % 5 else "validation"
        stem = f"ADE_{'train' if i % 5 else 'val'}_{i + 1:08d}"
        ade.append(AdeImage(stem, f"{split}/s/street", "street" if i % 2 else "wine_cellar/bottle_storage", photo(h, w, i), objects, parts))
    out = {"ade20k": write_ade20k_2016(root / "ade", ADE_NAMES, ade)}
    pascal = []
    for i in range(share[1]):
        context = blocks(h, w, [2, 5, 65, 115, 284, 431], rng).astype(np.uint16)
        person = np.zeros((h, w), bool)
        person[h // 4 : 3 * h // 4, w // 4 : w // 2] = True
        head = person & (np.arange(h)[:, None] < h // 3)
        pascal.append(PascalImage(f"2008_{i:06d}", photo(h, w, 1000 + i), context, [PartObject("person", person, [("head", head)])]))
    out["pascal"] = write_pascal(root / "pascal", pascal)
    photos = []
    for i in range(share[2]):
        lh, lw = 128, int(128 * w / h)  # 1024 high in the release, width truncated as it does
        photos.append(OsPhoto(1000 + i, photo(h, w, 2000 + i), OS_SCENES[i % 3], blocks(lh, lw, [1, 2, 3, 4, 5], rng), blocks(lh, lw, [1, 2, 3], rng)))
    out["opensurfaces"] = write_opensurfaces(root / "os", OS_SUBSTANCES, OS_NAMES, OS_SCENES, photos)
    entries = [(f"{DTD_CLASSES[i % 4]}/{DTD_CLASSES[i % 4]}_{i:04d}.jpg", [DTD_CLASSES[i % 4], DTD_CLASSES[(i + 1) % 4]], photo(h, w, 3000 + i)) for i in range(share[3])]
    out["dtd"] = write_dtd(root / "dtdroot", entries)
    return out
