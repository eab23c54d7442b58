"""Publishing to a Hugging Face dataset folder, loading it with `datasets`, pulling it back, the in-place backend."""

from __future__ import annotations

import io
import logging
import pickle
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from PIL import Image
from typer.testing import CliRunner

from concepts.builders.folder import FolderBuilder
from concepts import open_dataset
from concepts.broden.reader import ConceptDataset
from concepts.cli import app
from concepts.errors import DatasetFormatError, OutputExistsError, UnsafeInputError, UsageError
from concepts.hub import HubDataset, open_any, open_hf, pull
from concepts.publish import HubError, PublishOptions, parse_shard_size, publish, push
from concepts.unify import BuildOptions, build_dataset
from folder_source import solid, write_folder_source
from synth import SynthRow, write_broden

SECRET = "hf_TESTsecretTOKEN0123456789"


def _broden(root: Path) -> Path:
    """Two splits, a two-layer part category, a category mixing PNGs and numbers, awkward names."""
    rng = np.random.default_rng(1)
    labels = {1: ("red-c", "color"), 2: ("blue-c", "color"), 3: ("dog", "object"), 4: ("leg", "part"),
              5: ("head", "part"), 6: ("wood", "material"), 7: ("beach-s", "scene"), 300: ("big", "object")}
    rows = []
    for i in range(7):
        img = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
        color = rng.integers(1, 3, (12, 10))
        obj = np.where(rng.random((12, 10)) < 0.4, 3, 0)
        obj[0, 0] = 300  # a number needing the green channel
        pixel = {"color": [color], "object": [obj]}
        if i % 2 == 0:
            pixel["part"] = [np.where(obj == 3, 4, 0), np.where(rng.random((12, 10)) < 0.2, 5, 0)]
        image_level = {"scene": [7]} if i % 3 == 0 else {}
        if i == 1:
            pixel["material"] = [np.full((12, 10), 6)]
        elif i == 2:
            image_level["material"] = [6]
        name = ["plain", "with space", "Dürer ü"][i % 3] + f" {i}"
        rows.append(SynthRow(name, img, pixel, image_level, split="train" if i < 5 else "val"))
    return write_broden(root, rows, labels, ["color", "object", "part", "material", "scene"])


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broden(tmp_path_factory.mktemp("src") / "toy")


@pytest.fixture(scope="module")
def published(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pub") / "toy-hf"
    publish(src, out, PublishOptions(shard_size=parse_shard_size("3kB"), license="mit"))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("hf-cache"))


def _files(root: Path) -> dict[str, bytes]:
    # The output marker (concepts.staging.MARKER) says who wrote a folder; it is not dataset content.
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".concepts-output"}


def test_layout_and_shards(published: Path, src: Path) -> None:
    shards = sorted(p.name for p in (published / "data").iterdir())
    train = [s for s in shards if s.startswith("train-")]
    assert len(train) > 1, "a 3 kB shard size must cut the train split into several shards"
    assert train == [f"train-{i:05d}-of-{len(train):05d}.parquet" for i in range(len(train))]
    assert any(s.startswith("validation-00000-of-") for s in shards), "Broden's val is published as validation"
    assert sum(pq.ParquetFile(published / "data" / s).metadata.num_rows for s in shards) == 7
    csvs = sorted(p.name for p in (published / "tables").glob("*.csv"))
    assert csvs == sorted(["index.csv", "label.csv", "category.csv"] + [f"c_{c}.csv" for c in ("color", "object", "part", "material", "scene")])
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".")], "no temporary folder left"


def test_load_dataset_matches_source(published: Path, src: Path, cache: str) -> None:
    ds = open_dataset(src)
    loaded = datasets.load_dataset(str(published), cache_dir=cache)
    assert set(loaded) == {"train", "validation"}
    features = loaded["train"].features
    assert isinstance(features["image"], datasets.Image)
    assert isinstance(features["part"], datasets.List) and isinstance(features["part"].feature, datasets.Image)
    assert isinstance(features["scene"].feature, datasets.ClassLabel)
    assert features["scene"].feature.names[7] == "beach-s" and features["scene"].feature.names[300] == "big"
    assert features["material_numbers"].feature.int2str(6) == "wood"
    rows = {}
    for split in loaded:
        raw = loaded[split].cast_column("image", datasets.Image(decode=False))
        for cat in ("color", "object", "part", "material"):
            raw = raw.cast_column(cat, datasets.List(datasets.Image(decode=False)))
        for row in raw:
            rows[row["path"]] = (split, row)
    assert sorted(rows) == sorted(s.image for s in ds.samples)
    images = src / "images"
    for sample in ds.samples:
        split, row = rows[sample.image]
        assert split == {"val": "validation"}.get(sample.split, sample.split)
        assert (row["ih"], row["iw"], row["sh"], row["sw"]) == (sample.ih, sample.iw, sample.sh, sample.sw)
        assert row["image"]["bytes"] == (images / sample.image).read_bytes()
        for cat in ("color", "object", "part", "material"):
            assert [c["path"] for c in row[cat]] == sample.pixel_paths(cat)
            for cell in row[cat]:
                assert cell["bytes"] == (images / cell["path"]).read_bytes()
            if sample.pixel_paths(cat):
                decoded = np.stack([np.asarray(Image.open(io.BytesIO(c["bytes"]))) for c in row[cat]])
                layers = decoded[..., 0].astype(np.int32) + 256 * decoded[..., 1].astype(np.int32)
                assert np.array_equal(layers, ds.load_labels(sample, cat))
        assert row["scene"] == sample.image_labels("scene")
        assert row["material_numbers"] == sample.image_labels("material")
    assert any(row["part"] and len(row["part"]) == 2 for _, row in rows.values())


def test_decoded_labels_through_datasets(published: Path, src: Path, cache: str) -> None:
    ds = open_dataset(src)
    by_path = {s.image: s for s in ds.samples}
    for row in datasets.load_dataset(str(published), split="validation", cache_dir=cache):
        sample = by_path[row["path"]]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), ds.load_image(sample))
        obj = np.asarray(row["object"][0]).astype(np.int32)
        assert np.array_equal(obj[..., 0] + 256 * obj[..., 1], ds.load_labels(sample, "object")[0])


def test_table_configs_load(published: Path, src: Path, cache: str) -> None:
    ds = open_dataset(src)
    labels = datasets.load_dataset(str(published), "labels", split="train", cache_dir=cache)
    assert [(r["number"], r["name"], r["frequency"]) for r in labels] == [(n, l.name, l.frequency) for n, l in sorted(ds.labels.items())]
    assert labels[0]["syns"] == ""
    cats = datasets.load_dataset(str(published), "categories", split="train", cache_dir=cache)
    assert [r["name"] for r in cats] == ds.category_names
    index = datasets.load_dataset(str(published), "index", split="train", cache_dir=cache)
    assert [r["image"] for r in index] == [s.image for s in ds.samples]
    assert [r["part"] for r in index] == [";".join(s.cells.get("part", ())) for s in ds.samples]
    codes = datasets.load_dataset(str(published), "codes_object", split="train", cache_dir=cache)
    assert {r["number"]: r["code"] for r in codes} == ds.codes["object"]


def test_card(published: Path) -> None:
    card = DatasetCard.load(published / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit" and "license_name" not in data
    assert data["task_categories"] == ["image-segmentation"] and data["task_ids"] == ["semantic-segmentation"]
    configs = {c["config_name"]: c for c in data["configs"]}
    assert configs["default"]["default"] is True
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}]
    assert configs["labels"]["data_files"][0]["path"] == "tables/label.parquet"
    assert {f["name"] for f in data["dataset_info"]["features"]} >= {"image", "path", "color", "part", "scene"}
    assert {s["name"]: s["num_examples"] for s in data["dataset_info"]["splits"]} == {"train": 5, "validation": 2}
    text = card.text
    assert "| part | pixel | 2 |" in text and "| material | pixel+image | 1 |" in text
    assert "| 300 | big |" in text
    assert "concepts dissect hf://<user>/toy-hf --model resnet18 --layer layer4 -o out" in text


def test_card_lists_sources_and_recipe(tmp_path: Path) -> None:
    source = write_folder_source(
        tmp_path / "a", {f"im{i}.jpg": solid(16, 16, (255, 0, 0)) for i in range(3)},
        {"object": {f"im{i}.jpg": np.pad(np.ones((8, 8), np.uint8), 4) for i in range(3)}}, {("object", 1): ["dog"]},
    )
    build_dataset([FolderBuilder(source)], tmp_path / "built", BuildOptions(workers=1, min_frequency=2))
    publish(tmp_path / "built", tmp_path / "hf", PublishOptions(repo_id="me/built", pretty_name="Built | test"))
    text = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert re.search(r"\| folder \| 3 \|", text), "sources from README.txt"
    assert "| min_frequency | `2` |" in text and "| dog |" in text and "| Files |" not in text
    assert "# Built \\| test" in text
    assert "concepts dissect hf://me/built --model resnet18 --layer layer4 -o out" in text
    back = pull(tmp_path / "hf", tmp_path / "back")
    assert {"README.txt", "syns.txt"} <= set(_files(back)) and _files(back) == _files(tmp_path / "built")


def test_pull_round_trip_is_byte_for_byte(published: Path, src: Path, tmp_path: Path) -> None:
    out = pull(published, tmp_path / "back")
    assert _files(out) == _files(src)
    with pytest.raises(OutputExistsError):
        pull(published, out)
    (out / "index.csv").write_text("damaged")
    pull(published, out, overwrite=True)
    assert _files(out) == _files(src)


def test_cli_publish_and_pull(src: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["publish", str(src), "-o", str(tmp_path / "hf"), "--shard-size", "1MB"])
    assert result.exit_code == 0, result.output
    assert "7 images" in result.output and "train: 5 in 1 shard(s)" in result.output and " kB to " in result.output
    again = runner.invoke(app, ["publish", str(src), "-o", str(tmp_path / "hf")])
    assert again.exit_code == 1 and "output already exists" in again.output and "Traceback" not in again.output
    result = runner.invoke(app, ["pull", str(tmp_path / "hf"), "-o", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "back") == _files(src)
    bad = runner.invoke(app, ["publish", str(src), "-o", str(tmp_path / "x"), "--shard-size", "lots"])
    assert bad.exit_code == 2 and "--shard-size 'lots'" in bad.output
    assert not (tmp_path / "x").exists()


def test_backend_reads_like_the_broden_reader(published: Path, src: Path) -> None:
    ref = ConceptDataset(src)
    hub = open_hf(published)
    assert isinstance(hub, HubDataset)
    assert hub.categories == ref.categories and hub.labels == ref.labels and hub.codes == ref.codes
    assert hub.samples == ref.samples
    assert hub.category_names == ref.category_names and hub.num_labels == ref.num_labels == 301
    assert hub.label_names() == ref.label_names()
    assert np.array_equal(hub.primary_categories(), ref.primary_categories())
    assert np.array_equal(hub.primary_categories(["object", "part"]), ref.primary_categories(["object", "part"]))
    assert hub.fingerprint() == ref.fingerprint()
    for sample in ref.samples:
        assert np.array_equal(hub.load_image(sample), ref.load_image(sample))
        assert hub.image_bytes(sample) == ref.image_path(sample).read_bytes()
        for cat in ref.category_names:
            expected, got = ref.load_labels(sample, cat), hub.load_labels(sample, cat)
            if isinstance(expected, list):
                assert got == expected
            else:
                assert got.dtype == expected.dtype and np.array_equal(got, expected)
    clone = pickle.loads(pickle.dumps(hub))
    assert np.array_equal(clone.load_labels(ref.samples[-1], "object"), ref.load_labels(ref.samples[-1], "object"))
    with pytest.raises(DatasetFormatError, match="inside Parquet shards"):
        hub.image_path(ref.samples[0])


def test_open_any(published: Path, src: Path, tmp_path: Path) -> None:
    assert type(open_any(src)) is ConceptDataset
    assert type(open_any(str(published))) is HubDataset
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="neither a Broden folder"):
        open_any(tmp_path / "empty")
    with pytest.raises(DatasetFormatError, match="no such dataset folder"):
        open_any(tmp_path / "missing")
    with pytest.raises(UsageError, match="not a Hub dataset id"):
        open_any("hf://just-a-name")


def test_hf_spec_offline_fails_clearly(tmp_path: Path) -> None:
    # A closed local port stands in for "no network": the download fails at once.
    with pytest.raises(HubError) as err:
        open_any("hf://me/toy@main", endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "c")
    message = str(err.value)
    assert message.startswith("hf://me/toy@main: cannot download dataset me/toy from the Hub")
    assert "\n" not in message
    with pytest.raises(HubError):
        pull("hf://me/toy", tmp_path / "out", endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "c")
    assert not (tmp_path / "out").exists()


class FakeApi:
    """Records the Hub calls a push makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs) -> str:
        self.calls.append(("upload_folder", {**kwargs, "files": sorted(_files(Path(kwargs["folder_path"])))}))
        return "commit"


def test_push_with_injected_api(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    api = FakeApi()
    with caplog.at_level(logging.DEBUG):
        summary = publish(src, tmp_path / "hf", PublishOptions(repo_id="me/toy", push=True, private=True), api=api)
    assert summary.url == "https://huggingface.co/datasets/me/toy"
    (name, create), (name2, upload) = api.calls
    assert name == "create_repo" and create == {"repo_id": "me/toy", "repo_type": "dataset", "private": True,
                                                "exist_ok": True, "token": SECRET}
    assert name2 == "upload_folder" and upload["repo_id"] == "me/toy" and upload["repo_type"] == "dataset"
    assert Path(upload["folder_path"]) == tmp_path / "hf" and upload["token"] == SECRET
    assert "README.md" in upload["files"] and "tables/label.csv" in upload["files"]
    assert "hf://me/toy" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert all(SECRET.encode() not in data for data in _files(tmp_path / "hf").values())
    assert SECRET not in caplog.text


def test_push_without_token_fails_in_one_line(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    result = CliRunner().invoke(app, ["publish", str(src), "-o", str(tmp_path / "hf"), "--push", "me/toy"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no Hugging Face token; nothing was uploaded" in lines[0] and "HF_TOKEN" in lines[0]
    assert _files(tmp_path / "hf" / "tables")["label.csv"] == (src / "label.csv").read_bytes(), "local output intact"
    assert type(open_any(tmp_path / "hf")) is HubDataset
    assert f"concepts publish {tmp_path / 'hf'} --push me/toy" in lines[0], "the hint says how to retry the upload"
    retry = CliRunner().invoke(app, ["publish", str(tmp_path / "hf"), "--push", "me/toy"])
    assert retry.exit_code == 1 and "no Hugging Face token" in retry.output
    no_output = CliRunner().invoke(app, ["publish", str(src)])
    assert no_output.exit_code == 2 and "missing --output" in no_output.output


def test_push_without_network_keeps_output_and_hides_token(published: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = _files(published)
    with caplog.at_level(logging.DEBUG), pytest.raises(HubError) as err:
        push(published, "me/toy", token=SECRET, endpoint="http://127.0.0.1:9")
    message = str(err.value)
    assert "upload to me/toy failed" in message and "the local folder is intact" in message and "\n" not in message
    assert SECRET not in message and SECRET not in caplog.text
    assert _files(published) == before


def test_pull_refuses_paths_escaping_images(published: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    for p in published.rglob("*"):
        if p.is_file():
            (evil / p.relative_to(published)).parent.mkdir(parents=True, exist_ok=True)
            (evil / p.relative_to(published)).write_bytes(p.read_bytes())
    shard = sorted((evil / "data").glob("validation-*.parquet"))[0]
    table = pq.read_table(shard)
    cells = table.column("image").to_pylist()
    cells[0]["path"] = "../../escaped.jpg"
    import pyarrow as pa

    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(cells, table.schema.field("image").type))
    pq.write_table(table, shard)
    with pytest.raises(UnsafeInputError, match="unsafe image path '../../escaped.jpg'"):
        pull(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.jpg").exists() and not (tmp_path / "out").exists()


def test_pull_detects_missing_rows(published: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    for p in published.rglob("*"):
        if p.is_file() and not p.name.startswith("validation-"):
            (partial / p.relative_to(published)).parent.mkdir(parents=True, exist_ok=True)
            (partial / p.relative_to(published)).write_bytes(p.read_bytes())
    with pytest.raises(DatasetFormatError, match="not in the Parquet shards"):
        pull(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DatasetFormatError, match="have no Parquet row"):
        open_hf(partial)


def test_parse_shard_size() -> None:
    assert parse_shard_size("500MB") == 500 * 10**6
    assert parse_shard_size("64MiB") == 64 * 2**20
    assert parse_shard_size("1000") == 1000
    for bad in ("", "-1MB", "0", "5 parsecs"):
        with pytest.raises(UsageError):
            parse_shard_size(bad)
