"""ADE20K SceneParsing (``ADEChallengeData2016``): the 150-class benchmark release (FORMATS.md B.3).

Layout::

    ADEChallengeData2016/
      images/{training,validation}/ADE_*.jpg
      annotations/{training,validation}/ADE_*.png   8-bit single channel: 0 = other (unlabeled), 1..150
      objectInfo150.txt     tab-separated Idx Ratio Train Val Name (fields may carry trailing spaces)
                            or objectInfo150.csv (Idx,Ratio,Train,Val,Stuff,Name; names `;`-separated)
      sceneCategories.txt   optional: "<stem> <scene>" per line

Annotations were resized from the full release, so they are paired only with this release's images.
object: the annotation classes (names split on ","); scene: image-level from sceneCategories.txt.
"""

from __future__ import annotations

import logging
from pathlib import Path

from concepts.builders import register
from concepts.builders._raster import candidate_dirs, inside_input, read_id_channel
from concepts.builders.base import Builder
from concepts.broden.reader import parse_int, read_csv
from concepts.errors import SourceError, SourceItemError
from concepts.labelcount import present_ids
from concepts.records import Record, names_tuple
from concepts.vocabulary import scene_name

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Largest class index a label PNG can hold (16-bit single channel).
MAX_CLASS = 65535


def _class_index(text: str | None, path: Path, row: int) -> int:
    """A class index cell: ASCII digits only (``int()`` would also take ``²`` or Arabic-Indic digits), 1..65535."""
    value = parse_int(text)
    if value is None or not 0 < value <= MAX_CLASS:
        raise SourceError(f"Idx {(text or '').strip()[:40]!r} is not a class index 1..{MAX_CLASS} in ASCII digits", path=path, row=row)
    return value


def _read_object_info(base: Path) -> dict[int, tuple[str, ...]]:
    """Class index -> names from objectInfo150.txt (or the .csv variant)."""
    txt, csv_path = base / "objectInfo150.txt", base / "objectInfo150.csv"
    names: dict[int, tuple[str, ...]] = {}
    if txt.is_file():
        try:
            lines = txt.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        except OSError as e:
            raise SourceError(f"cannot read ({e.strerror or e})", path=txt) from None
        for row, line in enumerate(lines, start=1):
            fields = [f.strip() for f in line.split("\t")]
            if not line.strip() or fields[0].lower() == "idx":
                continue
            if len(fields) < 2:
                raise SourceError(f"expected 'Idx<TAB>...<TAB>Name', got {line.strip()[:60]!r}", path=txt, row=row)
            names[_class_index(fields[0], txt, row)] = names_tuple(fields[-1])
        source = txt
    elif csv_path.is_file():
        for row, rec in enumerate(read_csv(csv_path, ("Idx", "Name"), error=SourceError), start=2):
            names[_class_index(rec["Idx"], csv_path, row)] = tuple(n.strip() for n in (rec["Name"] or "").split(";") if n.strip())
        source = csv_path
    else:
        raise SourceError("objectInfo150.txt (or objectInfo150.csv) is missing", path=base)
    if not names:
        raise SourceError("no classes listed", path=source)
    return names


@register
class Ade20kSceneParsingBuilder(Builder):
    """The 150-class ADEChallengeData2016 release: mode-L class PNGs plus scene categories."""

    NAME = "ade20k-sceneparsing"
    KEY = "ade20k"
    DESCRIPTION = "ADEChallengeData2016 SceneParsing (images/, annotations/, objectInfo150.txt)"
    EXPECTS = "images/ + annotations/ + objectInfo150.txt (ADEChallengeData2016)"
    RELEASE = 'an ADEChallengeData2016 release'

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The release folder: ``path`` or one of its sub-folders."""
        for cand in candidate_dirs(path, "ADEChallengeData2016"):
            if (cand / "images").is_dir() and (cand / "annotations").is_dir():
                if (cand / "objectInfo150.txt").is_file() or (cand / "objectInfo150.csv").is_file():
                    return cand
        return None

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.base = base = self.located()
        self.classes = _read_object_info(base)
        self.scene_of: dict[str, int] = {}
        self.scene_names: list[str] = []
        scenes_path = base / "sceneCategories.txt"
        if scenes_path.is_file():
            raw: dict[str, str] = {}
            try:
                text = scenes_path.read_text(encoding="utf-8-sig", errors="replace")
            except OSError as e:
                raise SourceError(f"cannot read ({e.strerror or e})", path=scenes_path) from None
            for line in text.splitlines():
                fields = line.split()
                if len(fields) >= 2:
                    raw[fields[0]] = fields[1]
            normalised = {stem: scene_name(s) for stem, s in raw.items()}
            self.scene_names = sorted({n for n in normalised.values() if n})
            ids = {n: i for i, n in enumerate(self.scene_names, start=1)}
            self.scene_of = {stem: ids[n] for stem, n in normalised.items() if n}

    def items(self) -> list[str]:
        """Image paths relative to ``images/`` (``training/ADE_train_00000001.jpg``), sorted."""
        images = self.base / "images"
        return sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

    def load(self, item: str) -> Record:
        """The object classes and scene of one image."""
        image = inside_input(self.base, self.base / "images" / item, what="image", item=item)
        if not image.is_file():
            raise SourceItemError("image is missing", path=image, reason="missing image")
        ann_path = inside_input(self.base, (self.base / "annotations" / item).with_suffix(".png"), what="annotation", item=item)
        labels = read_id_channel(ann_path, what="annotation")
        record = Record(key=image.stem, image=image)
        ids = present_ids(labels)
        for ident in ids:
            if ident not in self.classes:
                raise SourceItemError(f"class {ident} is not listed in objectInfo150", path=ann_path, reason="unknown label id")
            record.names[("object", ident)] = self.classes[ident]
        if ids:
            record.pixel["object"] = [labels]
        scene = self.scene_of.get(image.stem, 0)
        if scene:
            record.image_level["scene"] = [scene]
            record.names[("scene", scene)] = (self.scene_names[scene - 1],)
        return record
