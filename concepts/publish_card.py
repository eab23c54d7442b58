"""The dataset card (README.md) of a published concept dataset, rendered from a template."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from concepts.broden import format as fmt
from concepts.broden.reader import ConceptDataset

if TYPE_CHECKING:
    from concepts.publish import PublishOptions

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
    from concepts.publish import DATA_DIR, TABLES_DIR, table_parquet  # the layout is publish's

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
    for config, file in table_configs(ds):
        configs[config] = {"data_files": [{"split": "train", "path": f"{TABLES_DIR}/{table_parquet(file)}"}]}
    MetadataConfigs(configs).to_dataset_card_data(data)
    splits = SplitDict()
    for split, count in rows.items():
        splits.add(SplitInfo(split, num_bytes=split_bytes[split], num_examples=count))
    total = sum(split_bytes.values())
    info = DatasetInfo(features=features, splits=splits, download_size=total, dataset_size=total)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def table_configs(ds: ConceptDataset) -> list[tuple[str, str]]:
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
        table_configs=", ".join(f"`{c}`" for c, _ in table_configs(ds)),
        repo=repo,
        spec=f"hf://{repo}",
        first_split=next(iter(rows), "train"),
        name=name,
    )
    return str(card).rstrip("\n") + "\n"
