"""The dataset card (README.md) of a published concept dataset, rendered from a template."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from concepts.broden import format as fmt
from concepts.broden.reader import ConceptDataset

if TYPE_CHECKING:
    from concepts.publish import PublishOptions


# -- what the card says about the sources -------------------------------------------------------

@dataclass(frozen=True)
class KnownSource:
    """A public dataset a builder reads: where its terms are and how to cite it."""

    title: str
    homepage: str
    hub_id: str  #: the ``source_datasets`` entry (``extended|<hub_id>``)
    bibtex: tuple[str, ...]


_ADE20K = KnownSource("ADE20K", "https://groups.csail.mit.edu/vision/datasets/ADE20K/", "ade20k", ("""@inproceedings{zhou2017scene,
  title     = {Scene Parsing through {ADE20K} Dataset},
  author    = {Zhou, Bolei and Zhao, Hang and Puig, Xavier and Fidler, Sanja and Barriuso, Adela and Torralba, Antonio},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}""",))
_PASCAL = KnownSource("Pascal-Context and Pascal-Part (PASCAL VOC 2010 images)", "https://cs.stanford.edu/~roozbeh/pascal-context/",
                      "pascal_context", ("""@inproceedings{mottaghi2014role,
  title     = {The Role of Context for Object Detection and Semantic Segmentation in the Wild},
  author    = {Mottaghi, Roozbeh and Chen, Xianjie and Liu, Xiaobai and Cho, Nam-Gyu and Lee, Seong-Whan and Fidler, Sanja and Urtasun, Raquel and Yuille, Alan},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2014}
}""", """@inproceedings{chen2014detect,
  title     = {Detect What You Can: Detecting and Representing Objects using Holistic Models and Body Parts},
  author    = {Chen, Xianjie and Mottaghi, Roozbeh and Liu, Xiaobai and Fidler, Sanja and Urtasun, Raquel and Yuille, Alan},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2014}
}"""))
_OPENSURFACES = KnownSource("OpenSurfaces", "http://opensurfaces.cs.cornell.edu/", "opensurfaces", ("""@article{bell2013opensurfaces,
  title   = {{OpenSurfaces}: A Richly Annotated Catalog of Surface Appearance},
  author  = {Bell, Sean and Upchurch, Paul and Snavely, Noah and Bala, Kavita},
  journal = {ACM Transactions on Graphics (SIGGRAPH)},
  volume  = {32},
  number  = {4},
  year    = {2013}
}""",))
_DTD = KnownSource("Describable Textures Dataset (DTD)", "https://www.robots.ox.ac.uk/~vgg/data/dtd/", "dtd", ("""@inproceedings{cimpoi14describing,
  title     = {Describing Textures in the Wild},
  author    = {Cimpoi, Mircea and Maji, Subhransu and Kokkinos, Iasonas and Mohamed, Sammy and Vedaldi, Andrea},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2014}
}""",))
#: The colour category is NetDissect's (Broden's colour names applied to the images' pixels).
NETDISSECT = KnownSource("Broden / Network Dissection (colour category)", "http://netdissect.csail.mit.edu/", "broden", ("""@inproceedings{bau2017network,
  title     = {Network Dissection: Quantifying Interpretability of Deep Visual Representations},
  author    = {Bau, David and Zhou, Bolei and Khosla, Aditya and Oliva, Aude and Torralba, Antonio},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}""",))
#: Source keys README.txt lists (the builders' default keys) -> the public dataset behind them.
#: Custom exports (folder, cvat, labelme, coco...) are the user's own: nothing to cite.
KNOWN_SOURCES = {"ade20k": _ADE20K, "pascal": _PASCAL, "opensurfaces": _OPENSURFACES, "dtd": _DTD}
#: ``license_name`` of ``license: other``: the terms are those of each source, listed in LICENSE.md.
LICENSE_NAME = "source-dataset-terms"


def known_sources(ds: ConceptDataset, source_keys: list[str]) -> list[KnownSource]:
    """The public datasets behind a dataset's sources (and its colour category), in a fixed order."""
    found = {KNOWN_SOURCES[k] for k in source_keys if k in KNOWN_SOURCES}
    if "color" in ds.category_names:
        found.add(NETDISSECT)
    return [s for s in (*KNOWN_SOURCES.values(), NETDISSECT) if s in found]


def license_text(sources: list[KnownSource], custom: list[str]) -> str:
    """LICENSE.md of a ``license: other`` dataset: whose terms apply to what."""
    lines = ["# Terms of use", "",
             "This concept dataset joins images and annotations from the sources below; each keeps its own",
             "license and terms of use, which apply to the images and labels that come from it. Read them",
             "at the links before using or redistributing the data.", ""]
    lines += [f"- {s.title}: {s.homepage}" for s in sources if s is not NETDISSECT]
    if NETDISSECT in sources:
        lines.append(f"- The `color` category follows {NETDISSECT.title}: {NETDISSECT.homepage}")
    if custom:
        lines.append("- Custom exports (" + ", ".join(f"`{k}`" for k in custom) + "): the terms of whoever owns "
                     "those images and annotations; the publisher named no license (`concepts publish --license`).")
    if not sources and not custom:
        lines.append("- The dataset's README.txt does not list its sources; ask the publisher for the terms.")
    return "\n".join(lines) + "\n"

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

Broden's `val` split is published as `validation` (`tables/index.csv` keeps `val`).

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
  stored JPEG), `ih, iw, sh, sw`, and per category its labels.
  - Pixel-level categories ({{ pixel }}): a list of label images, dominant layer first. They are
    the exact Broden PNGs (RGB, label number = R + 256 * G, 0 = unlabeled), so a viewer shows them
    nearly black; `concepts.hub.decode(row)` returns them as integer arrays.
  - Image-level categories ({{ image_level }}): a list of `ClassLabel` numbers covering the whole
    image; `ds.features["<category>"].feature.names[n]` is the name of number `n`.
{%- if mixed %}
  - Numbers that share a cell with label images are in `<category>_numbers` ({{ mixed }}).
{%- endif %}
{%- if preview %}
  - `preview`: the dominant layer of `{{ preview }}` as a palette PNG at label resolution, one
    colour per label number (0 black), for the dataset viewer. It is for the eye only (numbers
    above 255 share colours); the label images are the data.
{%- endif %}
- Pixel and image labels share one numbering (`tables/label.csv`): the table below, the
  `ClassLabel` names and `id2label.json` give the name of every number.
- Configurations {{ table_configs }}: the Broden tables as Parquet; the original CSV files
  (and README.txt, syns.txt) are in `tables/`.

## Usage

```python
from datasets import load_dataset

ds = load_dataset("{{ repo }}", split="{{ first_split }}")
row = ds[0]
```

Decode a row's label images without this package (numbers = R + 256 * G):

```python
import numpy as np

def decode(png):
    rgb = np.asarray(png.convert("RGB"), dtype=np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1]

{% if first_pixel %}masks = [decode(png) for png in row["{{ first_pixel }}"]]  # one int array per layer
{% endif %}names = load_dataset("{{ repo }}", "labels", split="train")["name"]  # or id2label.json
```

or with it: `from concepts.hub import decode; arrays = decode(row)` (one `int32` array per category:
`layers x sh x sw` for pixel-level, the numbers for image-level).

Dissect a model against it, or restore the Broden folder:

```sh
concepts dissect {{ spec }} --model resnet18 --layer layer4 -o out
concepts pull {{ spec }} -o {{ name }}
```

## Label numbers

<details>
<summary>All {{ labels|length }} labels (number, name, categories)</summary>

| number | name | categories |
|---:|---|---|
{% for l in labels -%}
| {{ l.number }} | {{ l.name }} | {{ l.categories }} |
{% endfor %}
</details>

## License

{% if license == "other" -%}
`license: other` ({{ license_name }}): every image and annotation keeps the terms of the dataset it
comes from; see [LICENSE.md](LICENSE.md).
{%- else -%}
Published under `{{ license }}` by its publisher; the images and annotations also keep the terms of
the datasets they come from.
{%- endif %}
{% for s in known %}
- {{ s.title }}: <{{ s.homepage }}>
{%- endfor %}

## Citation

{% if known -%}
Cite the datasets this one is built from:

```bibtex
{{ bibtex }}
```
{%- else -%}
Built from custom exports only: there is no source publication to cite.
{%- endif %}
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


#: The Hub's ``size_categories`` values (upper bound, value).
SIZE_CATEGORIES = ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
                   (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"),
                   (1e12, "100B<n<1T"), (float("inf"), "n>1T"))


def card_data(ds: ConceptDataset, features: Any, rows: dict[str, int], split_bytes: dict[str, int],
              options: PublishOptions, name: str) -> Any:
    """The card's YAML: license, task, tags, every configuration and the main one's features."""
    from concepts.publish import DATA_DIR, TABLES_DIR, table_parquet  # the layout is publish's

    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    n = sum(rows.values())
    size = next(s for lim, s in SIZE_CATEGORIES if n < lim)
    keys = [k for k, _ in read_build_notes(ds.root / fmt.README_FILE)[0]]
    known = known_sources(ds, keys)
    custom = [k for k in keys if k not in KNOWN_SOURCES]
    source_datasets = [f"extended|{s.hub_id}" for s in known] + (["original"] if custom or not known else [])
    other = options.license == "other"
    data = DatasetCardData(
        license=options.license, pretty_name=options.pretty_name or name, task_categories=["image-segmentation"],
        task_ids=["semantic-segmentation"], source_datasets=source_datasets,
        size_categories=[size], tags=["broden", "network-dissection", "interpretability", "concepts"],
        **({"license_name": LICENSE_NAME, "license_link": "LICENSE.md"} if other else {}),
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
    """The table configurations: ``(config name, table file)``."""
    return [("labels", fmt.LABEL_FILE), ("categories", fmt.CATEGORY_FILE), ("index", fmt.INDEX_FILE)] + [
        (f"codes_{c}", fmt.code_file(c)) for c in ds.category_names
    ]


def render_card(ds: ConceptDataset, kinds: dict[str, str], features: Any, rows: dict[str, int],
                split_bytes: dict[str, int], options: PublishOptions, name: str, preview: str | None = None,
                top: int = 20) -> tuple[str, str | None]:
    """Render the dataset card (README.md) from :data:`CARD_TEMPLATE`, and LICENSE.md for ``license: other``."""
    from huggingface_hub import DatasetCard

    from concepts import __version__

    sources, settings = read_build_notes(ds.root / fmt.README_FILE)
    labels = sorted(ds.labels.values(), key=lambda lab: (-lab.frequency, lab.number))[:top]
    repo = options.repo_id or f"<user>/{name}"
    keys = [k for k, _ in sources]
    known = known_sources(ds, keys)
    custom = [k for k in keys if k not in KNOWN_SOURCES]
    pixel = [c for c, k in kinds.items() if k != "image"]
    image_level = [c for c, k in kinds.items() if k != "pixel"]
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
        pixel=", ".join(f"`{c}`" for c in pixel) or "none",
        image_level=", ".join(f"`{c}`" for c in image_level) or "none",
        first_pixel=pixel[0] if pixel else None,
        preview=preview,
        labels=[{"number": lab.number, "name": _cell(lab.name), "categories": _cell(fmt.format_category_cell(lab.categories))}
                for _, lab in sorted(ds.labels.items())],
        license_name=LICENSE_NAME,
        known=known,
        bibtex="\n\n".join(b for s in known for b in s.bibtex),
    )
    text = license_text(known, custom) if options.license == "other" else None
    return str(card).rstrip("\n") + "\n", text
