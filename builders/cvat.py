"""CVAT "CVAT for images 1.1" XML exports (FORMATS.md B.10, Precisions 8), task or project.

Layout (a folder, or the .zip CVAT downloads)::

    annotations.xml            (or any *.xml whose root is <annotations>)
    images/<name>              task export;  <name> may contain folders
    images/<subset>/<name>     project export (image ids and names repeat across subsets)

Polygons, boxes (``rotation`` in degrees about the centre, clockwise on screen), ellipses and masks
(RLE over their box) are painted as pixel labels in ascending ``z_order``, then document order;
polygons and (rotated) boxes are rasterised as CVAT's own "Segmentation mask" export does, through
datumaro's ``polygons_to_masks``/``boxes_to_masks``, that is pycocotools (docs/decisions/rasterisation.md);
polylines, points, cuboids and skeletons have no area and are counted as skipped; ``outside``
shapes are skipped; tags become image-level labels. Labels, attributes and tags go through the
concept mapping (:mod:`concepts.mapping`). The XML is streamed once, when items are listed.

Untrusted input: an image ``name`` that leads out of the export (absolute, ``..``, a symlink) is
never read; the image is skipped as ``path outside the input`` (an error with ``--strict``).
Declared sizes go through the pixel limit (:mod:`concepts.limits`). When the image file's size
differs from the annotated one, the shapes are painted at their coordinates on the real image
and a warning names both sizes (see :meth:`CvatBuilder._canvas`).
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
import numpy as np
from PIL import Image
from defusedxml.common import DefusedXmlException

from concepts.builders import register
from concepts.builders._raster import Shape, box_points, check_canvas, finite_points, paint_record, pycocotools_polygon_mask, shape_mask
from concepts.builders._export import ExportBuilder, contained
from concepts.builders.base import Detection
from concepts import progress
from concepts.errors import ConceptsError, SourceError, SourceItemError, UnsafeInputError
from concepts.records import Record

log = logging.getLogger(__name__)

_TAG = re.compile(r"<([!?]?)([A-Za-z_][\w.:-]*)")

NO_AREA = ("polyline", "points", "cuboid", "skeleton")
AREA = ("polygon", "box", "ellipse", "mask")


@dataclass
class _Image:
    key: str
    subset: str
    name: str
    size: tuple[int, int]
    shapes: list[Shape] = field(default_factory=list)
    tags: dict[str, list[int]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    error: tuple[str, str] | None = None


def _xml_root_tag(head: bytes) -> str | None:
    """The first element name of an XML prefix (cheap sniffing, no parsing)."""
    for m in _TAG.finditer(head.decode("utf-8", "replace")):
        if not m.group(1):
            return m.group(2)
    return None


def find_xml(folder: Path) -> Path | None:
    """``annotations.xml``, else the first ``*.xml`` (sorted) whose root element is <annotations>."""
    candidates = [folder / "annotations.xml"] + sorted(p for p in folder.glob("*.xml") if p.name != "annotations.xml")
    for path in candidates:
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    head = f.read(4096)
            except OSError:
                continue  # unreadable: not the export's XML
            if _xml_root_tag(head) == "annotations":
                return path
    return None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser fails on hostile bytes in many ways (struct.error, ...)
        return 1


def _floats(el: Element, *names: str) -> tuple[float, ...]:
    return tuple(float(el.get(n, "nan")) for n in names)


def cvat_mask(shape: Shape, height: int, width: int, path: Path) -> np.ndarray:
    """Rasterise one CVAT shape: polygons and boxes by pycocotools, as CVAT's mask export; others as usual."""
    if shape.kind == "polygon":
        return pycocotools_polygon_mask(shape.data, height, width)
    return shape_mask(shape, height, width, path)


@register
class CvatBuilder(ExportBuilder):
    """CVAT for images 1.1 XML, with or without images."""

    NAME = "cvat"
    DESCRIPTION = "CVAT for images 1.1 export: annotations.xml (+ images/[<subset>/]<name>), folder or .zip"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder (or .zip) holding an XML file whose root element is <annotations>."""
        if path.is_file() and zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as zf:
                    for name in sorted(n for n in zf.namelist() if n.lower().endswith(".xml") and n.count("/") <= 1):
                        with zf.open(name) as f:
                            if _xml_root_tag(f.read(4096)) == "annotations":
                                return Detection.match(0.9)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, zlib.error, EOFError):
                pass  # a corrupt or encrypted zip is not recognisably a CVAT export
            return Detection.missing("a .xml file with root <annotations> in the zip")
        folder = path.parent if path.is_file() else path
        if path.is_dir() or path.suffix.lower() == ".xml":
            if find_xml(folder) is not None:
                return Detection.match(0.9)
        return Detection.missing("annotations.xml (root <annotations>)")

    # -- parsing -------------------------------------------------------------------------------

    def _xml_path(self) -> Path:
        if self.folder.is_file() and self.folder.suffix.lower() == ".xml":
            return self.folder
        xml = find_xml(self.folder)
        if xml is None:
            raise SourceError("no CVAT XML (a *.xml file whose root is <annotations>) found", path=self.folder)
        try:
            contained(self.folder, xml, where=xml, element="the annotation file")
        except SourceItemError as e:
            raise UnsafeInputError(e.message, path=xml) from None
        return xml

    def _base(self) -> Path:
        return self.folder.parent if self.folder.is_file() else self.folder

    def read_export(self) -> list[_Image]:
        """Every <image> of the XML, in document order."""
        xml = self._xml_path()
        images: list[_Image] = []
        try:
            context = SafeET.iterparse(str(xml), events=("end",), forbid_dtd=False)
            for _, el in progress.progress(context, desc="reading CVAT XML", unit="el"):
                if el.tag == "image":
                    images.append(self._image(el, xml))
                    el.clear()
                elif el.tag == "track":
                    raise SourceError("this is a 'CVAT for video' export (tracks)", path=xml,
                                      hint="export the task as 'CVAT for images 1.1'")
        except DefusedXmlException as e:
            raise UnsafeInputError(f"refused unsafe XML ({type(e).__name__}: entity declarations or external references)", path=xml) from None
        except ParseError as e:
            raise SourceError(f"broken XML: {e}", path=xml) from None
        except ConceptsError:
            raise
        except (LookupError, ValueError) as e:
            # An unknown or unsupported encoding in the XML declaration ("x-bogus", "utf-32").
            raise SourceError(f"cannot read the XML: {e}", path=xml) from None
        except OSError as e:
            raise SourceError(f"cannot read the XML: {e.strerror or e}", path=xml) from None
        keys = Counter(i.key for i in images)
        dupes = [k for k, n in keys.items() if n > 1]
        if dupes:
            raise SourceError(f"image {dupes[0]!r} is listed {keys[dupes[0]]} times", path=xml)
        return images

    def _concept_ids(self, el: Element, label: str) -> tuple[tuple[str, int], ...]:
        out = []
        concept = self.mapping.shape(label)
        if concept is not None:
            out.append((concept.category, self.ids.get(concept)))
        for attr in el.findall("attribute"):
            name, value = attr.get("name", ""), (attr.text or "").strip()
            self.inv.add_attribute(name, value)
            extra = self.mapping.attribute(name, value)
            if extra is not None and concept is not None:
                out.append((extra.category, self.ids.get(extra)))
        return tuple(out)

    def _image(self, el: Element, xml: Path) -> _Image:
        name = (el.get("name") or "").replace("\\", "/")
        subset = el.get("subset") or ""
        if not name:
            raise SourceError(f"<image id={el.get('id')!r}> has no name", path=xml)
        stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
        key = f"{subset}/{stem}" if subset else stem
        try:
            size = check_canvas(el.get("width"), el.get("height"), xml, what=f"image {name!r}")
        except SourceItemError as e:
            # Reported when the item is loaded, so one bad image does not stop the listing.
            return _Image(key=key, subset=subset, name=name, size=(0, 0), error=(e.message, e.reason))
        image = _Image(key=key, subset=subset, name=name, size=size)
        painted: list[tuple[int, int, Shape]] = []
        for order, child in enumerate(el):
            kind, label = child.tag, (child.get("label") or "").strip()
            if kind == "tag":
                self.inv.tags[label] += 1
                concept = self.mapping.tag(label) if label else None
                if concept is not None:
                    image.tags.setdefault(concept.category, []).append(self.ids.get(concept))
                continue
            if child.get("outside") == "1":
                image.skipped["outside"] += 1
                continue
            if kind in NO_AREA:
                image.skipped[kind] += 1
                continue
            if kind not in AREA:
                image.skipped[f"unknown shape <{kind}>"] += 1
                continue
            if not label:
                image.skipped["empty label"] += 1
                continue
            self.inv.labels[label] += 1
            shape = self._shape(child, kind)
            if shape is None:
                image.skipped["degenerate shape"] += 1
                continue
            concepts = self._concept_ids(child, label)
            if concepts:
                try:
                    z = int(child.get("z_order", "0"))
                except ValueError:
                    z = 0
                painted.append((z, order, Shape(shape[0], shape[1], concepts)))
        image.shapes = [s for _, _, s in sorted(painted, key=lambda t: (t[0], t[1]))]
        return image

    @staticmethod
    def _shape(el: Element, kind: str) -> tuple[str, object] | None:
        # Huge finite coordinates (1e308) overflow while rotating; the result is then not finite
        # and the shape counts as degenerate, without numpy's warnings on stderr.
        with np.errstate(all="ignore"):
            return CvatBuilder._geometry(el, kind)

    @staticmethod
    def _geometry(el: Element, kind: str) -> tuple[str, object] | None:
        try:
            if kind == "polygon":
                pts = finite_points([p.split(",") for p in (el.get("points") or "").split(";") if p])
                return ("polygon", pts) if pts is not None and len(pts) >= 3 else None
            rotation = float(el.get("rotation", "0"))
            if not math.isfinite(rotation):
                return None
            if kind == "box":
                xtl, ytl, xbr, ybr = _floats(el, "xtl", "ytl", "xbr", "ybr")
                pts = finite_points(box_points(xtl, ytl, xbr, ybr, rotation))
                return ("polygon", pts) if pts is not None and xbr > xtl and ybr > ytl else None
            if kind == "ellipse":
                geom = _floats(el, "cx", "cy", "rx", "ry") + (rotation,)
                return ("ellipse", geom) if finite_points(geom[:4]) is not None and geom[2] > 0 and geom[3] > 0 else None
            return ("cvat_rle", (el.get("rle", ""), el.get("left"), el.get("top"), el.get("width"), el.get("height")))
        except (TypeError, ValueError, OverflowError):
            return None

    # -- contract ------------------------------------------------------------------------------

    def _find_image(self, image: _Image, xml: Path) -> Path | None:
        """The image file the export names, looked up where CVAT puts it; never outside the input.

        ``name`` may be absolute or climb with ``..``: every candidate is resolved (symlinks
        included) and one that leaves the export is refused, whether it exists or not, so the
        message does not reveal what exists outside.
        """
        base = self._base()
        candidates = [base / "images" / image.subset / image.name] if image.subset else []
        candidates += [base / "images" / image.name, base / image.name]
        element = f"<image name={image.name[:200]!r}>"
        outside: SourceItemError | None = None
        for path in candidates:
            try:
                contained(base, path, where=xml, element=element)
            except SourceItemError as e:
                outside = outside or e
                continue
            if path.is_file():
                return path
        if outside is not None:
            raise outside
        return None

    @staticmethod
    def _canvas(image: _Image, path: Path, xml: Path) -> tuple[int, int]:
        """The size to paint at: the annotated size, or the image's own when they disagree.

        CVAT stores coordinates in pixels of the frame it showed. When the file's real size
        differs (the image was replaced, rescaled or cropped after annotating), nothing says
        which; the shapes are painted at their coordinates as written, on a canvas of the
        image's real size (clipped), so every annotated pixel stays on the image pixel it names
        rather than being stretched to a different one. A warning names both sizes.
        """
        try:
            with Image.open(path) as im:
                width, height = im.size
                orientation = _orientation(im)
        except Image.DecompressionBombError as e:
            raise SourceItemError(f"refused image: {e}", path=path, reason="image too large") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise SourceItemError(f"cannot read the image header: {e}", path=path, reason="unreadable image") from None
        real = check_canvas(width, height, path)
        # Orientations 5-8 turn the frame by 90 degrees; CVAT annotates the turned frame and the
        # build applies the EXIF orientation when the label size asks for it.
        shown = (real[1], real[0]) if orientation in (5, 6, 7, 8) else real
        if image.size in (real, shown):
            return image.size
        log.warning("%s: <image name=%r> is annotated as %d x %d but %s is %d x %d; painting the shapes at "
                    "their coordinates on the real image (not stretched)", xml, image.name,
                    image.size[1], image.size[0], path, shown[1], shown[0])
        return shown

    def load(self, item: int) -> Record:
        """Paint one image's shapes into label layers."""
        image = self._parse()[item]
        xml = self._xml_path()
        # The image is named in the message too: the unifier reports only path and message.
        if image.error:
            raise SourceItemError(f"<image name={image.name!r}>: {image.error[0]}", path=xml, reason=image.error[1])
        path = self._find_image(image, xml)
        if path is None:
            raise SourceItemError("image file not in the export", path=self._base() / "images" / image.subset / image.name,
                                  reason="missing image")
        try:
            size = self._canvas(image, path, xml)
            return paint_record(image.key, path, size, image.shapes, image.tags, self.ids.names, image.skipped, xml,
                                mask_fn=cvat_mask)
        except SourceItemError as e:
            raise SourceItemError(f"<image name={image.name!r}>: {e.message}", path=xml, reason=e.reason) from None
