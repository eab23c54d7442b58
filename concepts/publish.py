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
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from concepts.broden import format as fmt
from concepts.broden.reader import ConceptDataset, Sample
from concepts.errors import ConceptsError, OutputExistsError, UnsafeInputError, UsageError
from concepts.progress import progress

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


def _row_bytes(ds: ConceptDataset, sample: Sample) -> int:
    images = ds.root / fmt.IMAGES_DIR
    paths = [sample.image] + [p for cat in ds.category_names for p in sample.pixel_paths(cat)]
    try:
        return sum((images / p).stat().st_size for p in paths)
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
    path = ds.root / fmt.IMAGES_DIR / relpath
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConceptsError("file listed in index.csv is missing", path=path) from None


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
    ds = ConceptDataset(source)
    out = Path(output).absolute()
    if out.exists() and not options.overwrite:
        raise OutputExistsError("output already exists", path=out, hint="pass --overwrite to replace it")
    if out == ds.root.absolute() or ds.root.absolute() in out.parents:
        raise UsageError("the output must lie outside the source dataset", path=out)
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

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (tmp / DATA_DIR).mkdir()
        (tmp / TABLES_DIR).mkdir()
        for name in table_files(ds):
            shutil.copyfile(ds.root / name, tmp / TABLES_DIR / name)
        for _, name in _table_configs(ds):
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
        _move_into_place(tmp, out, options.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("published %d images in %d shard(s) to %s", sum(summary.rows.values()),
             sum(summary.shards.values()), out)
    if options.push:
        if not options.repo_id:
            raise UsageError("pushing needs a repo id (OWNER/NAME)", path=out)
        summary.url = push(out, options.repo_id, private=options.private, api=api)
    return summary


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise OutputExistsError("output already exists", path=out, hint="pass --overwrite to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "previous")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


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
                          commit_message=f"Publish {folder.name} with concepts")
    # The HTTP layer's exception classes differ between huggingface_hub releases; any failure here
    # is reported as one line and the local folder stays as written.
    except Exception as e:  # noqa: BLE001
        reason = _scrub(f"{type(e).__name__}: {e}".splitlines()[0], token)
        raise HubError(f"upload to {repo_id} failed ({reason}); the local folder is intact", path=folder,
                       hint="check the network, the token's write access and the repo id") from None
    log.info("pushed %s to the Hub as %s", folder, repo_id)
    return f"https://huggingface.co/datasets/{repo_id}"


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text




# -- the dataset card --------------------------------------------------------------------------

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ pretty_name }}

A concept dataset in the Broden layout (images with pixel- and image-level concept labels), for
[Network Dissection](http://netdissect.csail.mit.edu/) of vision models. Published with
`concepts {{ version }}`; `concepts pull` restores the original Broden folder byte for byte.

## Sources

{% if sources -%}
| source | images |
|---|---:|
{% for key, count in sources -%}
| {{ key }} | {{ count }} |
{% endfor %}
{%- else -%}
The dataset's README.txt does not list its sources.
{%- endif %}

## Recipe

{% if settings -%}
Build settings recorded in `tables/README.txt`:

| option | value |
|---|---|
{% for key, value in settings -%}
| {{ key }} | `{{ value }}` |
{% endfor %}
{%- else -%}
No build settings were recorded.
{%- endif %}
Published with shard size {{ shard_size }} bytes and license `{{ license }}`.

## Splits

| split | images |
|---|---:|
{% for split, count in splits -%}
| {{ split }} | {{ count }} |
{% endfor %}
## Categories

| category | kind | labels | numbers | frequency |
|---|---|---:|---|---:|
{% for c in categories -%}
| {{ c.name }} | {{ c.kind }} | {{ c.count }} | {{ c.first }}-{{ c.last }} | {{ c.frequency }} |
{% endfor %}
## Most frequent concepts

| number | name | categories | images | coverage |
|---:|---|---|---:|---:|
{% for l in top -%}
| {{ l.number }} | {{ l.name }} | {{ l.categories }} | {{ l.frequency }} | {{ l.coverage }} |
{% endfor %}
## Layout

- Configuration `default`: one row per image with `path` (the Broden `image` cell), `image` (the
  stored JPEG), `ih, iw, sh, sw`, and per category its labels: a list of label images for
  pixel-level categories (RGB PNGs, label number = R + 256 * G, 0 = unlabeled, dominant layer
  first) or a list of label numbers for image-level categories (each covers the whole image).
{%- if mixed %}
  Numbers that share a cell with label images are in `<category>_numbers` ({{ mixed }}).
{%- endif %}
- Configurations {{ table_configs }}: the Broden tables as Parquet; the original CSV files
  (and README.txt, syns.txt) are in `tables/`.

## Usage

```python
from datasets import load_dataset

rows = load_dataset("{{ repo }}", split="{{ first_split }}")
labels = load_dataset("{{ repo }}", "labels", split="train")
```

Dissect a model against it, or restore the Broden folder:

```sh
concepts dissect {{ spec }} --model resnet18 --layer layer4 -o out
concepts pull {{ spec }} -o {{ name }}
```
"""


def _cell(text: object) -> str:
    """Escape a value for a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def read_build_notes(readme: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Parse ``README.txt``: the ``(source, images)`` it joins and its ``key: value`` settings."""
    if not readme.is_file():
        return [], []
    sources, settings = [], []
    state = "title"  # title -> sources -> settings -> prose
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() == "Joins the following data sets:":
            state = "sources"
            continue
        source = re.match(r"^\s+([^:]+):\s*(\d+) images\s*$", line)
        setting = re.match(r"^([A-Za-z_][\w ]*): (.+)$", line)
        if state == "sources" and source:
            sources.append((source[1].strip(), source[2]))
        elif state in ("sources", "settings") and setting:
            state = "settings"
            settings.append((setting[1], setting[2]))
        elif state == "settings" and not line.strip():
            state = "prose"
    return sources, settings


def card_data(ds: ConceptDataset, features: Any, rows: dict[str, int], split_bytes: dict[str, int],
              options: PublishOptions, name: str) -> Any:
    """The card's YAML: license, task, tags, every configuration and the main one's features."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    n = sum(rows.values())
    size = next(s for lim, s in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                                 (float("inf"), "n>1M")) if n < lim)
    data = DatasetCardData(
        license=options.license, pretty_name=options.pretty_name or name, task_categories=["image-segmentation"],
        size_categories=[size], tags=["broden", "network-dissection", "interpretability", "concepts"],
    )
    configs: dict[str, dict[str, Any]] = {
        "default": {"data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in rows], "default": True},
    }
    for config, file in _table_configs(ds):
        configs[config] = {"data_files": [{"split": "train", "path": f"{TABLES_DIR}/{table_parquet(file)}"}]}
    MetadataConfigs(configs).to_dataset_card_data(data)
    splits = SplitDict()
    for split, count in rows.items():
        splits.add(SplitInfo(split, num_bytes=split_bytes[split], num_examples=count))
    total = sum(split_bytes.values())
    info = DatasetInfo(features=features, splits=splits, download_size=total, dataset_size=total)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def _table_configs(ds: ConceptDataset) -> list[tuple[str, str]]:
    return [("labels", fmt.LABEL_FILE), ("categories", fmt.CATEGORY_FILE), ("index", fmt.INDEX_FILE)] + [
        (f"codes_{c}", fmt.code_file(c)) for c in ds.category_names
    ]


def render_card(ds: ConceptDataset, kinds: dict[str, str], features: Any, rows: dict[str, int],
                split_bytes: dict[str, int], options: PublishOptions, name: str, top: int = 20) -> str:
    """Render the dataset card (README.md) from :data:`CARD_TEMPLATE`."""
    from huggingface_hub import DatasetCard

    from concepts import __version__

    sources, settings = read_build_notes(ds.root / fmt.README_FILE)
    labels = sorted(ds.labels.values(), key=lambda lab: (-lab.frequency, lab.number))[:top]
    repo = options.repo_id or f"<user>/{name}"
    card = DatasetCard.from_template(
        card_data(ds, features, rows, split_bytes, options, name),
        template_str=CARD_TEMPLATE,
        pretty_name=_cell(options.pretty_name or name),
        version=__version__,
        sources=[(_cell(k), v) for k, v in sources],
        settings=[(_cell(k), _cell(v).replace("`", "'")) for k, v in settings],
        shard_size=options.shard_size,
        license=options.license,
        splits=list(rows.items()),
        categories=[{"name": _cell(c.name), "kind": {"pixel": "pixel", "image": "image", "mixed": "pixel+image"}[kinds[c.name]],
                     "count": c.count, "first": c.first, "last": c.last, "frequency": c.frequency} for c in ds.categories],
        top=[{"number": lab.number, "name": _cell(lab.name), "categories": _cell(fmt.format_category_cell(lab.categories)),
              "frequency": lab.frequency, "coverage": f"{lab.coverage:.2f}"} for lab in labels],
        mixed=", ".join(f"`{c}`" for c, k in kinds.items() if k == "mixed"),
        table_configs=", ".join(f"`{c}`" for c, _ in _table_configs(ds)),
        repo=repo,
        spec=f"hf://{repo}",
        first_split=next(iter(rows), "train"),
        name=name,
    )
    return str(card).rstrip("\n") + "\n"


__all__ = ["CARD_TEMPLATE", "HubError", "PublishOptions", "PublishSummary", "find_token", "parse_shard_size",
           "publish", "push", "render_card"]
