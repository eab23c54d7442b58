"""Issue 16, "the published dataset, as the Hub expects a segmentation dataset".

A user with only ``datasets`` (no import of this package) reads label names from the features and
decodes a mask with the two-line R + 256 * G rule; the split is ``validation``; ``decode()`` and the
``preview`` column; the card's YAML parses back through huggingface_hub and datasets with every
field the Hub reads; citations per source.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
from huggingface_hub import DatasetCard, DatasetCardData, RepoCard
from PIL import Image

from concepts.broden.reader import ConceptDataset
from concepts.hub import decode, pull
from concepts.publish import PublishOptions, publish
from hostile import assert_no_leftovers, assert_one_error, invoke
from synth import SynthRow, write_broden

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The values huggingface.co accepts for ``size_categories`` (its dataset-card metadata spec).
HUB_SIZES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
             "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}


def _rg(path: Path) -> np.ndarray:
    """An independent decoder: label = R + 256 * G."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1]


def _planted(root: Path, readme_sources: dict[str, int] | None = None, *, color: bool = True) -> Path:
    """Six images, val and train; object masks hold number 300 (green channel) at a known pixel."""
    labels = {1: ("red-c", "color"), 3: ("dog", "object"), 7: ("beach-s", "scene"), 300: ("big thing", "object")}
    rows = []
    for i in range(6):
        obj = np.zeros((8, 6), np.int64)
        obj[:4] = 3
        obj[i % 8, 5] = 300
        pixel = {"object": [obj]}
        if color:
            pixel["color"] = [np.ones((8, 6), np.int64)]
        rows.append(SynthRow(f"im {i}", np.full((16, 12, 3), 40 * i, np.uint8), pixel,
                             {"scene": [7]} if i % 2 else {}, split="val" if i < 2 else "train"))
    cats = (["color"] if color else []) + ["object", "scene"]
    if not color:
        labels.pop(1)
    root = write_broden(root, rows, labels, cats)
    if readme_sources is not None:
        lines = ["t", "=", "", "Joins the following data sets:"] + [f"    {k}: {n} images" for k, n in readme_sources.items()]
        (root / "README.txt").write_text("\n".join(lines + ["", "size: (16, 12)", ""]), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The README's example (the CVAT and LabelMe exports in examples/), built small and published."""
    work = tmp_path_factory.mktemp("example")
    out = invoke(["build", "--from", str(EXAMPLES / "cvat_export"), "--from", str(EXAMPLES / "labelme_export"),
                  "--concepts", str(EXAMPLES / "concepts.yaml"), "--size", "64", "-o", str(work / "ex")])
    assert out.code == 0, out.stderr
    assert invoke(["publish", str(work / "ex"), "-o", str(work / "ex-hf")]).code == 0
    return work / "ex", work / "ex-hf"


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("planted")
    src = _planted(work / "src", {"ade20k": 2, "pascal": 1, "opensurfaces": 1, "dtd": 1, "mine": 1})
    publish(src, work / "hf", PublishOptions(preview="object"))
    return src, work / "hf"


PLAIN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import datasets

    folder, cache = sys.argv[1], sys.argv[2]
    ds = datasets.load_dataset(folder, split="validation", cache_dir=cache)
    row = ds[0]
    rgb = np.asarray(row["object"][0].convert("RGB"), dtype=np.int64)
    mask = rgb[..., 0] + 256 * rgb[..., 1]
    names = ds.features["scene"].feature.names
    streamed = next(iter(datasets.load_dataset(folder, split="train", streaming=True)))
    assert not [m for m in sys.modules if m == "concepts" or m.startswith("concepts.")], "imported concepts"
    print(json.dumps({"path": row["path"], "mask": mask.tolist(), "scene_names": names,
                      "splits": sorted(datasets.get_dataset_split_names(folder)),
                      "preview": row["preview"].mode, "streamed": streamed["path"]}))
""")


def _plain(folder: Path, tmp_path: Path) -> dict:
    """Run PLAIN in a fresh interpreter whose cwd is not the repository."""
    done = subprocess.run([sys.executable, "-c", PLAIN, str(folder), str(tmp_path / "cache")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plain_datasets_reads_names_and_masks_of_the_example(example: tuple[Path, Path], tmp_path: Path) -> None:
    src, hf = example
    got = _plain(hf, tmp_path)
    assert got["splits"] == ["train", "validation"]
    index = {s.image: s for s in ConceptDataset(src).samples}
    sample = index[got["path"]]
    assert sample.split == "val", "index.csv keeps Broden's val; the Hub calls it validation"
    assert np.array_equal(np.asarray(got["mask"]), _rg(src / "images" / sample.pixel_paths("object")[0]))
    labels = {int(r.split(",")[0]): r.split(",")[1] for r in (src / "label.csv").read_text().splitlines()[1:]}
    scene = [n for n, name in labels.items() if name in got["scene_names"] and n > 0]
    assert scene and all(got["scene_names"][n] == labels[n] for n in scene)
    assert got["preview"] == "P" and got["streamed"] in index


def test_plain_datasets_planted_numbers(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, hf = planted
    got = _plain(hf, tmp_path)
    mask = np.asarray(got["mask"])
    assert got["scene_names"][7] == "beach-s" and got["scene_names"][300] == "big thing"
    assert (mask == 300).sum() == 1 and set(np.unique(mask)) == {0, 3, 300}, "300 needs the green channel"
    assert got["path"] in {"synth/im 0.jpg", "synth/im 1.jpg"}, "the first validation row is a planted val image"
    assert np.array_equal(mask, _rg(src / "images" / ConceptDataset(src).samples[int(got["path"][-5])].pixel_paths("object")[0]))


def test_decode_matches_the_broden_pngs(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, hf = planted
    ref = {s.image: s for s in ConceptDataset(src).samples}
    ds = datasets.load_dataset(str(hf), split="train", cache_dir=str(tmp_path / "c"))
    raw = ds.cast_column("object", datasets.List(datasets.Image(decode=False)))
    for row, raw_row in zip(ds, raw):
        sample = ref[row["path"]]
        for arrays in (decode(row), decode(raw_row)):
            assert arrays["object"].dtype == np.int32 and arrays["object"].shape == (1, 8, 6)
            assert np.array_equal(arrays["object"][0], _rg(src / "images" / sample.pixel_paths("object")[0]))
            assert arrays["scene"].tolist() == sample.image_labels("scene")
            assert "preview" not in arrays and "image" not in arrays


def test_preview_draws_the_chosen_category(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, hf = planted
    ds = datasets.load_dataset(str(hf), split="validation", cache_dir=str(tmp_path / "c"))
    for row in ds:
        index = np.asarray(row["preview"])
        truth = decode(row)["object"][0]
        assert np.array_equal(index > 0, truth > 0)
        # Palette colours: number n -> entry 1 + (n - 1) % 255, so 3 and 300 (entry 45) differ.
        assert set(np.unique(index[truth == 3])) == {3} and set(np.unique(index[truth == 300])) == {45}


def test_split_names_round_trip(planted: tuple[Path, Path], tmp_path: Path) -> None:
    src, hf = planted
    assert sorted(p.name.split("-")[0] for p in (hf / "data").glob("*.parquet")) == ["train", "validation"]
    back = pull(hf, tmp_path / "back")
    assert (back / "index.csv").read_bytes() == (src / "index.csv").read_bytes()
    assert ",val," in (back / "index.csv").read_text()


def test_split_clash_is_one_line(tmp_path: Path) -> None:
    src = _planted(tmp_path / "src")
    index = src / "index.csv"
    index.write_text(index.read_text().replace(",train,", ",validation,", 1))
    out = invoke(["publish", str(src), "-o", str(tmp_path / "hf")])
    assert_one_error(out, "index.csv", "'val' and 'validation' would both be published as 'validation'", code=2)
    assert not (tmp_path / "hf").exists()
    assert_no_leftovers(tmp_path)


def test_preview_option(tmp_path: Path) -> None:
    src = _planted(tmp_path / "src")
    out = invoke(["publish", str(src), "-o", str(tmp_path / "hf"), "--preview", "scene"])
    assert_one_error(out, "category.csv", "--preview 'scene' is not a pixel-level category", code=2)
    assert invoke(["publish", str(src), "-o", str(tmp_path / "hf"), "--preview", "none"]).code == 0
    features = DatasetCard.load(tmp_path / "hf" / "README.md").data.to_dict()["dataset_info"]["features"]
    assert "preview" not in {f["name"] for f in features}


def _card(hf: Path) -> tuple[dict, str]:
    card = RepoCard.load(hf / "README.md", repo_type="dataset")
    return card.data.to_dict(), card.text


def test_card_yaml_validates_offline(planted: tuple[Path, Path]) -> None:
    """What is checked: the YAML parses as huggingface_hub card data, survives a DatasetCardData round
    trip unchanged, holds every field the Hub's dataset metadata reads with values from the Hub's
    lists, points license_link at a file in the repo, and its configs and features parse back
    through datasets into the features the loader uses (ClassLabel names included)."""
    src, hf = planted
    data, text = _card(hf)
    assert isinstance(DatasetCard.load(hf / "README.md").data, DatasetCardData)
    assert DatasetCardData(**data).to_dict() == data
    assert data["license"] == "other" and re.fullmatch(r"[a-z0-9][a-z0-9-]*", data["license_name"])
    assert (hf / data["license_link"]).is_file()
    assert data["task_categories"] == ["image-segmentation"] and data["task_ids"] == ["semantic-segmentation"]
    assert set(data["size_categories"]) <= HUB_SIZES and data["size_categories"] == ["n<1K"]
    assert data["source_datasets"] == ["extended|ade20k", "extended|pascal_context", "extended|opensurfaces",
                                       "extended|dtd", "extended|broden", "original"]
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    card_data = DatasetCard.load(hf / "README.md").data
    configs = MetadataConfigs.from_dataset_card_data(card_data)
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"},
                                                {"split": "validation", "path": "data/validation-*"}]
    features = DatasetInfosDict.from_dataset_card_data(card_data)["default"].features
    assert features["scene"].feature.names[7] == "beach-s" and features["scene"].feature.num_classes == 301
    for heading in ("## Recipe", "## Categories", "## Label numbers", "## License", "## Citation"):
        assert heading in text
    assert "| 300 | big thing | object(6) |" in text


def test_card_cites_every_source(planted: tuple[Path, Path]) -> None:
    _, hf = planted
    _, text = _card(hf)
    bibtex = text.split("```bibtex", 1)[1].split("```", 1)[0]
    keys = re.findall(r"@\w+\{([^,]+),", bibtex)
    assert keys == ["zhou2017scene", "mottaghi2014role", "chen2014detect", "bell2013opensurfaces",
                    "cimpoi14describing", "bau2017network"]
    license_md = (hf / "LICENSE.md").read_text(encoding="utf-8")
    for site in ("ADE20K", "pascal-context", "opensurfaces", "dtd", "netdissect", "`mine`"):
        assert site.lower() in license_md.lower()


def test_custom_export_cites_nothing_and_spdx_license(tmp_path: Path) -> None:
    src = _planted(tmp_path / "src", {"cvat": 6}, color=False)
    publish(src, tmp_path / "hf", PublishOptions(license="cc-by-4.0"))
    data, text = _card(tmp_path / "hf")
    assert data["license"] == "cc-by-4.0" and "license_name" not in data and "license_link" not in data
    assert data["source_datasets"] == ["original"]
    assert "there is no source publication to cite" in text and "```bibtex" not in text
    assert not (tmp_path / "hf" / "LICENSE.md").exists()
    assert json.loads((tmp_path / "hf" / "id2label.json").read_text())["300"] == "big thing"


def test_repeated_and_missing_names_still_give_class_labels(tmp_path: Path) -> None:
    rows = [SynthRow("a", np.zeros((8, 8, 3), np.uint8), {"object": [np.full((4, 4), 2)]}, {"scene": [5]}),
            SynthRow("b", np.zeros((8, 8, 3), np.uint8), {"object": [np.full((4, 4), 3)]}, {"scene": [6]}, split="val")]
    labels = {2: ("dog", "object"), 3: ("dog", "object"), 5: ("#4", "scene"), 6: ("#4#6", "scene")}
    src = write_broden(tmp_path / "src", rows, labels, ["object", "scene"])
    publish(src, tmp_path / "hf", PublishOptions())
    features = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "c")).features
    names = features["scene"].feature.names
    assert len(set(names)) == len(names) == 7
    assert names[2] == "dog" and names[3] == "dog#3", "a repeated name gets its number"
    assert names[4] == "#4" and names[5] == "#4#5" and names[6] == "#4#6", "unused numbers never steal a real name"
    assert pull(tmp_path / "hf", tmp_path / "back") and (tmp_path / "back" / "label.csv").read_bytes() == (src / "label.csv").read_bytes()


def test_undecodable_label_png_still_publishes_without_its_preview(tmp_path: Path) -> None:
    src = _planted(tmp_path / "src")
    sample = ConceptDataset(src).samples[0]
    bad = src / "images" / sample.pixel_paths("object")[0]
    Image.fromarray(np.zeros((8, 6), np.uint8), mode="L").save(bad)  # grey, not RG: no preview possible
    publish(src, tmp_path / "hf", PublishOptions(preview="object"))
    back = pull(tmp_path / "hf", tmp_path / "back")
    assert (back / "images" / sample.pixel_paths("object")[0]).read_bytes() == bad.read_bytes()
