"""MIT LabelMe XML collections (FORMATS.md B.8, Precisions 7).

Layout::

    Annotations/<folder>/<stem>.xml      root <annotation>
    Images/<folder>/<filename>
    Masks/<folder>/<stem>_mask_<id>.png  for <segm> objects (RGBA, antialiased alpha)

CVAT's "LabelMe 3.0" export (``img.xml`` beside ``img.jpg``) is read too. Objects are painted in
document order (later over earlier); ``<deleted>1`` objects are skipped; an object with
``<ispartof>`` goes to the ``part`` category (unless the concept mapping says otherwise).
``<attributes>`` is a comma-separated list of words or ``key=value`` pairs, mapped through the
``attributes`` section of the concept mapping. Masks: a pixel is foreground when its alpha is at
least :data:`ALPHA_THRESHOLD` (the antialiased core is about 153), or, without alpha, any
channel is non-zero. A ``<filename>`` or ``<segm><mask>`` that leads out of the collection (absolute,
``..``, a symlink) is never read: the image is skipped as ``path outside the input``.

Detection: Pascal VOC annotations share the root ``<annotation>``; a folder whose sampled XML
files hold VOC ``<bndbox>`` objects (or ``<size>``) and no LabelMe ``<polygon>``, ``<segm>`` or
``<imagesize>`` is left to the ``voc`` builder.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml.common import DefusedXmlException

from concepts.builders import register
from concepts.builders._raster import Shape, check_canvas, finite_points, header_size, paint_record, read_image_array, shape_mask
from concepts.builders._export import ExportBuilder, contained
from concepts.builders.base import Detection
from concepts import progress
from concepts.errors import SourceError, SourceItemError, UnsafeInputError
from concepts.records import Record

log = logging.getLogger(__name__)

ALPHA_THRESHOLD = 64


@dataclass
class _Item:
    key: str
    xml: str
    image: str
    size: tuple[int, int] | None
    shapes: list[Shape] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    error: tuple[str, str] | None = None


def _text(el: Element | None, tag: str) -> str:
    child = el.find(tag) if el is not None else None
    return (child.text or "").strip() if child is not None else ""


_LABELME_TAGS = re.compile(rb"<(polygon|segm|imagesize)[\s/>]")
_VOC_TAGS = re.compile(rb"<(bndbox|size)[\s/>]")
#: How many annotation files detection looks at: a VOC file for an image without boxes looks like
#: an empty LabelMe file, so one file alone cannot tell the two apart.
_SAMPLE = 20


def annotation_kind(path: Path | None) -> str | None:
    """``"labelme"``, ``"voc"`` (Pascal VOC boxes) or ``"annotation"`` (root <annotation>, neither); None: not one.

    Both formats have the root ``<annotation>``: LabelMe objects have ``<polygon>`` or ``<segm>``
    and the image size is ``<imagesize>``; VOC objects have ``<bndbox>`` and the size is ``<size>``.
    """
    try:
        with open(path, "rb") as f:  # type: ignore[arg-type]
            data = f.read(65536)
    except (OSError, TypeError):  # None, a folder named *.xml, an unreadable file
        return None
    if not (b"<annotation>" in data[:512] or b"<annotation " in data[:512]):
        return None
    # Whole tag names: VOC's <segmented> must not pass for LabelMe's <segm>.
    if _LABELME_TAGS.search(data):
        return "labelme"
    if _VOC_TAGS.search(data):
        return "voc"
    return "annotation"


def _kind_of(files: list[Path]) -> str | None:
    """What a sample of annotation files is: LabelMe wins over VOC only by its own elements."""
    kinds = {annotation_kind(p) for p in files[:_SAMPLE]}
    if files and annotation_kind(files[0]) is None:
        return None
    if "labelme" in kinds:
        return "labelme"
    return "voc" if "voc" in kinds else ("labelme" if "annotation" in kinds else None)


@register
class LabelMeBuilder(ExportBuilder):
    """MIT LabelMe XML annotations with polygons and masks."""

    NAME = "labelme-xml"
    KEY = "labelme"
    DESCRIPTION = "MIT LabelMe: Annotations/<folder>/*.xml + Images/ + Masks/ (or CVAT LabelMe 3.0 xml beside images)"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """``Annotations/`` with LabelMe XML, or LabelMe XML files in the folder; never Pascal VOC XML."""
        if not path.is_dir():
            return Detection.missing("a folder with Annotations/*.xml")
        ann = path / "Annotations"
        files = sorted(p for p in ann.rglob("*.xml") if p.is_file())[:_SAMPLE] if ann.is_dir() else []
        kind = _kind_of(files)
        if kind is None or kind == "voc":
            flat = sorted(p for p in path.glob("*.xml") if p.is_file())[:_SAMPLE]
            flat_kind = _kind_of(flat)
            if flat_kind == "labelme":
                return Detection.match(0.6)
            if "voc" in (kind, flat_kind):
                return Detection.missing("LabelMe XML (<polygon> or <segm> objects); these are Pascal VOC boxes (<bndbox>)")
        if kind == "labelme":
            return Detection.match(0.9)
        return Detection.missing("Annotations/<folder>/*.xml (root <annotation>)")

    def _ann_root(self) -> Path:
        return self.folder / "Annotations" if (self.folder / "Annotations").is_dir() else self.folder

    def read_export(self) -> list[_Item]:
        """Every annotation file, sorted by path."""
        ann = self._ann_root()
        # A folder named like an annotation is not one (it would fail to open as a file).
        files = sorted(p for p in (ann.rglob("*.xml") if ann.name == "Annotations" else ann.glob("*.xml")) if p.is_file())
        if not files:
            raise SourceError("no LabelMe XML files found", path=ann)
        return [self._parse_file(p, ann) for p in progress.progress(files, desc="reading LabelMe XML", unit="file")]

    def _parse_file(self, path: Path, ann: Path) -> _Item:
        rel = path.relative_to(ann).with_suffix("").as_posix()
        try:
            contained(self.folder, path, where=path, element="annotation file")
        except SourceItemError as e:
            return _Item(rel, str(path), "", None, error=(e.message, e.reason))
        try:
            root = SafeET.parse(str(path)).getroot()
        except DefusedXmlException as e:
            raise UnsafeInputError(f"refused unsafe XML ({type(e).__name__})", path=path) from None
        except ParseError as e:
            return _Item(rel, str(path), "", None, error=(f"broken XML: {e}", "broken annotation"))
        except (LookupError, ValueError, OSError) as e:
            # An unknown encoding in the declaration ("x-bogus"), or a file that cannot be read.
            return _Item(rel, str(path), "", None, error=(f"cannot read the XML: {e}", "broken annotation"))

        filename = _text(root, "filename")
        if ann.name == "Annotations":
            image = (self.folder / "Images" / Path(rel).parent / filename) if filename else self.folder / "Images" / rel
        else:
            image = path.parent / (filename or path.stem + ".jpg")
        if "\0" in filename:
            return _Item(rel, str(path), "", None, error=("<filename> holds a NUL byte", "bad path"))
        size_el = root.find("imagesize")
        nrows, ncols = _text(size_el, "nrows"), _text(size_el, "ncols")
        item = _Item(rel, str(path), str(image), None)
        if nrows and ncols:
            try:
                item.size = check_canvas(ncols, nrows, path)
            except SourceItemError as e:
                item.error = (e.message, e.reason)
                return item
        for obj in root.iter("object"):
            self._object(obj, item, path)
        return item

    def _object(self, obj: Element, item: _Item, path: Path) -> None:
        if _text(obj, "deleted") == "1":
            item.skipped["deleted"] += 1
            return
        label = _text(obj, "name")
        if not label:
            item.skipped["empty label"] += 1
            return
        part = bool(_text(obj.find("parts"), "ispartof"))
        (self.inv.parts if part else self.inv.labels)[label] += 1
        concept = self.mapping.shape(label, part=part)
        if concept is None:
            return
        concepts = [(concept.category, self.ids.get(concept))]
        for word in (w.strip() for w in _text(obj, "attributes").split(",")):
            if not word:
                continue
            name, _, value = word.partition("=")
            value = value.strip() if _ else "true"
            self.inv.add_attribute(name.strip(), value)
            extra = self.mapping.attribute(name.strip(), value)
            if extra is not None:
                concepts.append((extra.category, self.ids.get(extra)))
        polygon = obj.find("polygon")
        mask_name = _text(obj.find("segm"), "mask")
        if polygon is not None and polygon.find("pt") is not None:
            try:
                pts = finite_points([[float(_text(pt, "x")), float(_text(pt, "y"))] for pt in polygon.iter("pt")])
            except ValueError:
                pts = None
            if pts is None or len(pts) < 3:
                item.skipped["degenerate shape"] += 1
                return
            item.shapes.append(Shape("polygon", pts, tuple(concepts)))
        elif mask_name:
            mask = self.folder / "Masks" / Path(item.key).parent / mask_name
            item.shapes.append(Shape("labelme_mask", str(mask), tuple(concepts)))
        else:
            item.skipped["no polygon or mask"] += 1

    @staticmethod
    def _mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
        if shape.kind != "labelme_mask":
            return shape_mask(shape, height, width, path)
        mask_path = Path(shape.data)
        header_size(mask_path, what="mask")  # the pixel limit, before decoding
        arr = read_image_array(mask_path, what="mask")
        if arr.ndim == 3 and arr.shape[2] in (2, 4):
            fg = arr[..., -1] >= ALPHA_THRESHOLD
        else:
            fg = arr.reshape(arr.shape[0], arr.shape[1], -1).any(axis=2)
        if fg.shape != (height, width):
            log.warning("%s: mask is %dx%d, image %dx%d; resampled", mask_path, *fg.shape, height, width)
            rows = np.minimum(((np.arange(height) + 0.5) * fg.shape[0] / height).astype(np.intp), fg.shape[0] - 1)
            cols = np.minimum(((np.arange(width) + 0.5) * fg.shape[1] / width).astype(np.intp), fg.shape[1] - 1)
            fg = fg[np.ix_(rows, cols)]
        return fg

    def load(self, item: int) -> Record:
        """Paint one annotation's objects and parts into label layers."""
        entry = self._parse()[item]
        if entry.error:
            raise SourceItemError(entry.error[0], path=entry.xml, reason=entry.error[1])
        xml = Path(entry.xml)
        image = contained(self.folder, Path(entry.image), where=xml, element="<filename>")
        for shape in entry.shapes:
            if shape.kind == "labelme_mask":
                contained(self.folder, Path(shape.data), where=xml, element="<segm><mask>")
        if not image.is_file():
            raise SourceItemError("image file not in the collection", path=image, reason="missing image")
        size = entry.size or header_size(image)
        return paint_record(entry.key, image, size, entry.shapes, {}, self.ids.names, entry.skipped, Path(entry.xml),
                            mask_fn=self._mask)
