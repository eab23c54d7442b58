"""The unifier: numbering, merging, filters, resizing, split, determinism and safe output."""

from __future__ import annotations

import filecmp
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts.builders.base import Builder, Detection
from concepts.builders.folder import FolderBuilder
from concepts import open_dataset
from concepts.broden.format import split_hash
from concepts.errors import OutputExistsError, SourceItemError
from concepts.records import Record
from concepts.unify import BuildOptions, build_dataset, output_stem
from folder_source import solid, write_folder_source

RED = (255, 0, 0)


def square(h: int, w: int, top: int, left: int, side: int, value: int) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    out[top : top + side, left : left + side] = value
    return out


@pytest.fixture
def source_a(tmp_path: Path) -> Path:
    images = {f"im{i}.jpg": solid(40, 40, RED) for i in range(4)}
    masks = {}
    for i in range(4):
        m = square(40, 40, 0, 0, 20, 1)
        if i < 2:
            m[30:40, 30:40] = 2
        masks[f"im{i}.jpg"] = m
    return write_folder_source(
        tmp_path / "a",
        images,
        {"object": masks},
        {("object", 1): ["dog"], ("object", 2): ["cat"]},
        tags=[("im0.jpg", "scene", "beach-s")],
    )


def build(sources, out: Path, **kw) -> Path:
    kw.setdefault("workers", 1)
    build_dataset(sources, out, BuildOptions(**kw))
    return out


def test_numbering_by_frequency_then_coverage(source_a: Path, tmp_path: Path) -> None:
    ds = open_dataset(build([FolderBuilder(source_a)], tmp_path / "out"))
    names = {n: lab.name for n, lab in ds.labels.items()}
    assert names == {1: "red-c", 2: "dog", 3: "cat", 4: "beach-s"}
    assert ds.labels[2].categories == {"object": 4}
    assert ds.labels[2].coverage == pytest.approx(1.0)
    assert ds.labels[3].frequency == 2 and ds.labels[3].coverage == pytest.approx(0.125)
    assert ds.category_names == ["color", "object", "scene"]
    assert [(c.first, c.last, c.count, c.frequency) for c in ds.categories] == [(1, 1, 1, 4), (2, 3, 2, 6), (4, 4, 1, 1)]


def test_round_trip_label_arrays(source_a: Path, tmp_path: Path) -> None:
    ds = open_dataset(build([FolderBuilder(source_a)], tmp_path / "out"))
    by_name = {Path(s.image).stem: s for s in ds}
    for i in range(4):
        sample = by_name[f"im{i}"]
        expected = square(40, 40, 0, 0, 20, 2).astype(np.int32)
        if i < 2:
            expected[30:40, 30:40] = 3
        got = ds.load_labels(sample, "object")
        assert got.shape == (1, 40, 40) and got.dtype == np.int32
        np.testing.assert_array_equal(got[0], expected)
        np.testing.assert_array_equal(ds.load_labels(sample, "color"), np.ones((1, 40, 40)))
        assert ds.load_labels(sample, "scene") == ([4] if i == 0 else [])
        assert (sample.ih, sample.iw, sample.sh, sample.sw) == (40, 40, 40, 40)
    assert ds.load_image(by_name["im0"]).shape == (40, 40, 3)


def test_equal_statistics_tie_break_by_name(tmp_path: Path) -> None:
    src = write_folder_source(
        tmp_path / "s",
        {"a.jpg": solid(10, 10, RED)},
        {"object": {"a.jpg": np.array([[1] * 5 + [2] * 5] * 10)}},
        {("object", 1): ["cow"], ("object", 2): ["ant"]},
    )
    ds = open_dataset(build([FolderBuilder(src)], tmp_path / "out"))
    assert [ds.labels[n].name for n in (2, 3)] == ["ant", "cow"]


def test_names_merge_across_sources_and_categories(source_a: Path, tmp_path: Path) -> None:
    b = write_folder_source(
        tmp_path / "b",
        {"x.jpg": solid(40, 40, RED)},
        {
            "part": {"x.jpg": square(40, 40, 0, 0, 10, 1)},
            "object": {"x.jpg": square(40, 40, 20, 20, 10, 5)},
        },
        {("part", 1): ["dog"], ("object", 5): ["cat", "kitty"]},
    )
    ds = open_dataset(build([FolderBuilder(source_a), FolderBuilder(b)], tmp_path / "out"))
    dog = [lab for lab in ds.labels.values() if lab.name == "dog"]
    assert len(dog) == 1 and dog[0].categories == {"object": 4, "part": 1}
    # "cat" was claimed by source a's more frequent label; b's label still owns "kitty" and keeps it.
    assert {lab.name for lab in ds.labels.values()} >= {"cat", "kitty"}
    sample = next(s for s in ds if s.image.startswith("folder-2/"))
    part = ds.load_labels(sample, "part")[0]
    assert set(np.unique(part)) == {0, dog[0].number}
    assert ds.labels[dog[0].number].primary == "object"


def test_label_with_only_claimed_names_merges_into_owner(tmp_path: Path) -> None:
    a = write_folder_source(
        tmp_path / "a",
        {f"{i}.jpg": solid(10, 10, RED) for i in range(3)},
        {"object": {f"{i}.jpg": square(10, 10, 0, 0, 5, 1) for i in range(3)}},
        {("object", 1): ["person", "individual"]},
    )
    b = write_folder_source(
        tmp_path / "b",
        {"0.jpg": solid(10, 10, RED)},
        {"object": {"0.jpg": square(10, 10, 0, 0, 5, 7) + square(10, 10, 5, 5, 5, 8)}},
        {("object", 7): ["individual"], ("object", 8): ["human", "person"]},
    )
    ds = open_dataset(build([FolderBuilder(a), FolderBuilder(b)], tmp_path / "out"))
    person = next(lab for lab in ds.labels.values() if lab.name == "person")
    human = next(lab for lab in ds.labels.values() if lab.name == "human")
    assert person.categories == {"object": 4} and "individual" in person.syns
    assert human.frequency == 1
    sample = next(s for s in ds if s.image.startswith("folder-2/"))
    layer = ds.load_labels(sample, "object")[0]
    assert layer[0, 0] == person.number and layer[9, 9] == human.number


def test_filters_drop_rare_labels_to_unlabeled(source_a: Path, tmp_path: Path) -> None:
    ds = open_dataset(build([FolderBuilder(source_a)], tmp_path / "out", min_frequency=3, min_coverage=0.5))
    assert [lab.name for lab in ds.labels.values()] == ["red-c", "dog"]
    assert "scene" not in ds.category_names
    for sample in ds:
        assert set(np.unique(ds.load_labels(sample, "object"))) == {0, 2}


def test_resizing_images_and_segmentations(source_a: Path, tmp_path: Path) -> None:
    ds = open_dataset(build([FolderBuilder(source_a)], tmp_path / "out", size=(20, 30)))
    sample = next(s for s in ds if s.image.endswith("im0.jpg"))
    assert (sample.ih, sample.iw, sample.sh, sample.sw) == (20, 30, 10, 15)
    with Image.open(ds.image_path(sample)) as im:
        assert im.size == (30, 20)
    rows = ((np.arange(10) + 0.5) * 4).astype(int)
    cols = ((np.arange(15) + 0.5) * 40 / 15).astype(int)
    src = square(40, 40, 0, 0, 20, 2).astype(np.int32)
    src[30:, 30:] = 3
    np.testing.assert_array_equal(ds.load_labels(sample, "object")[0], src[np.ix_(rows, cols)])
    ds2 = open_dataset(build([FolderBuilder(source_a)], tmp_path / "out2", size=(20, 20), seg_size=(5, 5)))
    assert {(s.sh, s.sw) for s in ds2} == {(5, 5)}


def test_split_follows_md5_rule_and_rows_are_hash_ordered(source_a: Path, tmp_path: Path) -> None:
    ds = open_dataset(build([FolderBuilder(source_a)], tmp_path / "out", splits=[("train", 0.5), ("val", 0.5)]))
    hashes = [split_hash(s.image) for s in ds]
    assert hashes == sorted(hashes)
    assert [s.split for s in ds] == ["train" if h <= 0.5 else "val" for h in hashes]


def test_output_identical_for_any_worker_count(source_a: Path, tmp_path: Path) -> None:
    one = build([FolderBuilder(source_a)], tmp_path / "w1" / "out", size=(16, 16), workers=1)
    two = build([FolderBuilder(source_a)], tmp_path / "w2" / "out", size=(16, 16), workers=2)
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(one, two, files, shallow=False)
    assert mismatch == [] and errors == []


class _Layered(Builder):
    """Two overlapping part layers and an image that fails on demand."""

    NAME = "test-layered"

    @classmethod
    def detect(cls, path: Path) -> Detection:
        return Detection.missing("never")

    def items(self) -> list[int]:
        return list(range(int(self.options.get("n", 3))))

    def load(self, item: int) -> Record:
        time.sleep(self.options.get("sleep", 0))
        if item == self.options.get("interrupt_at"):
            raise KeyboardInterrupt
        if item == self.options.get("corrupt_at"):
            return Record(key=f"img{item}", image=b"not an image")
        top = np.zeros((8, 8), np.int32)
        top[:4] = 1
        under = np.zeros((8, 8), np.int32)
        under[:, :4] = 2
        return Record(
            key=f"sub dir/img {item}.png",
            image=solid(8, 8, RED),
            pixel={"part": [top, under]},
            names={("part", 1): ("wheel",), ("part", 2): ("door",)},
        )


def test_multi_layer_cells(tmp_path: Path) -> None:
    ds = open_dataset(build([_Layered(tmp_path / "in")], tmp_path / "out"))
    sample = ds[0]
    assert sample.pixel_paths("part") == [f"test-layered/sub_dir__img_{sample.image[-5]}_part_{n}.png" for n in (1, 2)]
    layers = ds.load_labels(sample, "part")
    assert layers.shape == (2, 8, 8)
    wheel = next(n for n, lab in ds.labels.items() if lab.name == "wheel")
    door = next(n for n, lab in ds.labels.items() if lab.name == "door")
    assert (layers[0][:4] == wheel).all() and (layers[0][4:] == 0).all()
    assert (layers[1][:, :4] == door).all() and (layers[1][:, 4:] == 0).all()


def test_corrupt_item_is_skipped_or_fails_under_strict(tmp_path: Path) -> None:
    summary = build_dataset([_Layered(tmp_path / "in", {"corrupt_at": 1})], tmp_path / "out", BuildOptions(workers=1))
    assert summary.skipped == {"unreadable image": 1} and summary.images == {"test-layered": 2}
    with pytest.raises(SourceItemError, match="cannot decode image"):
        build_dataset([_Layered(tmp_path / "in", {"corrupt_at": 1})], tmp_path / "strict", BuildOptions(workers=1, strict=True))
    assert not (tmp_path / "strict").exists()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_interrupted_build_leaves_nothing_and_keeps_previous_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_dataset([_Layered(tmp_path / "in", {"interrupt_at": 2})], out, BuildOptions(workers=1))
    assert not out.exists() and _leftovers(tmp_path) == []
    build([_Layered(tmp_path / "in", {"n": 2})], out)
    before = (out / "index.csv").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        build_dataset([_Layered(tmp_path / "in", {"interrupt_at": 2})], out, BuildOptions(workers=1, overwrite=True))
    assert (out / "index.csv").read_bytes() == before and _leftovers(tmp_path) == []


def test_interrupt_with_worker_processes(tmp_path: Path) -> None:
    # Ctrl-C reaches the parent while workers are busy; the pool goes and nothing is left behind.
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            build_dataset([_Layered(tmp_path / "in", {"n": 200, "sleep": 0.05})], tmp_path / "out", BuildOptions(workers=2))
    finally:
        timer.cancel()
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_existing_output_is_refused_without_overwrite(source_a: Path, tmp_path: Path) -> None:
    out = build([FolderBuilder(source_a)], tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        build([FolderBuilder(source_a)], out)
    build([FolderBuilder(source_a)], out, overwrite=True, color=False)
    assert "color" not in open_dataset(out).category_names


@pytest.mark.parametrize(
    ("key", "stem"),
    [("training/abbey/ADE_1.jpg", "training__abbey__ADE_1"), ("Café au lait.png", "Cafe_au_lait"), ("../x/./y", "x__y"), ("a.b", "a.b")],
)
def test_output_stem_is_ascii_and_path_derived(key: str, stem: str) -> None:
    assert output_stem(key) == stem


# -- speed paths: each must give exactly what the plain computation gives -------------------------


def test_color_ids_from_image_and_array_match_the_table() -> None:
    from concepts.colors import color_ids, color_table

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    # Every quantised colour once, at both ends of its 8-value bin.
    q = np.stack(np.meshgrid(*[np.arange(32, dtype=np.uint8)] * 3, indexing="ij"), -1).reshape(256, 128, 3) * 8
    for rgb in (pixels, q, q + 7):
        expected = color_table()[(rgb[..., 0] >> 3).astype(int) * 1024 + (rgb[..., 1] >> 3).astype(int) * 32 + (rgb[..., 2] >> 3)]
        assert np.array_equal(color_ids(rgb), expected)
        assert np.array_equal(color_ids(Image.fromarray(rgb)), expected)
    with pytest.raises(ValueError, match="H x W x 3"):
        color_ids(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_label_counts_match_unique(dtype) -> None:
    from concepts.labelcount import label_counts, present_ids

    rng = np.random.default_rng(4)
    top = 255 if dtype == np.uint8 else 3000
    layer = rng.integers(0, top + 1, (61, 47)).astype(dtype)
    layer[:5] = 0
    ids, counts = np.unique(layer, return_counts=True)
    got_ids, got_counts = label_counts(layer)
    assert got_ids.tolist() == ids[ids > 0].tolist() and got_counts.tolist() == counts[ids > 0].tolist()
    assert present_ids(layer) == ids[ids > 0].tolist()
    huge = np.array([[0, 5_000_000, 5_000_000, 7]], dtype=np.int64)  # beyond bincount's range
    assert [x.tolist() for x in label_counts(huge)] == [[7, 5_000_000], [1, 2]]


def test_label_counts_are_remembered_per_layer_object_and_bounded() -> None:
    from concepts import labelcount

    labelcount.forget()
    layer = np.array([[1, 1, 2]], np.uint16)
    assert labelcount.present_ids(layer) == [1, 2]
    copy = layer.copy()
    copy[0, 0] = 3  # a different array is counted afresh, never taken for the remembered one
    assert labelcount.present_ids(copy) == [1, 2, 3]
    for _ in range(3 * labelcount.REMEMBERED):
        labelcount.present_ids(np.ones((2, 2), np.uint8))
    assert len(labelcount._MEMO) <= labelcount.REMEMBERED
    labelcount.forget()
    assert not labelcount._MEMO


def test_read_bands_match_rgb_channels_and_report_the_same_errors(tmp_path: Path) -> None:
    from concepts.builders._bands import ade_classes, read_bands, red_not_tens
    from concepts.builders._raster import read_rgb_channels

    def ade_class_map(rgb: np.ndarray, path: Path) -> np.ndarray:
        """FORMATS.md B.1 stated plainly: class = (R // 10) * 256 + G."""
        return (rgb[..., 0].astype(np.int64) // 10) * 256 + rgb[..., 1]

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    rgb[..., 0] = (rgb[..., 0] % 26) * 10
    for mode, pixels in (("RGB", rgb), ("RGBA", np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]))):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(pixels, mode).save(path)
        red, green = read_bands(path, (0, 1))
        assert np.array_equal(np.asarray(red), rgb[..., 0]) and np.array_equal(np.asarray(green), rgb[..., 1])
        assert np.array_equal(ade_classes(red, green), ade_class_map(read_rgb_channels(path), path))
        assert not red_not_tens(red)
    rgb[0, 0, 0] = 13
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    red, green = read_bands(tmp_path / "odd.png", (0, 1))
    assert red_not_tens(red) and ade_classes(red, green)[0, 0] == 256 + int(rgb[0, 0, 1])
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    for name in ("grey.png", "broken.png", "missing.png"):
        with pytest.raises(SourceItemError) as expected:
            read_rgb_channels(tmp_path / name, what="part level")
        with pytest.raises(SourceItemError) as got:
            read_bands(tmp_path / name, (0, 1), what="part level")
        assert (got.value.message, got.value.reason) == (expected.value.message, expected.value.reason)


def test_one_worker_process_gives_the_in_process_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Builds of many items run their one worker in a process (with a tuned allocator); small
    # ones run in the caller. Both paths, and the staged-layer spool, must give the same bytes.
    from concepts import unify

    source = _Layered(tmp_path / "in", {"n": 6})
    here = build([source], tmp_path / "here" / "out", size=(16, 16))
    monkeypatch.setattr(unify, "POOL_MIN_ITEMS", 2)
    pooled = build([_Layered(tmp_path / "in", {"n": 6})], tmp_path / "pool" / "out", size=(16, 16))
    files = sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file())
    assert len(files) > 6 and files == sorted(p.relative_to(pooled).as_posix() for p in pooled.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(here, pooled, files, shallow=False)
    assert mismatch == [] and errors == []
    assert not list(tmp_path.glob("**/stage-*.bin"))  # the spool went with the scratch folder
