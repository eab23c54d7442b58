"""The typed reader on datasets written by an independent writer (tests/synth.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from concepts.broden.reader import open_dataset
from concepts.errors import DatasetFormatError
from synth import SynthRow, write_broden


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    part1 = np.zeros((4, 6), np.int64)
    part1[0] = 3
    part2 = np.zeros((4, 6), np.int64)
    part2[1] = 4
    rows = [
        SynthRow("a", np.full((8, 12, 3), 90, np.uint8), {"object": [np.full((4, 6), 1)], "part": [part1, part2]},
                 {"texture": [6, 5]}, split="val"),
        SynthRow("b", np.zeros((8, 12, 3), np.uint8), {"object": [np.full((4, 6), 2)]}),
    ]
    labels = {1: ("car", "object"), 2: ("tree", "object"), 3: ("wheel", "part"), 4: ("door", "part"),
              5: ("striped", "texture"), 6: ("dotted", "texture")}
    return write_broden(tmp_path / "ds", rows, labels, ["object", "part", "texture"])


def test_tables(dataset: Path) -> None:
    ds = open_dataset(dataset)
    assert ds.category_names == ["object", "part", "texture"]
    assert [(c.first, c.last, c.count) for c in ds.categories] == [(1, 2, 2), (3, 4, 2), (5, 6, 2)]
    car = ds.labels[1]
    assert (car.name, car.categories, car.frequency, car.primary) == ("car", {"object": 1}, 1, "object")
    assert ds.num_labels == 7 and ds.label_names()[3] == "wheel"
    assert ds.codes["object"] == {1: 1, 2: 2}
    assert ds.primary_categories(["object", "part"]).tolist() == [-1, 0, 0, 1, 1, -1, -1]
    assert sorted(ds.splits()) == ["train", "val"] and len(ds.select(split="val")) == 1
    assert len(ds.select(limit=1)) == 1 and len(ds) == 2


def test_samples_and_label_data(dataset: Path) -> None:
    ds = open_dataset(dataset)
    a = next(s for s in ds if s.image == "synth/a.jpg")
    assert (a.ih, a.iw, a.sh, a.sw, a.split) == (8, 12, 4, 6, "val")
    assert a.pixel_paths("part") == ["synth/a_part_1.png", "synth/a_part_2.png"]
    parts = ds.load_labels(a, "part")
    assert parts.shape == (2, 4, 6) and parts.dtype == np.int32
    assert parts[0, 0].tolist() == [3] * 6 and parts[1, 1].tolist() == [4] * 6 and parts[0, 1].sum() == 0
    assert ds.load_labels(a, "texture") == [6, 5]
    b = next(s for s in ds if s.image == "synth/b.jpg")
    assert ds.load_labels(b, "texture") == [] and not b.has("part")
    assert ds.load_image(a).shape == (8, 12, 3)


def test_reader_names_the_broken_file(dataset: Path) -> None:
    (dataset / "c_part.csv").unlink()
    with pytest.raises(DatasetFormatError, match="c_part.csv: file is missing"):
        open_dataset(dataset)


def test_open_any_names_the_missing_table_of_a_broken_broden_folder(dataset: Path) -> None:
    from concepts.hub import open_any

    (dataset / "index.csv").unlink()
    with pytest.raises(DatasetFormatError, match=r"index.csv: file is missing"):
        open_any(dataset)
