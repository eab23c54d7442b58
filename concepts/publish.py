"""Publish a Broden-format concept dataset as a Hugging Face dataset folder (and push it).

The folder ``datasets.load_dataset(folder)`` reads with no custom code::

    HF_DIR/
      README.md                         dataset card; its YAML declares every configuration
      data/<split>-0000N-of-0000M.parquet
      tables/index.csv, label.csv, category.csv, c_<category>.csv, README.txt, syns.txt

One Parquet row per ``index.csv`` row: ``path`` (the ``image`` cell), ``image`` (the stored JPEG
bytes), ``ih, iw, sh, sw``, ``preview`` (a colourised PNG of the preview category, for the Hub's
viewer), per pixel-level category a list of label images (the RG-encoded PNG bytes; each keeps its
Broden path), per image-level category a list of ``ClassLabel`` numbers (names in the features).
Numbers that share a cell with PNGs (NetDissect-Lite accepts that) go to ``<category>_numbers``.
Broden's ``val`` split is published as ``validation``. The tables travel byte for byte, so
:func:`concepts.hub.pull` restores the folder exactly.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from concepts.broden import format as fmt
from concepts.broden.reader import ConceptDataset, Sample, decode_label_png, is_inside
from concepts.errors import ConceptsError, UnsafeInputError, UsageError
from concepts.progress import progress
from concepts.publish_card import render_card, table_configs
from concepts.staging import MARKER, guard_target, staged_output

log = logging.getLogger(__name__)

DATA_DIR = "data"
TABLES_DIR = "tables"
CARD_FILE = "README.md"
LICENSE_FILE = "LICENSE.md"
ID2LABEL_FILE = "id2label.json"
FIXED_COLUMNS = ("path", "image", "ih", "iw", "sh", "sw")
PREVIEW_COLUMN = "preview"
#: Broden split name -> the name the Hub expects; index.csv keeps Broden's, so pull needs no map.
HUB_SPLITS = {"val": "validation"}
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
    #: category drawn in the ``preview`` column; ``"auto"`` picks one, ``None`` or ``"none"`` drops the column
    preview: str | None = "auto"


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


def hub_split(split: str) -> str:
    """The Hub's name for a Broden split (``val`` -> ``validation``; others unchanged)."""
    return HUB_SPLITS.get(split, split)


def class_names(ds: ConceptDataset) -> list[str]:
    """Unique label names indexed by number, for ``datasets.ClassLabel`` (unused numbers get ``#N``)."""
    used = [n for s in ds.samples for c in ds.category_names for n in s.image_labels(c)]
    size = max([ds.num_labels - 1, 0, *used]) + 1
    names, seen = [], set()
    for number in range(size):
        label = ds.labels.get(number)
        name = label.name if label and label.name else ("-" if number == 0 else f"#{number}")
        # ClassLabel refuses duplicates; label.csv does not promise unique names.
        while name in seen:
            name = f"{name}#{number}"
        seen.add(name)
        names.append(name)
    return names


def preview_category(ds: ConceptDataset, kinds: dict[str, str], choice: str | None) -> str | None:
    """The pixel-level category the ``preview`` column draws (the one with most labels for ``auto``)."""
    pixel = [c for c in ds.categories if kinds.get(c.name) in ("pixel", "mixed")]
    if choice in (None, "none") or not pixel:
        if choice not in (None, "none", "auto"):
            raise UsageError(f"--preview {choice!r}: the dataset has no pixel-level category", path=ds.root / fmt.CATEGORY_FILE)
        return None
    if choice == "auto":
        return max(pixel, key=lambda c: c.count).name  # max keeps the first of equals: category.csv order
    if choice not in {c.name for c in pixel}:
        names = ", ".join(c.name for c in pixel)
        raise UsageError(f"--preview {choice!r} is not a pixel-level category (choose one of {names}, or none)",
                         path=ds.root / fmt.CATEGORY_FILE)
    return choice


def build_features(ds: ConceptDataset, kinds: dict[str, str], preview: str | None = None) -> Any:
    """The ``datasets.Features`` of the main configuration."""
    import datasets

    columns: dict[str, Any] = {
        "path": datasets.Value("string"),
        "image": datasets.Image(),
        **{k: datasets.Value("int32") for k in ("ih", "iw", "sh", "sw")},
    }
    if preview:
        columns[PREVIEW_COLUMN] = datasets.Image()
    numbers = datasets.List(datasets.ClassLabel(names=class_names(ds)))
    for cat in ds.category_names:
        names = [cat] + ([cat + NUMBERS_SUFFIX] if kinds[cat] == "mixed" else [])
        for name in names:
            if name in columns:
                raise UsageError(f"category {cat!r} clashes with column {name!r} of the published table",
                                 path=ds.root / fmt.CATEGORY_FILE)
        if kinds[cat] == "image":
            columns[cat] = numbers
        else:
            columns[cat] = datasets.List(datasets.Image())
            if kinds[cat] == "mixed":
                columns[cat + NUMBERS_SUFFIX] = numbers
    return datasets.Features(columns)


def _inside(ds: ConceptDataset, path: Path) -> Path:
    """``path``, after checking that it (symbolic links resolved) stays inside the dataset folder."""
    if not is_inside(ds.root, path):
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


def palette() -> list[int]:
    """The preview's 256-colour palette: black for 0, then well-separated hues (golden-ratio steps)."""
    import colorsys

    out = [0, 0, 0]
    for i in range(1, 256):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3 == 0))
        out += [round(r * 255), round(g * 255), round(b * 255)]
    return out


_PALETTE = palette()


def preview_png(numbers: np.ndarray) -> bytes:
    """A palette PNG of a label layer: number 0 black, number n colour ``1 + (n - 1) % 255``."""
    index = np.where(numbers > 0, 1 + (numbers.astype(np.int64) - 1) % 255, 0).astype(np.uint8)
    im = Image.fromarray(index, mode="P")
    # A palette cut to the colours used lets Pillow write 1-, 2- or 4-bit pixels and a short PLTE
    # chunk: on small label maps the full 768-byte palette would outweigh the pixels.
    im.putpalette(_PALETTE[: 3 * (int(index.max()) + 1)])
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _row(ds: ConceptDataset, sample: Sample, kinds: dict[str, str], preview: str | None = None) -> dict[str, Any]:
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
    if preview:
        row[PREVIEW_COLUMN] = None
        if row[preview]:
            # The dominant layer only: the preview is for the eye, the PNGs stay the exact data.
            first = row[preview][0]
            try:
                layer = decode_label_png(io.BytesIO(first["bytes"]), path=ds.root / fmt.IMAGES_DIR / first["path"])
            except ConceptsError as e:
                # The PNG is published byte for byte all the same; only its picture is left out.
                log.warning("no preview for %s: %s", sample.image, e)
            else:
                row[PREVIEW_COLUMN] = {"bytes": preview_png(layer), "path": None}
    return row


def write_split(ds: ConceptDataset, samples: Sequence[Sample], split: str, out: Path, schema: pa.Schema,
                kinds: dict[str, str], shard_size: int, preview: str | None = None) -> list[Path]:
    """Stream one split into ``data/<split>-0000N-of-0000M.parquet`` (Hub split name); return the shard paths."""
    shards = plan_shards([_row_bytes(ds, s) for s in samples], shard_size)
    written = []
    rows = progress(samples, desc=f"publishing {split}", total=len(samples), unit="img")
    for n, (start, stop) in enumerate(shards):
        path = out / DATA_DIR / f"{hub_split(split)}-{n:05d}-of-{len(shards):05d}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            buffer: list[dict[str, Any]] = []
            pending = 0
            for _ in range(start, stop):
                sample = next(rows)
                buffer.append(_row(ds, sample, kinds, preview))
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
    # The Hub lists splits in the card's order; train first, as every Hub dataset does.
    order = {"train": 0, "val": 1, "validation": 1, "test": 2}
    splits = dict(sorted(splits.items(), key=lambda kv: order.get(kv[0], 3)))
    for split in splits:
        if not _SPLIT_NAME.match(split):
            raise UsageError(f"split {split!r} is not a valid Hugging Face split name (letters, digits, _ and .)",
                             path=ds.root / fmt.INDEX_FILE)
        if hub_split(split) != split and hub_split(split) in splits:
            raise UsageError(f"splits {split!r} and {hub_split(split)!r} would both be published as {hub_split(split)!r}",
                             path=ds.root / fmt.INDEX_FILE)
    kinds = category_kinds(ds)
    preview = preview_category(ds, kinds, options.preview)
    features = build_features(ds, kinds, preview)
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
            paths = write_split(ds, samples, split, tmp, schema, kinds, options.shard_size, preview)
            summary.rows[hub_split(split)] = len(samples)
            summary.shards[hub_split(split)] = len(paths)
            split_bytes[hub_split(split)] = sum(p.stat().st_size for p in paths)
        summary.bytes = sum(split_bytes.values())
        names = ds.label_names()
        (tmp / ID2LABEL_FILE).write_text(
            json.dumps({str(n): name for n, name in enumerate(names) if n in ds.labels}, indent=1, ensure_ascii=False) + "\n",
            encoding="utf-8")
        card, license_text = render_card(ds, kinds, features, summary.rows, split_bytes, options, out.name, preview)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        if license_text:
            (tmp / LICENSE_FILE).write_text(license_text, encoding="utf-8")
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
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path.is_symlink() and not is_inside(folder, path):
                raise UnsafeInputError("is a symbolic link pointing outside the folder; nothing was uploaded",
                                       path=path, hint="replace the link by the file itself")


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text




__all__ = ["HUB_SPLITS", "HubError", "PublishOptions", "PublishSummary", "class_names", "find_token", "hub_split",
           "parse_shard_size", "publish", "push"]
