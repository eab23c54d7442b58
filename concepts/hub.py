"""Read a published Hugging Face dataset folder (or ``hf://REPO_ID``) back.

* :func:`pull` restores the Broden folder byte for byte: the tables are copied from ``tables/``,
  every image and label PNG is written from the Parquet shards under the path it had.
* :class:`HubDataset` reads the folder in place with the reading API of
  :class:`~concepts.broden.reader.ConceptDataset` (its tables are the shipped ``tables/*.csv``,
  its pixels come from the Parquet rows).
* :func:`open_any` opens whichever of the three a spec names.
* :func:`decode` turns a row loaded with ``datasets`` into integer label arrays.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from concepts.broden import format as fmt
from concepts.broden.reader import ConceptDataset, Sample, decode_label_png, is_inside
from concepts.errors import DatasetFormatError, UnsafeInputError, UsageError
from concepts.progress import progress
from concepts.limits import check_pixels
from concepts.publish import CARD_FILE, DATA_DIR, FIXED_COLUMNS, PREVIEW_COLUMN, TABLES_DIR, HubError, safe_relpath
from concepts.staging import guard_target, staged_output

log = logging.getLogger(__name__)

HF_PREFIX = "hf://"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
#: Table files a pull restores; anything else in ``tables/`` is ignored.
_TABLE_NAME = re.compile(r"^(index\.csv|category\.csv|label\.csv|c_[^/\\]+\.csv|README\.txt|syns\.txt)$")
_CACHE_GROUPS = 8


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """Split ``hf://[datasets/]OWNER/NAME[@REVISION]`` into repo id and revision."""
    body = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    body = body.removeprefix("datasets/")
    repo, _, revision = body.partition("@")
    if not _REPO_ID.match(repo):
        raise UsageError(f"{spec!r} is not a Hub dataset id", hint="expected hf://OWNER/NAME or hf://OWNER/NAME@REVISION")
    return repo, revision or None


def download(spec: str, *, cache_dir: str | Path | None = None, endpoint: str | None = None) -> Path:
    """Download (or find in the cache) the published files of ``hf://REPO_ID``; return the folder."""
    from huggingface_hub import snapshot_download

    repo, revision = parse_hf_spec(spec)
    try:
        folder = snapshot_download(
            repo, repo_type="dataset", revision=revision, cache_dir=cache_dir, endpoint=endpoint,
            allow_patterns=[CARD_FILE, f"{DATA_DIR}/*.parquet", f"{TABLES_DIR}/*"],
        )
    # The HTTP layer's exception classes differ between huggingface_hub releases; report any
    # failure as one line naming the repo.
    except Exception as e:  # noqa: BLE001
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise HubError(f"cannot download dataset {repo} from the Hub ({reason})", item=spec,
                       hint="check the network and the repo id; private repos need HF_TOKEN") from None
    return Path(folder)


def is_hf_folder(path: str | Path) -> bool:
    """Whether a folder looks like a published dataset (``data/*.parquet`` and ``tables/index.csv``)."""
    path = Path(path)
    return (path / TABLES_DIR / fmt.INDEX_FILE).is_file() and any((path / DATA_DIR).glob("*.parquet"))


def _input_root(folder: Path, spec: str | Path) -> Path:
    """The folder a published dataset's files may point into (symbolic links resolved).

    A Hub download is a snapshot folder whose files link into the repo cache's ``blobs/``: its
    root is the repo cache folder two levels up; a local published folder is its own root.
    """
    if isinstance(spec, str) and spec.startswith(HF_PREFIX):
        return Path(os.path.realpath(folder.parent.parent))
    return Path(os.path.realpath(folder))


def _contained(path: Path, root: Path, folder: Path) -> Path:
    """``path`` itself, after checking that it (links resolved) stays inside ``root``."""
    if not is_inside(root, path):
        raise UnsafeInputError("is a symbolic link pointing outside the published folder; it is not followed",
                               path=path, hint=f"replace it by the file itself in {folder}")
    return path


def _check_files(folder: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """The table files and Parquet shards of a published folder, each checked to stay inside ``root``."""
    if not (folder / TABLES_DIR).is_dir():
        raise DatasetFormatError("not a published dataset folder: expected data/*.parquet and tables/index.csv",
                                 path=folder)
    tables_dir = _contained(folder / TABLES_DIR, root, folder)
    data_dir = _contained(folder / DATA_DIR, root, folder)
    tables = []
    for table in sorted(tables_dir.iterdir()):
        if not _TABLE_NAME.match(table.name):
            continue
        _contained(table, root, folder)
        if not table.is_file():
            raise DatasetFormatError("is not a file (a table is expected here)", path=table)
        tables.append(table)
    shards = [_contained(shard, root, folder) for shard in sorted(data_dir.glob("*.parquet"))]
    for shard in shards:
        if not shard.is_file():
            raise DatasetFormatError("is not a file (a Parquet shard is expected here)", path=shard)
    return tables, shards


def _open_shard(shard: Path) -> pq.ParquetFile:
    """Open one Parquet shard; a damaged one is one line naming it."""
    try:
        return pq.ParquetFile(shard)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _bad_shard(shard, e) from None


def _bad_shard(shard: Path, err: BaseException) -> DatasetFormatError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
    return DatasetFormatError(f"cannot read this Parquet shard ({reason})", path=shard)


def _resolve(spec: str | Path, **kwargs: Any) -> Path:
    if isinstance(spec, str) and spec.startswith(HF_PREFIX):
        return download(spec, **kwargs)
    folder = Path(spec)
    if not is_hf_folder(folder):
        raise DatasetFormatError("not a published dataset folder: expected data/*.parquet and tables/index.csv",
                                 path=folder)
    return folder


class HubDataset(ConceptDataset):
    """A published dataset read in place: tables from ``tables/``, pixels from the Parquet rows.

    ``root`` is the ``tables/`` folder (so the table readers, ``fingerprint`` and
    ``primary_categories`` behave exactly as for the Broden folder the dataset came from);
    ``folder`` is the published folder and ``spec`` what the user named.
    """

    def __init__(self, folder: str | Path, spec: str | None = None) -> None:
        self.folder = Path(folder)
        self.spec = spec or str(folder)
        _, self.shards = _check_files(self.folder, _input_root(self.folder, self.spec))
        super().__init__(self.folder / TABLES_DIR, input_root=_input_root(self.folder, self.spec))
        self._where: dict[str, tuple[int, int, int]] = {}
        for si, shard in enumerate(self.shards):
            pf = self._parquet(si)
            try:
                for rg in range(pf.num_row_groups):
                    for offset, path in enumerate(pf.read_row_group(rg, columns=["path"]).column(0).to_pylist()):
                        self._where[path] = (si, rg, offset)
            except (pa.ArrowException, OSError, ValueError, KeyError) as e:
                raise _bad_shard(shard, e) from None
        missing = [s.image for s in self.samples if s.image not in self._where]
        if missing:
            raise DatasetFormatError(f"{len(missing)} image(s) of index.csv have no Parquet row, e.g. {missing[0]!r}",
                                     path=self.folder / DATA_DIR)
        self._pngs: dict[str, tuple[str, str]] | None = None
        self._by_image = {s.image: s for s in self.samples}

    def __getstate__(self) -> dict[str, Any]:
        # Open files and cached row groups stay behind when a data loader pickles the dataset.
        state = dict(self.__dict__)
        state.pop("_files", None)
        state.pop("_groups", None)
        return state

    def __repr__(self) -> str:
        return f"HubDataset({self.spec!r}, {len(self)} images, {len(self.labels)} labels)"

    def _parquet(self, shard: int) -> pq.ParquetFile:
        files = self.__dict__.setdefault("_files", {})
        if shard not in files:
            files[shard] = _open_shard(self.shards[shard])
        return files[shard]

    def _column(self, sample: Sample, column: str) -> Any:
        """One cell of the Parquet row of a sample (row groups cached, least recently used out)."""
        si, rg, offset = self._where[sample.image]
        groups: OrderedDict = self.__dict__.setdefault("_groups", OrderedDict())
        key = (si, rg, column)
        if key not in groups:
            try:
                groups[key] = self._parquet(si).read_row_group(rg, columns=[column]).column(0).to_pylist()
            except (pa.ArrowException, OSError, ValueError, KeyError) as e:
                raise _bad_shard(self.shards[si], e) from None
            while len(groups) > _CACHE_GROUPS:
                groups.popitem(last=False)
        groups.move_to_end(key)
        return groups[key][offset]

    def image_bytes(self, sample: Sample) -> bytes:
        """The stored JPEG bytes of a sample."""
        return self._column(sample, "image")["bytes"]

    def image_path(self, sample: Sample) -> Path:
        """Published images have no file of their own; use :meth:`load_image` or :meth:`image_bytes`."""
        raise DatasetFormatError("a published dataset stores images inside Parquet shards, not as files",
                                 path=self.folder, item=sample.image, hint="use load_image() or image_bytes()")

    def load_image(self, sample: Sample) -> np.ndarray:
        """Decode a sample's image as an ``ih x iw x 3`` uint8 RGB array."""
        with Image.open(io.BytesIO(self.image_bytes(sample))) as im:
            return np.asarray(im.convert("RGB"))

    def png_bytes(self, relpath: str) -> bytes:
        """The stored bytes of one label PNG (path relative to ``images/``, as in index.csv)."""
        if self._pngs is None:
            self._pngs = {p: (s.image, c) for s in self.samples for c in self.category_names for p in s.pixel_paths(c)}
        if relpath not in self._pngs:
            raise DatasetFormatError("label PNG is not listed in index.csv", path=self.folder, item=relpath)
        image, category = self._pngs[relpath]
        for cell in self._column(self._by_image[image], category) or []:
            if cell["path"] == relpath:
                return cell["bytes"]
        raise DatasetFormatError("label PNG is missing from its Parquet row", path=self.shards[self._where[image][0]],
                                 item=relpath)

    def load_png(self, relpath: str) -> np.ndarray:
        """Decode one RG-encoded label PNG (path relative to ``images/``) to int32 numbers."""
        return decode_label_png(io.BytesIO(self.png_bytes(relpath)), path=self.folder, item=relpath)


def _layer(cell: Any, column: str) -> np.ndarray:
    """One label image of a row (a PIL image, or ``{"bytes", "path"}`` when not decoded) as numbers."""
    if isinstance(cell, dict):
        data = cell.get("bytes")
        if not isinstance(data, bytes):
            raise DatasetFormatError("a label image has no bytes", item=f"{column}: {cell.get('path')}")
        return decode_label_png(io.BytesIO(data), item=f"{column}: {cell.get('path')}")
    if isinstance(cell, Image.Image):
        check_pixels(cell.width, cell.height, what="label image", item=column, error=DatasetFormatError)
        if cell.mode != "RGB":
            raise DatasetFormatError(f"label image must be 8-bit RGB, got mode {cell.mode}", item=column)
        return fmt.decode_rg_image(cell)
    raise DatasetFormatError(f"not a label image ({type(cell).__name__})", item=column)


def decode(sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per category of a published row (as ``datasets`` loads it), its label numbers as ``int32`` arrays.

    A pixel-level category gives ``layers x sh x sw`` (label number = R + 256 * G of each label image,
    dominant layer first); an image-level one (and ``<category>_numbers``) gives its numbers, one
    per label. A category with nothing in this row gives an empty array. Rows loaded with
    ``Image(decode=False)`` (``{"bytes", "path"}`` cells) decode the same.
    """
    out: dict[str, np.ndarray] = {}
    for column, value in sample.items():
        if column in FIXED_COLUMNS or column == PREVIEW_COLUMN or not isinstance(value, list):
            continue
        if not value:
            out[column] = np.zeros(0, np.int32)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            out[column] = np.asarray(value, dtype=np.int32)
        else:
            layers = [_layer(v, column) for v in value]
            if len({layer.shape for layer in layers}) > 1:
                raise DatasetFormatError("label images of one category differ in size", item=column)
            out[column] = np.stack(layers).astype(np.int32, copy=False)
    return out


def open_hf(spec: str | Path, **kwargs: Any) -> HubDataset:
    """Open a published folder or ``hf://REPO_ID`` in place, with the ConceptDataset reading API."""
    return HubDataset(_resolve(spec, **kwargs), spec=str(spec))


def open_any(spec: str | Path, **kwargs: Any) -> ConceptDataset:
    """Open a Broden folder, a published folder or ``hf://REPO_ID``, whichever ``spec`` names."""
    if isinstance(spec, str) and spec.startswith(HF_PREFIX):
        return open_hf(spec, **kwargs)
    path = Path(spec)
    if (path / fmt.INDEX_FILE).is_file():
        return ConceptDataset(path)
    if is_hf_folder(path):
        return HubDataset(path)
    if (path / fmt.CATEGORY_FILE).is_file() or (path / fmt.LABEL_FILE).is_file():
        return ConceptDataset(path)  # a broken Broden folder: its errors name the missing file
    if not path.exists():
        raise DatasetFormatError("no such dataset folder", path=path, hint="give a Broden folder, a published folder or hf://OWNER/NAME")
    raise DatasetFormatError("neither a Broden folder (index.csv) nor a published dataset (data/*.parquet, tables/index.csv)",
                             path=path)


def pull(spec: str | Path, output: str | Path, *, overwrite: bool = False, **kwargs: Any) -> Path:
    """Materialise the Broden folder of a published dataset in ``output``; return it."""
    out = Path(output).absolute()
    local = not (isinstance(spec, str) and spec.startswith(HF_PREFIX))
    guard_target(out, kind="dataset", overwrite=overwrite, inputs=[Path(spec)] if local else [])
    folder = _resolve(spec, **kwargs)
    tables, shards = _check_files(folder, _input_root(folder, spec))
    with staged_output(out, kind="dataset", overwrite=overwrite, inputs=[folder]) as tmp:
        for table in tables:
            shutil.copyfile(table, tmp / table.name)
        images = tmp / fmt.IMAGES_DIR
        total = sum(_open_shard(s).metadata.num_rows for s in shards)
        rows = (pair for shard in shards for pair in _rows(shard))
        for shard, row in progress(rows, desc="pulling", total=total, unit="img"):
            image = row.get("image")
            if not isinstance(image, dict):
                raise DatasetFormatError("a row has no image cell", path=shard, item=str(row.get("path"))[:200])
            _write(images, image, shard)
            for key, value in row.items():
                if isinstance(value, list):
                    for cell in value:
                        if isinstance(cell, dict):
                            _write(images, cell, shard)
        _check_complete(tmp)
    log.info("pulled %d images to %s", total, out)
    return out


def _rows(shard: Path) -> Any:
    """The rows of one shard with the shard they come from; a damaged shard is one line naming it."""
    try:
        for batch in _open_shard(shard).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                yield shard, row
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _bad_shard(shard, e) from None


def _write(images: Path, cell: dict[str, Any], shard: Path) -> None:
    path = cell.get("path")
    if not isinstance(path, str):
        raise DatasetFormatError("a stored file has no path", path=shard)
    relpath = safe_relpath(path, path=shard)
    data = cell.get("bytes")
    if not isinstance(data, bytes):
        raise DatasetFormatError("a stored file has no bytes", path=shard, item=relpath)
    target = images / relpath
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        # The shards name one path both as a file and as a folder (a/b.png and a/b.png/c.png).
        raise DatasetFormatError("a stored file's path is also a folder of other stored files (or the reverse)",
                                 path=shard, item=relpath) from None


def _check_complete(root: Path) -> None:
    ds = ConceptDataset(root)
    for sample in ds.samples:
        for rel in [sample.image] + [p for c in ds.category_names for p in sample.pixel_paths(c)]:
            if not (root / fmt.IMAGES_DIR / rel).is_file():
                raise DatasetFormatError("a file listed in index.csv is not in the Parquet shards",
                                         path=fmt.INDEX_FILE, row=sample.index + 2, item=rel)


__all__ = ["HubDataset", "decode", "download", "is_hf_folder", "open_any", "open_hf", "parse_hf_spec", "pull"]
