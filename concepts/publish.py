"""Publish a Broden-format concept dataset as a Hugging Face dataset folder (and push it).

The folder ``datasets.load_dataset(folder)`` reads with no custom code::

    HF_DIR/
      README.md                         dataset card; its YAML declares every configuration
      data/<split>-0000N-of-0000M.parquet
      tables/index.csv, label.csv, category.csv, c_<category>.csv, README.txt, syns.txt

One Parquet row per ``index.csv`` row: ``path`` (the ``image`` cell), ``image`` (the stored JPEG
bytes), ``ih, iw, sh, sw``, per pixel-level category a list of label images (the RG-encoded PNG
bytes; each keeps its Broden path), per image-level category a list of label numbers. Numbers
that share a cell with PNGs (NetDissect-Lite accepts that) go to ``<category>_numbers``. The
tables travel byte for byte, so :func:`concepts.hub.pull` restores the folder exactly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from concepts.broden import format as fmt
from concepts.broden.reader import ConceptDataset, Sample
from concepts.errors import ConceptsError, UnsafeInputError, UsageError
from concepts.progress import progress
from concepts.publish_card import render_card, table_configs
from concepts.staging import MARKER, guard_target, staged_output

log = logging.getLogger(__name__)

DATA_DIR = "data"
TABLES_DIR = "tables"
CARD_FILE = "README.md"
FIXED_COLUMNS = ("path", "image", "ih", "iw", "sh", "sw")
NUMBERS_SUFFIX = "_numbers"
#: Rows per Parquet row group: small groups keep memory flat and let readers seek (the Hub
#: viewer uses the same figure for image datasets).
ROW_GROUP_ROWS = 100
DEFAULT_SHARD_SIZE = "500MB"
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class HubError(ConceptsError, RuntimeError):
    """Talking to the Hugging Face Hub failed (no token, no network, refused)."""


@dataclass
class PublishOptions:
    """How to publish: shard size, card fields and where to push."""

    shard_size: int = 500 * 10**6
    license: str = "other"
    repo_id: str | None = None  #: named in the card's usage lines; uploaded to when ``push``
    push: bool = False
    private: bool = False
    overwrite: bool = False
    pretty_name: str | None = None


@dataclass
class PublishSummary:
    """What :func:`publish` wrote."""

    output: Path
    rows: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    url: str | None = None


def parse_shard_size(text: str) -> int:
    """Parse ``500MB`` / ``64MiB`` / ``1000`` (bytes) into a positive byte count."""
    match = _SIZE.match(text)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--shard-size {text!r}: expected a size such as 500MB, 64MiB or 100000")
    return max(1, int(float(match[1]) * _UNITS[(match[2] or "").lower()]))


def safe_relpath(text: str, *, path: Path | str, item: str | None = None) -> str:
    """Check a path relative to ``images/`` cannot escape it; return it unchanged."""
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise UnsafeInputError(f"unsafe image path {text!r}", path=path, item=item)
    return text


def category_kinds(ds: ConceptDataset) -> dict[str, str]:
    """Per category ``pixel`` (some cell holds a PNG), ``image`` (numbers only) or ``mixed``."""
    kinds = {}
    for cat in ds.category_names:
        pngs = any(s.pixel_paths(cat) for s in ds.samples)
        numbers = any(s.image_labels(cat) for s in ds.samples)
        kinds[cat] = "mixed" if pngs and numbers else "pixel" if pngs else "image"
    return kinds


def build_features(ds: ConceptDataset, kinds: dict[str, str]) -> Any:
    """The ``datasets.Features`` of the main configuration."""
    import datasets

    columns: dict[str, Any] = {
        "path": datasets.Value("string"),
        "image": datasets.Image(),
        **{k: datasets.Value("int32") for k in ("ih", "iw", "sh", "sw")},
    }
    for cat in ds.category_names:
        names = [cat] + ([cat + NUMBERS_SUFFIX] if kinds[cat] == "mixed" else [])
        for name in names:
            if name in columns:
                raise UsageError(f"category {cat!r} clashes with column {name!r} of the published table",
                                 path=ds.root / fmt.CATEGORY_FILE)
        if kinds[cat] == "image":
            columns[cat] = datasets.List(datasets.Value("int32"))
        else:
            columns[cat] = datasets.List(datasets.Image())
            if kinds[cat] == "mixed":
                columns[cat + NUMBERS_SUFFIX] = datasets.List(datasets.Value("int32"))
    return datasets.Features(columns)


def _inside(ds: ConceptDataset, path: Path) -> Path:
    """``path``, after checking that it (symbolic links resolved) stays inside the dataset folder."""
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(ds.root)):
        raise UnsafeInputError("is a symbolic link pointing outside the dataset; it is not followed",
                               path=path, hint="replace the link by the file itself")
    return path


def _row_bytes(ds: ConceptDataset, sample: Sample) -> int:
    images = ds.root / fmt.IMAGES_DIR
    paths = [sample.image] + [p for cat in ds.category_names for p in sample.pixel_paths(cat)]
    try:
        return sum(_inside(ds, images / safe_relpath(p, path=ds.root / fmt.INDEX_FILE, item=sample.image)).stat().st_size
                   for p in paths)
    except FileNotFoundError as e:
        raise ConceptsError("file listed in index.csv is missing", path=e.filename) from None


def plan_shards(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Cut rows into consecutive ``(start, stop)`` shards of at most ``limit`` bytes (one row at least)."""
    shards: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > limit:
            shards.append((start, i))
            start, total = i, 0
        total += size
    if sizes:
        shards.append((start, len(sizes)))
    return shards


def _read(ds: ConceptDataset, relpath: str, sample: Sample) -> bytes:
    safe_relpath(relpath, path=ds.root / fmt.INDEX_FILE, item=sample.image)
    path = _inside(ds, ds.root / fmt.IMAGES_DIR / relpath)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConceptsError("file listed in index.csv is missing", path=path) from None
    except IsADirectoryError:
        raise ConceptsError("file listed in index.csv is a folder", path=path) from None


def _row(ds: ConceptDataset, sample: Sample, kinds: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": sample.image,
        "image": {"bytes": _read(ds, sample.image, sample), "path": sample.image},
        "ih": sample.ih, "iw": sample.iw, "sh": sample.sh, "sw": sample.sw,
    }
    for cat, kind in kinds.items():
        if kind == "image":
            row[cat] = sample.image_labels(cat)
            continue
        row[cat] = [{"bytes": _read(ds, p, sample), "path": p} for p in sample.pixel_paths(cat)]
        if kind == "mixed":
            row[cat + NUMBERS_SUFFIX] = sample.image_labels(cat)
    return row


def write_split(ds: ConceptDataset, samples: Sequence[Sample], split: str, out: Path, schema: pa.Schema,
                kinds: dict[str, str], shard_size: int) -> list[Path]:
    """Stream one split into ``data/<split>-0000N-of-0000M.parquet``; return the shard paths."""
    shards = plan_shards([_row_bytes(ds, s) for s in samples], shard_size)
    written = []
    rows = progress(samples, desc=f"publishing {split}", total=len(samples), unit="img")
    for n, (start, stop) in enumerate(shards):
        path = out / DATA_DIR / f"{split}-{n:05d}-of-{len(shards):05d}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            buffer: list[dict[str, Any]] = []
            pending = 0
            for _ in range(start, stop):
                sample = next(rows)
                buffer.append(_row(ds, sample, kinds))
                pending += _row_bytes(ds, sample)
                # Flush on rows or bytes so a row group never holds much more than a shard.
                if len(buffer) >= ROW_GROUP_ROWS or pending >= min(shard_size, 64 * 2**20):
                    writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                    buffer, pending = [], 0
            if buffer:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
        written.append(path)
    for _ in rows:  # drain the generator so the progress bar closes
        pass
    return written


def table_files(ds: ConceptDataset) -> list[str]:
    """The top-level files of a Broden folder that travel with the dataset, in a fixed order."""
    names = [fmt.INDEX_FILE, fmt.CATEGORY_FILE, fmt.LABEL_FILE] + [fmt.code_file(c) for c in ds.category_names]
    names += [n for n in (fmt.README_FILE, fmt.SYNS_FILE) if (ds.root / n).is_file()]
    return names


def table_parquet(csv_name: str) -> str:
    """The Parquet twin of a table file (``label.csv`` -> ``label.parquet``)."""
    return csv_name.rsplit(".", 1)[0] + ".parquet"


def _table_schema(ds: ConceptDataset, name: str) -> dict[str, pa.DataType]:
    int32, int64, text, real = pa.int32(), pa.int64(), pa.string(), pa.float64()
    if name == fmt.LABEL_FILE:
        return dict(zip(fmt.LABEL_COLUMNS, (int32, text, text, int64, real, text)))
    if name == fmt.CATEGORY_FILE:
        return dict(zip(fmt.CATEGORY_COLUMNS, (text, int32, int32, int32, int64)))
    if name == fmt.INDEX_FILE:
        return {**dict(zip(fmt.INDEX_FIXED_COLUMNS, (text, text, int32, int32, int32, int32))),
                **{c: text for c in ds.category_names}}
    return dict(zip(fmt.CODE_COLUMNS, (int32, int32, text, int64, real)))


def write_table_parquet(ds: ConceptDataset, name: str, target: Path) -> None:
    """Convert one table to Parquet with fixed column types (empty cells stay empty strings)."""
    import pyarrow.csv as pacsv

    types = _table_schema(ds, name)
    try:
        table = pacsv.read_csv(ds.root / name, convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, OSError) as e:
        raise ConceptsError(f"cannot convert the table ({str(e).splitlines()[0]})", path=ds.root / name) from None
    pq.write_table(table, target)


def publish(source: str | Path, output: str | Path, options: PublishOptions | None = None,
            api: Any = None) -> PublishSummary:
    """Write a Broden folder as a Hugging Face dataset folder; push it when ``options.repo_id`` is set."""
    options = options or PublishOptions()
    out = Path(output).absolute()
    guard_target(out, kind="published", overwrite=options.overwrite, inputs=[Path(source)])
    ds = ConceptDataset(source)
    for name in table_files(ds):
        _inside(ds, ds.root / name)
    if not ds.samples:
        raise UsageError("the dataset has no images; nothing to publish", path=ds.root / fmt.INDEX_FILE)
    splits: dict[str, list[Sample]] = {}
    for sample in ds.samples:
        splits.setdefault(sample.split, []).append(sample)
    for split in splits:
        if not _SPLIT_NAME.match(split):
            raise UsageError(f"split {split!r} is not a valid Hugging Face split name (letters, digits, _ and .)",
                             path=ds.root / fmt.INDEX_FILE)
    kinds = category_kinds(ds)
    features = build_features(ds, kinds)
    schema = features.arrow_schema
    summary = PublishSummary(output=out)

    with staged_output(out, kind="published", overwrite=options.overwrite, inputs=[ds.root]) as tmp:
        (tmp / DATA_DIR).mkdir()
        (tmp / TABLES_DIR).mkdir()
        for name in table_files(ds):
            shutil.copyfile(ds.root / name, tmp / TABLES_DIR / name)
        for _, name in table_configs(ds):
            write_table_parquet(ds, name, tmp / TABLES_DIR / table_parquet(name))
        split_bytes: dict[str, int] = {}
        for split, samples in splits.items():
            paths = write_split(ds, samples, split, tmp, schema, kinds, options.shard_size)
            summary.rows[split] = len(samples)
            summary.shards[split] = len(paths)
            split_bytes[split] = sum(p.stat().st_size for p in paths)
        summary.bytes = sum(split_bytes.values())
        card = render_card(ds, kinds, features, summary.rows, split_bytes, options, out.name)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    log.info("published %d images in %d shard(s) to %s", sum(summary.rows.values()),
             sum(summary.shards.values()), out)
    if options.push:
        if not options.repo_id:
            raise UsageError("pushing needs a repo id (OWNER/NAME)", path=out)
        summary.url = push(out, options.repo_id, private=options.private, api=api)
    return summary


def find_token() -> str | None:
    """The user's Hugging Face token: ``HF_TOKEN`` or the one ``hf auth login`` stored."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def push(folder: str | Path, repo_id: str, *, private: bool = False, api: Any = None,
         token: str | None = None, endpoint: str | None = None) -> str:
    """Upload a published folder to the dataset repo ``repo_id``; return its URL.

    ``api`` is an ``HfApi``-like object (tests inject a recorder). The token is passed to the
    API and never logged or written.
    """
    folder = Path(folder)
    _refuse_outside_links(folder)
    token = token or find_token()
    if not token:
        raise HubError("no Hugging Face token; nothing was uploaded", path=folder,
                       hint=f"set HF_TOKEN or run `hf auth login`, then `concepts publish {folder} --push {repo_id}`")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", token=token,
                          ignore_patterns=[MARKER],
                          commit_message=f"Publish {folder.name} with concepts")
    # The HTTP layer's exception classes differ between huggingface_hub releases; any failure here
    # is reported as one line and the local folder stays as written.
    except Exception as e:  # noqa: BLE001
        reason = _scrub(f"{type(e).__name__}: {e}".splitlines()[0], token)
        raise HubError(f"upload to {repo_id} failed ({reason}); the local folder is intact", path=folder,
                       hint="check the network, the token's write access and the repo id") from None
    log.info("pushed %s to the Hub as %s", folder, repo_id)
    return f"https://huggingface.co/datasets/{repo_id}"


def _refuse_outside_links(folder: Path) -> None:
    """Refuse to upload a folder holding a symbolic link to anything outside it."""
    root = Path(os.path.realpath(folder))
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(root):
                raise UnsafeInputError("is a symbolic link pointing outside the folder; nothing was uploaded",
                                       path=path, hint="replace the link by the file itself")


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text




__all__ = ["HubError", "PublishOptions", "PublishSummary", "find_token", "parse_shard_size",
           "publish", "push"]
