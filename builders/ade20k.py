"""ADE20K full releases: ``ADE20K_2016_07_26`` (the one Broden used) and ``ADE20K_2021_17_01``.

Both store, next to each ``<name>.jpg``, a ``<name>_seg.png`` whose class is ``(R // 10) * 256 + G``
(0 unlabeled, ``k`` = ``objectnames[k - 1]``) and part levels ``<name>_parts_N.png`` in the same
encoding, probed N = 1, 2, ... up to the first missing level (FORMATS.md B.1, B.2, C.2).

* object: the ``_seg.png`` classes; part: one layer per part level, level 1 first (dominant);
  objects and parts share one name list, so a class that is both (``wheel``) becomes one label
  with two categories; scene: image-level, normalised by :func:`concepts.vocabulary.scene_name`.
* 2016: ``index_ade20k.mat`` (MATLAB struct ``index``) gives the file list, scenes and names.
  Without it the images are listed from ``images/{training,validation}/``, the scene is the
  folder below the letter (``images/training/w/wine_cellar/bottle_storage`` ->
  ``wine_cellar/bottle_storage``) and class names come from each image's ``<name>_atr.txt``:
  the row of part level L and instance k names the class of the k-th distinct non-zero B value
  of level L's PNG (``_seg.png`` for L = 0, ``_parts_L.png`` otherwise), as the release's
  ``loadAde20K.m`` numbers instances. See docs/decisions/ade20k-part-levels.md.
* 2021: ``index_ade20k.pkl`` (in the dataset folder or its parent, where the release puts it) gives
  the same fields. It is a pickle, so it is read only from the dataset the user named, and with a
  restricted unpickler that rebuilds only builtin containers and numpy arrays (anything else is
  refused, so a tampered file cannot run code), and the arrays and byte strings it rebuilds may not
  be larger than the file itself could hold (so a few bytes cannot ask for ``bytes(2**62)``).
  Without it the images are listed from ``images/``,
  class names come from each image's ``<name>.json`` (``name_ndx`` -> ``name``) and the scene from
  its folder (``images/ADE/training/urban/street`` -> ``street``).

The record key is the file stem (``ADE_train_00000001``), unique across the release. Every file an
index names is resolved (symlinks included) and must lie inside the release folder; one that does
not is skipped with a counted reason (an error under ``--strict``).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from concepts.builders import register
from concepts.builders._bands import ade_classes, read_bands, red_not_tens
from concepts.builders._raster import candidate_dirs, inside_input
from concepts.builders.base import Builder, Detection
from concepts.errors import SourceError, SourceItemError
from concepts.labelcount import present_ids
from concepts.records import Record, names_tuple
from concepts.vocabulary import scene_name

log = logging.getLogger(__name__)

INDEX_MAT = "index_ade20k.mat"
INDEX_PKL = "index_ade20k.pkl"
#: Largest class id the ``(R // 10) * 256 + G`` encoding can give (R = 250, G = 255).
MAX_CLASS_ID = 25 * 256 + 255


def _relative_image(folder: str, filename: str, where: Path) -> str:
    """Image path relative to the release folder: index folders start ``<release>/images/...``.

    Only the shape is checked here; where the path leads (``..``, symlinks) is checked when the
    item is loaded, so one bad entry skips one image rather than the whole release.
    """
    parts = [p for p in str(folder).replace("\\", "/").split("/") if p not in ("", ".")]
    if "images" not in parts:
        raise SourceError(f"index folder {str(folder)[:200]!r} does not lead into images/", path=where)
    return "/".join(parts[parts.index("images") :] + [str(filename)])


def _strings(values: Any, field: str, where: Path) -> list[str]:
    """An index field that must be a list of strings (a 1-D list, tuple or array of text)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise SourceError(f"index field {field!r} must be a list of strings, got a {values.ndim}-D array", path=where)
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise SourceError(f"index field {field!r} must be a list of strings, got {type(values).__name__}", path=where)
    for k, value in enumerate(values):
        if not isinstance(value, str):
            raise SourceError(f"index field {field!r}: element {k} is {type(value).__name__}, not a string", path=where)
    return [str(v) for v in values]


def _text(value: Any) -> str:
    # Empty MATLAB strings load as empty arrays, not "".
    if isinstance(value, np.ndarray):
        return "".join(str(v) for v in value.ravel())
    return str(value)


def _scene_table(raw_scenes: list[str]) -> tuple[list[int], list[str]]:
    """Scene id per image (0 = unlabeled) and the names of ids 1..S, sorted by name."""
    normalised = [scene_name(s) for s in raw_scenes]
    names = sorted({n for n in normalised if n})
    ids = {n: i for i, n in enumerate(names, start=1)}
    return [ids.get(n, 0) if n else 0 for n in normalised], names


class _AdeRelease(Builder):
    """What both full releases share: listing, RG decoding, part levels, scene labels."""

    KEY = "ade20k"

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.base: Path = self.root
        self.files: list[str] = []
        self.scene_of: dict[str, int] = {}
        self.scene_names: list[str] = []
        self.objectnames: list[str] | None = None

    def items(self) -> list[str]:
        """Image paths relative to the release folder, in index order."""
        return list(self.files)

    def _set_index(self, files: list[str], scenes: list[str], objectnames: list[str] | None) -> None:
        scene_ids, self.scene_names = _scene_table(scenes)
        self.files = list(dict.fromkeys(files))
        self.scene_of = dict(zip(files, scene_ids))
        self.objectnames = objectnames

    #: Whether per-image names come from ``_atr.txt`` rows matched to instances (B channel).
    instance_names = False
    #: Where per-image names come from, for errors.
    names_from = "the image's .json"

    def _class_names(self, image: Path, layers: list) -> dict[int, tuple[str, ...]] | None:
        """Per-image names of class ids, when the release has no global name list."""
        return None

    def load(self, item: str) -> Record:
        """Object classes, part levels and the scene of one image."""
        image = inside_input(self.base, self.base / item, what="image", item=item)
        if not image.is_file():
            raise SourceItemError("image is missing", path=image, reason="missing image")
        seg_path = inside_input(self.base, image.with_name(f"{image.stem}_seg.png"), what="segmentation", item=item)
        # Instances (B) are needed only to name classes from _atr.txt rows.
        bands = (0, 1, 2) if self.instance_names else (0, 1)
        layers = [("object", seg_path, read_bands(seg_path, bands, what="segmentation"))]
        level = 1
        while (part_path := image.with_name(f"{image.stem}_parts_{level}.png")).is_file():
            inside_input(self.base, part_path, what="part level", item=item)
            layers.append(("part", part_path, read_bands(part_path, bands, what="part level")))
            level += 1
        decoded = []
        for category, path, channels in layers:
            red, green = channels[:2]
            if red_not_tens(red):
                # MATLAB's converter rounds R/10; real files hold multiples of 10, so floor is equal there.
                log.warning("%s: red values that are not multiples of 10; class ids use R // 10", path)
            decoded.append((category, path, ade_classes(red, green), channels[2] if len(channels) > 2 else None))
        per_image = self._class_names(image, decoded)
        record = Record(key=image.stem, image=image)
        for category, path, layer, _ in decoded:
            ids = present_ids(layer)
            if not ids:
                continue  # an empty level adds nothing but a blank layer
            for ident in ids:
                record.names[(category, ident)] = self._name(ident, per_image, path)
            record.pixel.setdefault(category, []).append(layer)
        scene = self.scene_of.get(item, 0)
        if scene:
            record.image_level["scene"] = [scene]
            record.names[("scene", scene)] = (self.scene_names[scene - 1],)
        return record

    def _name(self, ident: int, per_image: dict[int, tuple[str, ...]] | None, path: Path) -> tuple[str, ...]:
        if per_image is not None:
            if ident not in per_image:
                raise SourceItemError(f"class {ident} has no object in {self.names_from}", path=path, reason="unknown label id")
            return per_image[ident]
        names = self.objectnames or []
        if ident > len(names):
            raise SourceItemError(
                f"class {ident} is outside the index's {len(names)} object names", path=path, reason="unknown label id"
            )
        return names_tuple(names[ident - 1])


@register
class Ade20k2016Builder(_AdeRelease):
    """ADE20K_2016_07_26: ``index_ade20k.mat`` (or per-image ``_atr.txt``) plus ``_seg.png`` and ``_parts_N.png``."""

    NAME = "ade20k"
    DESCRIPTION = "ADE20K_2016_07_26 full release (index_ade20k.mat or per-image _atr.txt, images/{training,validation}/)"
    EXPECTS = f"{INDEX_MAT} or per-image _atr.txt beside images/training/ (ADE20K_2016_07_26)"
    RELEASE = 'an ADE20K 2016 release'
    names_from = "the image's _atr.txt"

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The release folder: ``path`` or one of its sub-folders."""
        for cand in candidate_dirs(path, "ADE20K_2016_07_26"):
            images = cand / "images"
            if (images / "ADE").is_dir() or not any((images / s).is_dir() for s in ADE_SPLITS):
                continue
            if (cand / INDEX_MAT).is_file() or _has_atr(images):
                return cand
        return None

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A release folder with ``images/{training,validation}/``; surer with ``index_ade20k.mat``."""
        base = cls.locate(path)
        if base is None:
            return Detection.missing(cls.EXPECTS)
        return Detection.match(1.0 if (base / INDEX_MAT).is_file() else 0.9)

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.base = base = self.located()
        self.index_path = base / INDEX_MAT if (base / INDEX_MAT).is_file() else None
        if self.index_path is None:
            log.info("%s: no %s; listing images/ and reading names from each image's _atr.txt", base, INDEX_MAT)
            self.instance_names = True
            files = sorted(p.relative_to(base).as_posix() for s in ADE_SPLITS if (base / "images" / s).is_dir()
                           for p in (base / "images" / s).rglob("*.jpg"))
            # images/<split>/<letter>/<scene...>/<name>.jpg: the scene is the path below the letter.
            self._set_index(files, ["/".join(f.split("/")[3:-1]) for f in files], None)
            return
        index = _load_mat_index(base / INDEX_MAT)
        fields = {}
        for field in ("filename", "folder", "scene", "objectnames"):
            if field not in index._fieldnames:
                raise SourceError(f"struct 'index' has no field {field!r}", path=base / INDEX_MAT)
            value = getattr(index, field)
            if isinstance(value, np.ndarray) and value.ndim > 1 and max(value.shape) != value.size:
                raise SourceError(f"struct field {field!r} must be a list, got a {'x'.join(map(str, value.shape))} array",
                                  path=base / INDEX_MAT)
            fields[field] = [_text(v) for v in np.atleast_1d(value).ravel()]
        if not len(fields["filename"]) == len(fields["folder"]) == len(fields["scene"]):
            raise SourceError("index fields filename, folder and scene differ in length", path=base / INDEX_MAT)
        files = [_relative_image(d, f, base / INDEX_MAT) for d, f in zip(fields["folder"], fields["filename"])]
        self._set_index(files, fields["scene"], fields["objectnames"])

    def _class_names(self, image: Path, layers: list) -> dict[int, tuple[str, ...]] | None:
        if not self.instance_names:
            return None
        path = inside_input(self.base, image.with_name(f"{image.stem}_atr.txt"), what="attribute file")
        rows = read_atr(path)
        names: dict[int, tuple[str, ...]] = {}
        named_by: dict[int, int] = {}
        for level, (_, _, classes, blue) in enumerate(layers):
            # loadAde20K.m: instance k of a level is the k-th distinct B value of its PNG (0 = none).
            pairs = np.unique((np.asarray(blue, dtype=np.uint32) << 16) | classes)
            instances = np.unique(pairs >> 16)
            instances = instances[instances > 0]
            for pair in pairs:
                b, ident = int(pair >> 16), int(pair & 0xFFFF)
                if not ident or not b:
                    continue
                rank = int(np.searchsorted(instances, b)) + 1
                row = rows.get((level, rank))
                if row is None:
                    continue  # the class stays unnamed unless another instance names it
                number, name = row
                if ident in names and names[ident] != name:
                    raise SourceItemError(
                        f"class {ident} is {', '.join(names[ident])!r} on row {named_by[ident]} and {', '.join(name)!r} on row {number}",
                        path=path, reason="bad annotation")
                names[ident] = name
                named_by[ident] = number
        return names


ADE_SPLITS = ("training", "validation")


def _has_atr(images: Path) -> bool:
    """Whether ``images/{training,validation}/<letter>/<scene>[/<sub>]/`` holds an ``_atr.txt``."""
    for split in ADE_SPLITS:
        for pattern in ("*/*/*_atr.txt", "*/*/*/*_atr.txt"):
            if next((images / split).glob(pattern), None) is not None:
                return True
    return False


def read_atr(path: Path) -> dict[tuple[int, int], tuple[int, tuple[str, ...]]]:
    """An ``_atr.txt``: ``(part level, instance number) -> (row, WordNet names)``.

    Rows are ``instance # part level # occluded # WordNet name # raw name # "attributes"``
    (FORMATS.md B.1), split at ``#`` with the spaces around trimmed, as loadAde20K.m reads them;
    the attribute list is the rest of the row, so a ``#`` inside the quotes is kept there.
    """
    text = _read_text(path, "attribute file")
    rows: dict[tuple[int, int], tuple[int, tuple[str, ...]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("#", 5)]
        if len(fields) != 6:
            raise SourceItemError(f"row {number}: expected 6 fields separated by '#', got {len(fields)}",
                                  path=path, reason="bad annotation")
        instance, level, _, name = fields[:4]
        if not all(f.isascii() and f.isdigit() and len(f) <= 6 for f in (instance, level)):
            raise SourceItemError(f"row {number}: instance {instance[:20]!r} and part level {level[:20]!r} must be whole numbers",
                                  path=path, reason="bad annotation")
        names = names_tuple(name)
        if not all(names):
            raise SourceItemError(f"row {number}: class name {name[:60]!r} is empty or has an empty synonym",
                                  path=path, reason="bad annotation")
        key = (int(level), int(instance))
        if key in rows:
            raise SourceItemError(f"row {number}: instance {int(instance)} of part level {int(level)} is also row {rows[key][0]}",
                                  path=path, reason="bad annotation")
        rows[key] = (number, names)
    return rows


def _load_mat_index(path: Path) -> Any:
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False, variable_names=["index"])
    except NotImplementedError:
        raise SourceError("MATLAB v7.3 (HDF5) files are not supported", path=path, hint="re-save it with save -v7") from None
    except Exception as e:  # noqa: BLE001 - scipy reports corrupt files with many exception types
        raise SourceError(f"cannot read the index ({type(e).__name__}: {e})", path=path) from None
    if "index" not in mat or not hasattr(mat["index"], "_fieldnames"):
        raise SourceError("no MATLAB struct named 'index'", path=path)
    return mat["index"]


class _IndexUnpickler(pickle.Unpickler):
    """Rebuilds builtin containers and numpy arrays only; refuses every other class.

    The callables a pickle may name are wrapped so that none allocates more than ``budget``
    bytes: a legitimate index never asks for more than its own size (arrays are rebuilt from the
    bytes the file carries), while ``bytes(2**62)`` or an array of shape ``(10**12,)`` is a bomb.
    """

    BUILTINS = frozenset({"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool"})
    ALLOWED = {("collections", "OrderedDict"), ("_codecs", "encode")} | {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def __init__(self, file: Any, budget: int) -> None:
        super().__init__(file)
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module in ("builtins", "__builtin__") and name in self.BUILTINS):
            target = super().find_class(module, name)
            return self._guard(target, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an index file")

    def _guard(self, target: Any, name: str) -> Any:
        budget = self.budget

        def check_bytes(nbytes: int, what: str) -> None:
            if nbytes > budget:
                raise pickle.UnpicklingError(f"{what} asks for {nbytes:,} bytes, more than the file's {budget:,} can hold")

        if name in ("bytes", "str", "list", "tuple", "set", "frozenset", "dict"):
            def build(*args: Any) -> Any:
                # bytes(N) and friends allocate N from one small number; only real data may be converted.
                if any(isinstance(a, int) for a in args):
                    raise pickle.UnpicklingError(f"{name}() of a number is not allowed in an index file")
                return target(*args)
            return build
        if name == "_reconstruct":
            def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
                check_bytes(_nbytes(shape, dtype), "an array")
                return target(_GuardedArray if subtype is np.ndarray else subtype, shape, dtype)
            return reconstruct
        if name == "scalar":
            def scalar(dtype: Any, *args: Any) -> Any:
                check_bytes(np.dtype(dtype).itemsize, "a scalar")
                return target(dtype, *args)
            return scalar
        if name == "ndarray":
            return _GuardedArray
        return target


def _nbytes(shape: Any, dtype: Any) -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes (pointers for object arrays)."""
    dims = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,))]
    if any(d < 0 for d in dims):
        raise pickle.UnpicklingError(f"array shape {tuple(dims)} has a negative dimension")
    return int(np.prod(dims, dtype=object)) * max(np.dtype(dtype).itemsize, 1)


class _GuardedArray(np.ndarray):
    """An ndarray whose unpickling refuses a declared shape larger than the budget allows."""

    BUDGET = 0

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 4:
            shape, dtype = state[1], state[2]
            nbytes = _nbytes(shape, dtype)
            if nbytes > _GuardedArray.BUDGET:
                raise pickle.UnpicklingError(f"an array asks for {nbytes:,} bytes, more than the file can hold")
        super().__setstate__(state)


def _plain(value: Any) -> Any:
    """The unpickled index with guarded arrays turned back into plain ones."""
    if isinstance(value, _GuardedArray):
        return value.view(np.ndarray)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _load_pkl_index(path: Path) -> dict:
    try:
        size = path.stat().st_size
        # Object arrays hold one pointer per element, each at least one byte of pickle: 8x covers them.
        budget = 8 * size + (1 << 20)
        _GuardedArray.BUDGET = budget
        with path.open("rb") as f:
            index = _IndexUnpickler(f, budget).load()
        index = _plain(index)
    except RecursionError:
        raise SourceError("cannot read the index: nested too deeply", path=path) from None
    except MemoryError:
        raise SourceError("cannot read the index: it asks for more memory than there is", path=path) from None
    except Exception as e:  # noqa: BLE001 - a hostile pickle can make the unpickler raise almost anything
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise SourceError(f"cannot read the index: {message}", path=path,
                          hint="only builtin containers and numpy arrays are accepted") from None
    if not isinstance(index, dict):
        raise SourceError(f"expected a dict, found {type(index).__name__}", path=path)
    return index


@register
class Ade20k2021Builder(_AdeRelease):
    """ADE20K_2021_17_01: ``images/ADE/{training,validation}/<group>/<scene>/`` with per-image JSON."""

    NAME = "ade20k-2021"
    DESCRIPTION = "ADE20K_2021_17_01 full release (images/ADE/..., optional index_ade20k.pkl)"

    EXPECTS = "images/ADE/{training,validation}/ (ADE20K_2021_17_01)"
    RELEASE = "an ADE20K 2021 release"

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The release folder: ``path`` or its ``ADE20K_2021_17_01`` child, holding ``images/ADE/``."""
        for cand in candidate_dirs(path, "ADE20K_2021_17_01"):
            if (cand / "images" / "ADE").is_dir():
                return cand
        return None

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """A folder (or its ``ADE20K_2021_17_01`` child) with ``images/ADE/``; surer with the index."""
        base = cls.locate(path)
        if base is None:
            return Detection.missing(cls.EXPECTS)
        return Detection.match(1.0 if any((d / INDEX_PKL).is_file() for d in (path, base)) else 0.9)

    def __init__(self, root: str | Path, options: dict | None = None) -> None:
        super().__init__(root, options)
        self.base = base = self.located()
        # The release puts the index beside the dataset folder; look only there and in what was named.
        pkl = next((d / INDEX_PKL for d in dict.fromkeys((self.root, base, base.parent)) if (d / INDEX_PKL).is_file()), None)
        self.index_path = pkl
        if pkl is not None:
            index = _load_pkl_index(pkl)
            missing = [k for k in ("filename", "folder", "scene", "objectnames") if k not in index]
            if missing:
                raise SourceError(f"index has no {', '.join(missing)}", path=pkl)
            filenames, folders, scenes, objectnames = (
                _strings(index[k], k, pkl) for k in ("filename", "folder", "scene", "objectnames"))
            if not len(filenames) == len(folders) == len(scenes):
                raise SourceError("index lists filename, folder and scene differ in length", path=pkl)
            files = [_relative_image(d, f, pkl) for d, f in zip(folders, filenames)]
            self._set_index(files, scenes, objectnames)
        else:
            log.info("%s: no %s; listing images/ and reading names from each image's .json", base, INDEX_PKL)
            files = sorted(p.relative_to(base).as_posix() for p in (base / "images" / "ADE").rglob("*.jpg"))
            self._set_index(files, [f.rsplit("/", 2)[-2] for f in files], None)

    def _class_names(self, image: Path, layers: list) -> dict[int, tuple[str, ...]] | None:
        if self.objectnames is not None:
            return None
        return _json_names(inside_input(self.base, image.with_suffix(".json"), what="annotation JSON"))


def _read_text(path: Path, what: str) -> str:
    """A per-image text file of the release; an unreadable one skips the item in one line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceItemError(f"{what} is missing", path=path, reason="missing annotation") from None
    except OSError as e:
        raise SourceItemError(f"cannot read the {what} ({e.strerror or e})", path=path, reason="unreadable annotation") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Some ADE files are not UTF-8; Latin-1 decodes any byte and keeps ASCII names intact.
        return raw.decode("latin-1")


def _json_names(path: Path) -> dict[int, tuple[str, ...]]:
    """``name_ndx`` -> WordNet names of the objects and parts listed in an image's JSON."""
    text = _read_text(path, "annotation JSON")
    try:
        objects = json.loads(text)["annotation"]["object"]
        if not isinstance(objects, list):
            raise TypeError(f"'object' is {type(objects).__name__}, not a list")
        names: dict[int, tuple[str, ...]] = {}
        for obj in objects:
            ndx = obj["name_ndx"]
            # A class id is a JSON integer; int() would also take 1e300, "²" or true.
            if isinstance(ndx, bool) or not isinstance(ndx, int) or not 0 < ndx <= MAX_CLASS_ID:
                raise ValueError(f"name_ndx {str(ndx)[:40]!r} is not a class id 1..{MAX_CLASS_ID}")
            if not isinstance(obj["name"], str):
                raise TypeError(f"name of class {ndx} is {type(obj['name']).__name__}, not a string")
            names.setdefault(ndx, names_tuple(obj["name"]))
    except RecursionError:
        raise SourceItemError("not an ADE20K annotation (nested too deeply)", path=path, reason="bad annotation") from None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise SourceItemError(f"not an ADE20K annotation ({type(e).__name__}: {str(e)[:200]})", path=path, reason="bad annotation") from None
    return names
