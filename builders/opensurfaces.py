"""OpenSurfaces release 0, as laid out by ``process_opensurfaces_release_0.py`` (FORMATS.md B.6).

Layout::

    photos.csv                    photo_id, scene_category_name, ... (one row per photo)
    label-substance-colors.csv    substance_id, substance_name, red_color
    label-name-colors.csv         name_id, name_name, green_color
    photos/<photo_id>.jpg         the photo (failed downloads leave it missing: skipped)
    photos-labels/<photo_id>.png  R = material, G = object, B = scene; 1024 high, aspect-scaled

* material: red channel; object: green channel (names split on ``/``, `` - `` becomes ``-``:
  ``Carpet/rug`` gives carpet and rug); scene: image-level from photos.csv. Blue is never read:
  it holds the scene everywhere, background included.
* The label PNG is not photo-sized; layers are resized straight to the segmentation size by the
  unifier. When the photo's aspect ratio only matches the labels after its EXIF rotation, the
  rotated photo is used.
* Option ``supply`` (``"material,color"`` in the Broden recipe) limits the categories this source
  contributes; by default it contributes all of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from concepts.builders import register
from concepts.builders._bands import read_bands
from concepts.builders._raster import candidate_dirs, image_size, inside_input
from concepts.builders.base import Builder
from concepts.broden.reader import parse_int, read_csv
from concepts.errors import SourceError, SourceItemError, UsageError
from concepts.labelcount import present_ids
from concepts.records import Record
from concepts.vocabulary import scene_name

log = logging.getLogger(__name__)

CATEGORIES = ("color", "material", "object", "scene")
#: How far photo and label aspect ratios may differ (label widths are truncated to whole pixels).
ASPECT_TOLERANCE = 0.02


def surface_names(name: str) -> tuple[str, ...]:
    """Broden's names of an OpenSurfaces label: split on ``/``, `` - `` to ``-``, trimmed."""
    return tuple(n.replace(" - ", "-").strip() for n in name.split("/") if n.strip())



def _colour_names(path: Path, name_column: str, code_column: str) -> dict[int, tuple[str, ...]]:
    out = {}
    for row, rec in enumerate(read_csv(path, (name_column, code_column), error=SourceError), start=2):
        text = (rec[code_column] or "").strip()
        code = parse_int(text)
        if code is None:
            raise SourceError(f"{code_column} {text[:40]!r} is not an integer 1..255", path=path, row=row)
        if not 0 < code < 256:
            raise SourceError(f"{code_column} {code} is outside 1..255", path=path, row=row)
        out[code] = surface_names(rec[name_column] or "")
    return out


def parse_supply(value: str | None) -> set[str] | None:
    """``"material,color"`` -> the set of categories; None or empty -> None (everything)."""
    if not value:
        return None
    wanted = {v.strip().lower() for v in str(value).split(",") if v.strip()}
    unknown = wanted - set(CATEGORIES)
    if unknown:
        raise UsageError(f"--supply {value!r}: unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(sorted(unknown))}", hint=f"choose from {', '.join(CATEGORIES)}")
    return wanted


@register
class OpenSurfacesBuilder(Builder):
    """OpenSurfaces photos with material (red) and object (green) label renderings."""

    NAME = "opensurfaces"
    DESCRIPTION = "OpenSurfaces release 0 (photos.csv, label-*-colors.csv, photos/, photos-labels/)"
    EXPECTS = "photos.csv + photos-labels/ (OpenSurfaces release 0)"
    RELEASE = 'an OpenSurfaces release'

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The release folder: ``path`` or one of its sub-folders."""
        for cand in candidate_dirs(path, "opensurfaces"):
            if (cand / "photos.csv").is_file() and (cand / "photos-labels").is_dir():
                return cand
        return None

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.base = base = self.located()
        self.supply = parse_supply(self.options.get("supply"))
        self.materials = _colour_names(base / "label-substance-colors.csv", "substance_name", "red_color")
        names = base / "label-name-colors.csv"
        self.objects = _colour_names(names, "name_name", "green_color") if names.is_file() else {}
        rows = read_csv(base / "photos.csv", ("photo_id", "scene_category_name"), error=SourceError)
        self.photos: list[str] = []
        raw_scene: dict[str, str] = {}
        for row, rec in enumerate(rows, start=2):
            photo = (rec["photo_id"] or "").strip()
            if not (photo.isascii() and photo.isdigit()):
                raise SourceError(f"photo_id {photo!r} is not a number", path=base / "photos.csv", row=row)
            if photo not in raw_scene:
                self.photos.append(photo)
                raw_scene[photo] = rec["scene_category_name"] or ""
        scenes = {p: scene_name(s) for p, s in raw_scene.items()}
        self.scene_names = sorted({s for s in scenes.values() if s})
        ids = {s: i for i, s in enumerate(self.scene_names, start=1)}
        self.scene_of = {p: ids[s] for p, s in scenes.items() if s}

    def _wants(self, category: str) -> bool:
        return self.supply is None or category in self.supply

    def items(self) -> list[str]:
        """Photo ids in photos.csv order."""
        return list(self.photos)

    def load(self, item: str) -> Record:
        """Material and object layers from the label rendering, and the photo's scene."""
        photo = inside_input(self.base, self.base / "photos" / f"{item}.jpg", what="photo", item=item)
        if not photo.is_file():
            raise SourceItemError("photo is missing (failed download?)", path=photo, reason="missing image")
        record = Record(key=item, image=photo)
        if self._wants("material") or self._wants("object"):
            label_path = inside_input(self.base, self.base / "photos-labels" / f"{item}.png", what="label image", item=item)
            red, green = read_bands(label_path, (0, 1), what="label image")
            record.image = self._oriented(photo, red.width, red.height)
            for category, band, table in (("material", red, self.materials), ("object", green, self.objects)):
                if not self._wants(category):
                    continue
                # uint8, as stored: ids are at most 255, and 8-bit layers are the cheapest to count.
                layer = np.asarray(band)
                ids = present_ids(layer)
                for ident in ids:
                    if ident not in table:
                        raise SourceItemError(f"{category} code {ident} is not in the colour table", path=label_path, reason="unknown label id")
                    record.names[(category, ident)] = table[ident]
                if ids:
                    record.pixel[category] = [layer]
        scene = self.scene_of.get(item, 0)
        if scene and self._wants("scene"):
            record.image_level["scene"] = [scene]
            record.names[("scene", scene)] = (self.scene_names[scene - 1],)
        return record

    def _oriented(self, photo: Path, label_w: int, label_h: int) -> Path | Image.Image:
        """The photo, EXIF-rotated only when that is what makes its aspect match the labels."""
        size = image_size(photo)
        if size is None or not label_h or not size[1]:
            return photo  # the unifier reports an unreadable photo
        want = label_w / label_h
        if abs(size[0] / size[1] / want - 1) <= ASPECT_TOLERANCE:
            return photo
        if abs(size[1] / size[0] / want - 1) <= ASPECT_TOLERANCE:
            with Image.open(photo) as im:
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                    log.info("%s: EXIF rotation applied to match the label image", photo)
                    return ImageOps.exif_transpose(im)
        log.warning("%s: photo is %dx%d but labels are %dx%d (aspect differs)", photo, size[0], size[1], label_w, label_h)
        return photo
