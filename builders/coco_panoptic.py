"""COCO panoptic annotations (``panoptic_<subset>.json`` + one PNG per image), read for the COCO builder.

The format, as the COCO site and cocoapi's panoptic notes define it and panopticapi reads it::

    annotations/panoptic_<subset>.json   images, categories [{id, name, supercategory, isthing, color}],
                                         annotations [{image_id, file_name, segments_info}]
    annotations/panoptic_<subset>/<file_name>   the PNG "in a folder with the same name as the JSON"

``segments_info`` is ``[{id, category_id, area, bbox, iscrowd}]``; each PNG pixel holds the id of
its segment as ``R + 256 G + 256^2 B`` (panopticapi ``rgb2id``), and id 0 is unlabeled (void).
The release zips each PNG folder, and unzipping it in place may nest it once more
(``panoptic_<subset>/panoptic_<subset>/``); a folder beside ``annotations/`` is used too
(the layout Detectron2 documents). As panopticapi does, a PNG holding a segment id that
``segments_info`` does not list is refused (the item is skipped); a listed segment that paints
no pixel is not an error here (it paints nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from concepts.broden.format import shown
from concepts.builders._raster import read_rgb_channels
from concepts.builders._export import contained
from concepts.errors import SourceError, SourceItemError

#: Largest id three 8-bit channels can hold.
MAX_SEGMENT = 256**3 - 1


@dataclass
class PanopticEntry:
    """One image's panoptic annotation: its PNG name and segments ``(segment id, category id)``."""

    index: int
    image_id: int
    png: str
    segments: list[tuple[int, int]]


def _whole(value: Any, where: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"{where} {shown(value)} is not a whole number", path=path)
    return value


def is_panoptic(data: Any) -> bool:
    """Whether parsed JSON looks like a panoptic file (its annotations carry ``segments_info``)."""
    anns = data.get("annotations") if isinstance(data, dict) else None
    return isinstance(anns, list) and any(isinstance(a, dict) and "segments_info" in a for a in anns[:50])


def isthing(category: dict[str, Any], where: str, path: Path) -> bool:
    """A panoptic category's ``isthing`` (0/1 or false/true); anything else is a SourceError naming it."""
    value = category.get("isthing")
    if value not in (0, 1) or isinstance(value, float):
        raise SourceError(f"{where}.isthing {shown(value)} is not 0 or 1", path=path)
    return bool(value)


def entries(data: dict[str, Any], path: Path) -> list[PanopticEntry]:
    """The checked ``annotations`` of a panoptic file, in file order."""
    out = []
    for n, ann in enumerate(data["annotations"]):
        where = f"annotations[{n}]"
        if not isinstance(ann, dict):
            raise SourceError(f"{where} is not an object", path=path)
        image_id = _whole(ann.get("image_id"), f"{where}.image_id", path)
        png = ann.get("file_name")
        if not isinstance(png, str) or not png.strip() or "\0" in png:
            raise SourceError(f"{where}.file_name {shown(png)} is not a PNG file name", path=path)
        infos = ann.get("segments_info")
        if not isinstance(infos, list):
            raise SourceError(f"{where}.segments_info {shown(infos)} is not a list", path=path)
        segments, seen = [], set()
        for k, info in enumerate(infos):
            at = f"{where}.segments_info[{k}]"
            if not isinstance(info, dict):
                raise SourceError(f"{at} is not an object", path=path)
            ident = _whole(info.get("id"), f"{at}.id", path)
            if not 1 <= ident <= MAX_SEGMENT:
                raise SourceError(f"{at}.id {ident} is not a segment id (1 to {MAX_SEGMENT}; 0 is unlabeled)", path=path)
            if ident in seen:
                raise SourceError(f"{at}.id {ident} is listed twice for this image", path=path)
            seen.add(ident)
            segments.append((ident, _whole(info.get("category_id"), f"{at}.category_id", path)))
        out.append(PanopticEntry(n, image_id, png.replace("\\", "/"), segments))
    return out


def png_folders(base: Path, json_path: Path) -> list[Path]:
    """Where the PNGs of ``json_path`` may lie, in the order they are tried."""
    stem = json_path.stem
    beside = json_path.parent / stem
    return list(dict.fromkeys([beside, beside / stem, base / stem, base / stem / stem]))


def segment_ids(base: Path, json_path: Path, png: str, size: tuple[int, int]) -> np.ndarray:
    """The ``H x W`` segment ids of one panoptic PNG (``R + 256 G + 256^2 B``), found and checked."""
    folders = png_folders(base, json_path)
    found = next((f / png for f in folders if (f / png).is_file()), None)
    if found is None:
        looked = ", ".join(relative(f, base) for f in folders)
        raise SourceItemError(f"panoptic PNG {png[:200]!r} is missing; looked in {looked}", path=json_path,
                              reason="missing annotation")
    contained(base, found, where=json_path, element=f"panoptic file_name {png[:200]!r}")
    rgb = read_rgb_channels(found, what="panoptic PNG").astype(np.int32)
    if rgb.shape[:2] != size:
        raise SourceItemError(f"panoptic PNG is {rgb.shape[1]} x {rgb.shape[0]}, the image {size[1]} x {size[0]}",
                              path=found, reason="bad annotation")
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def check_listed(ids: np.ndarray, listed: set[int], png: Path | str) -> None:
    """Refuse a PNG holding a segment id that ``segments_info`` does not list (as panopticapi does)."""
    present = np.unique(ids)
    unknown = [int(v) for v in present if v and int(v) not in listed]
    if unknown:
        raise SourceItemError(f"panoptic PNG holds segment id {unknown[0]} that segments_info does not list"
                              + (f" ({len(unknown)} such ids)" if len(unknown) > 1 else ""), path=png, reason="bad annotation")


def relative(folder: Path, base: Path) -> str:
    """``folder`` relative to ``base`` as ``dir/`` (``./`` for the base itself), for messages."""
    try:
        text = folder.relative_to(base).as_posix()
    except ValueError:
        return str(folder)
    return "./" if text == "." else text + "/"
