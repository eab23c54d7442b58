"""ADE20K builders (2016, 2021, SceneParsing) at the record level, on fake trees in the real layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts import builders
from concepts.builders.ade20k import Ade20k2016Builder, Ade20k2021Builder
from concepts.builders.ade20k_scene_parsing import Ade20kSceneParsingBuilder
from concepts.errors import SourceError, SourceItemError
from fake_sources import (
    AdeAnnotatedImage,
    AdeImage,
    AdeInstance,
    photo,
    write_ade20k_2016,
    write_ade20k_2016_annotated,
    write_ade20k_2021,
    write_scene_parsing,
    write_v73_header,
)
from hostile import assert_one_error, invoke

H, W = 24, 32
# 300 names so that class 300 needs the red channel: R = 10, G = 44.
NAMES = [f"thing {i}" for i in range(1, 301)]
NAMES[:6] = ["wall", "person, individual, someone", "car, auto, automobile, machine, motorcar", "wheel", "window", "door"]
NAMES[299] = "doorknob, doorhandle"


def _images() -> list[AdeImage]:
    objects = np.zeros((H, W), np.int32)
    objects[:, :10] = 1
    objects[4:20, 10:20] = 3
    objects[2:22, 22:28] = 2
    objects[0:3, 29:32] = 300
    level1 = np.zeros((H, W), np.int32)
    level1[14:20, 11:14] = 4  # wheel of the car
    level1[1:4, 1:5] = 5  # window of the wall
    level2 = np.zeros((H, W), np.int32)
    level2[15:17, 12:13] = 300  # a part of a part
    plain = np.zeros((H, W), np.int32)
    plain[10:, :] = 6
    bad = plain.copy()
    bad[0, 0] = 301  # beyond the 300 names
    return [
        AdeImage("ADE_train_00000001", "training/a/abbey", "abbey", photo(H, W, 1), objects, [level1, level2]),
        AdeImage("ADE_train_00000002", "training/w/wine_cellar/bottle_storage", "wine_cellar/bottle_storage", photo(H, W, 2), plain),
        AdeImage("ADE_val_00000001", "validation/s/street", "~not labeled", photo(H, W, 3), plain),
        AdeImage("ADE_val_00000002", "validation/s/street", "street", photo(H, W, 4), bad),
    ]


@pytest.fixture
def ade2016(tmp_path: Path) -> Path:
    return write_ade20k_2016(tmp_path, NAMES, _images())


def test_2016_detect_and_registry(ade2016: Path, tmp_path: Path) -> None:
    assert Ade20k2016Builder.detect(ade2016).confidence == 1.0
    assert Ade20k2016Builder.detect(ade2016.parent).confidence == 1.0
    assert builders.detect(ade2016) is Ade20k2016Builder
    assert not Ade20k2021Builder.detect(ade2016)
    empty = Ade20k2016Builder.detect(tmp_path / "nothing")
    assert empty.confidence == 0 and "index_ade20k.mat" in empty.unmet[0]


def test_2016_records_pixel_by_pixel(ade2016: Path) -> None:
    b = Ade20k2016Builder(ade2016.parent)
    assert b.items() == [
        "images/training/a/abbey/ADE_train_00000001.jpg",
        "images/training/w/wine_cellar/bottle_storage/ADE_train_00000002.jpg",
        "images/validation/s/street/ADE_val_00000001.jpg",
        "images/validation/s/street/ADE_val_00000002.jpg",
    ]
    images = _images()
    rec = b.load(b.items()[0])
    rec.check()
    assert rec.key == "ADE_train_00000001" and rec.image == ade2016 / b.items()[0]
    np.testing.assert_array_equal(rec.pixel["object"][0], images[0].objects)
    assert len(rec.pixel["part"]) == 2
    np.testing.assert_array_equal(rec.pixel["part"][0], images[0].parts[0])
    np.testing.assert_array_equal(rec.pixel["part"][1], images[0].parts[1])
    assert rec.names[("object", 2)] == ("person", "individual", "someone")
    assert rec.names[("object", 300)] == ("doorknob", "doorhandle")
    assert rec.names[("part", 4)] == ("wheel",) and rec.names[("part", 300)] == ("doorknob", "doorhandle")
    scene = rec.image_level["scene"]
    assert rec.names[("scene", scene[0])] == ("abbey-s",)

    second = b.load(b.items()[1])
    assert "part" not in second.pixel
    assert second.names[("scene", second.image_level["scene"][0])] == ("wine_cellar-bottle_storage-s",)
    assert second.image_level["scene"] != scene
    unlabeled_scene = b.load(b.items()[2])
    assert "scene" not in unlabeled_scene.image_level  # '~' scenes are unlabeled


def test_2016_bad_items_skip_with_reasons(ade2016: Path) -> None:
    b = Ade20k2016Builder(ade2016)
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[3])
    assert err.value.reason == "unknown label id" and "301" in str(err.value)
    (ade2016 / b.items()[1]).with_name("ADE_train_00000002_seg.png").unlink()
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[1])
    assert err.value.reason == "missing segmentation" and "_seg.png" in str(err.value)
    (ade2016 / b.items()[2]).unlink()
    with pytest.raises(SourceItemError, match="image is missing"):
        b.load(b.items()[2])


def test_2016_part_levels_stop_at_first_gap(ade2016: Path) -> None:
    b = Ade20k2016Builder(ade2016)
    first = ade2016 / b.items()[0]
    first.with_name("ADE_train_00000001_parts_1.png").rename(first.with_name("ADE_train_00000001_parts_3.png"))
    assert "part" not in b.load(b.items()[0]).pixel


def test_2016_builder_pickles_and_bad_index(ade2016: Path) -> None:
    b = pickle.loads(pickle.dumps(Ade20k2016Builder(ade2016)))
    np.testing.assert_array_equal(b.load(b.items()[1]).pixel["object"][0], _images()[1].objects)
    (ade2016 / "index_ade20k.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really")
    with pytest.raises(SourceError, match="index_ade20k.mat"):
        Ade20k2016Builder(ade2016)
    write_v73_header(ade2016 / "index_ade20k.mat")
    with pytest.raises(SourceError, match="v7.3") as err:
        Ade20k2016Builder(ade2016)
    assert "save -v7" in str(err.value)


@pytest.fixture
def ade2021(tmp_path: Path) -> Path:
    ims = _images()[:3]
    for im, folder in zip(ims, ("training/urban/street", "training/cultural/abbey", "validation/urban/street")):
        im.folder = folder
    return write_ade20k_2021(tmp_path, NAMES, ims, latin1=("ADE_train_00000002",))


def test_2021_with_pickled_index(ade2021: Path) -> None:
    assert Ade20k2021Builder.detect(ade2021).confidence == 1.0
    assert not Ade20k2016Builder.detect(ade2021)
    b = Ade20k2021Builder(ade2021)
    assert b.index_path == ade2021 / "index_ade20k.pkl"
    assert b.items()[0] == "images/ADE/training/urban/street/ADE_train_00000001.jpg"
    rec = b.load(b.items()[0])
    np.testing.assert_array_equal(rec.pixel["object"][0], _images()[0].objects)
    np.testing.assert_array_equal(rec.pixel["part"][1], _images()[0].parts[1])
    assert rec.names[("object", 3)] == ("car", "auto", "automobile", "machine", "motorcar")
    assert rec.names[("scene", rec.image_level["scene"][0])] == ("abbey-s",)  # the index's '/abbey'
    # Named directly, the release folder finds the index in its parent, where the release puts it.
    assert Ade20k2021Builder(ade2021 / "ADE20K_2021_17_01").index_path == ade2021 / "index_ade20k.pkl"


def test_2021_without_index_reads_json(ade2021: Path) -> None:
    (ade2021 / "index_ade20k.pkl").unlink()
    b = Ade20k2021Builder(ade2021 / "ADE20K_2021_17_01")
    assert b.index_path is None and len(b.items()) == 3
    by_key = {b.load(i).key: b.load(i) for i in b.items()}
    rec = by_key["ADE_train_00000001"]
    np.testing.assert_array_equal(rec.pixel["part"][0], _images()[0].parts[0])
    assert rec.names[("part", 300)] == ("doorknob", "doorhandle")
    assert rec.names[("scene", rec.image_level["scene"][0])] == ("street-s",)  # from the folder
    assert by_key["ADE_train_00000002"].names[("object", 6)] == ("door",)  # the Latin-1 JSON


def test_2021_json_quirks_and_missing_class(ade2021: Path) -> None:
    import json

    (ade2021 / "index_ade20k.pkl").unlink()
    b = Ade20k2021Builder(ade2021)
    path = (ade2021 / "ADE20K_2021_17_01" / b.items()[1]).with_suffix(".json")
    data = json.loads(path.read_bytes().decode("utf-8"))
    parts = [o["parts"] for o in data["annotation"]["object"]]
    assert any(isinstance(p["ispartof"], int) for p in parts) and any(p["ispartof"] == [] for p in parts)
    data["annotation"]["object"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[1])
    assert err.value.reason == "unknown label id"


def test_2021_index_unpickler_refuses_code(ade2021: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("never printed",))

    (ade2021 / "index_ade20k.pkl").write_bytes(pickle.dumps({"filename": [Evil()]}))
    with pytest.raises(SourceError, match="builtins.print is not allowed"):
        Ade20k2021Builder(ade2021)


@pytest.fixture
def scene_parsing(tmp_path: Path) -> Path:
    labels = np.zeros((H, W), np.uint8)
    labels[:, :16] = 1
    labels[5:9, 20:30] = 150
    bad = labels.copy()
    bad[0, 0] = 151
    names = {i: NAMES[i - 1] for i in range(1, 151)}
    return write_scene_parsing(
        tmp_path,
        names,
        [
            ("training", "ADE_train_00000001", photo(H, W, 1), labels, "airport_terminal"),
            ("validation", "ADE_val_00000001", photo(H, W, 2), bad, "street"),
            ("validation", "ADE_val_00000002", photo(H, W, 3), None, "street"),
        ],
    )


def test_scene_parsing_records(scene_parsing: Path) -> None:
    assert Ade20kSceneParsingBuilder.detect(scene_parsing.parent).confidence == 1.0
    assert builders.detect(scene_parsing) is Ade20kSceneParsingBuilder
    b = Ade20kSceneParsingBuilder(scene_parsing.parent)
    assert b.items() == ["training/ADE_train_00000001.jpg", "validation/ADE_val_00000001.jpg", "validation/ADE_val_00000002.jpg"]
    rec = b.load(b.items()[0])
    rec.check()
    expected = np.zeros((H, W), np.int32)
    expected[:, :16] = 1
    expected[5:9, 20:30] = 150
    np.testing.assert_array_equal(rec.pixel["object"][0], expected)
    assert rec.names[("object", 1)] == ("wall",)  # trailing spaces in objectInfo150.txt stripped
    assert rec.names[("object", 150)] == ("thing 150",)
    assert rec.names[("scene", rec.image_level["scene"][0])] == ("airport_terminal-s",)
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[1])
    assert err.value.reason == "unknown label id"
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[2])
    assert err.value.reason == "missing annotation"


def test_scene_parsing_rejects_colour_annotations(scene_parsing: Path) -> None:
    b = Ade20kSceneParsingBuilder(scene_parsing)
    Image.fromarray(photo(H, W)).save(scene_parsing / "annotations" / "training" / "ADE_train_00000001.png")
    with pytest.raises(SourceItemError, match="single-channel"):
        b.load(b.items()[0])


# -- 2016 without index_ade20k.mat: names and part levels from each image's _atr.txt -----------------


def _box(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[top:bottom, left:right] = True
    return m


def _annotated() -> list[AdeAnnotatedImage]:
    """Instances numbered out of class order, two people, raw names unlike the WordNet ones, three levels."""
    first = [
        [AdeInstance(3, _box(4, 20, 10, 20), raw="sedan"), AdeInstance(1, _box(0, 24, 0, 10)),
         AdeInstance(2, _box(2, 22, 22, 26), raw="man", occluded=1, attributes="walking, smiling"),
         AdeInstance(2, _box(2, 22, 27, 31), raw="woman"), AdeInstance(300, _box(0, 2, 29, 32), raw="knob")],
        [AdeInstance(4, _box(14, 20, 11, 14), raw="tire"), AdeInstance(5, _box(1, 4, 1, 5)), AdeInstance(6, _box(5, 12, 12, 18))],
        [AdeInstance(300, _box(8, 9, 16, 17), raw="handle", occluded=1)],
    ]
    second = [[AdeInstance(6, _box(10, 24, 0, 32)), AdeInstance(1, _box(0, 10, 0, 32))]]
    third = [[AdeInstance(3, _box(4, 18, 4, 28)), AdeInstance(4, _box(20, 24, 0, 6))], [AdeInstance(4, _box(14, 18, 6, 10))]]
    return [
        AdeAnnotatedImage("ADE_train_00000001", "training/a/abbey", "abbey", photo(H, W, 1), first),
        AdeAnnotatedImage("ADE_train_00000002", "training/w/wine_cellar/bottle_storage", "wine_cellar/bottle_storage", photo(H, W, 2), second),
        AdeAnnotatedImage("ADE_val_00000001", "validation/s/street", "street", photo(H, W, 3), third),
    ]


@pytest.fixture
def annotated(tmp_path: Path) -> Path:
    return write_ade20k_2016_annotated(tmp_path / "src", NAMES, _annotated())


def test_2016_without_index_is_detected_and_listed(annotated: Path) -> None:
    (annotated / "index_ade20k.mat").unlink()
    assert Ade20k2016Builder.detect(annotated).confidence == 0.9
    assert Ade20k2016Builder.detect(annotated.parent).confidence == 0.9
    assert builders.detect(annotated) is Ade20k2016Builder
    b = pickle.loads(pickle.dumps(Ade20k2016Builder(annotated.parent)))
    assert b.index_path is None
    assert b.items() == [f"images/{im.folder}/{im.stem}.jpg" for im in _annotated()]
    scenes = [b.load(item).image_level["scene"][0] for item in b.items()]
    assert [b.scene_names[s - 1] for s in scenes] == ["abbey-s", "wine_cellar-bottle_storage-s", "street-s"]


def test_2016_atr_names_equal_the_index_names(annotated: Path) -> None:
    with_index = Ade20k2016Builder(annotated)
    records = {with_index.load(i).key: with_index.load(i) for i in with_index.items()}
    (annotated / "index_ade20k.mat").unlink()
    without = Ade20k2016Builder(annotated)
    assert sorted(without.items()) == sorted(with_index.items())
    for im in _annotated():
        rec = without.load(f"images/{im.folder}/{im.stem}.jpg")
        rec.check()
        ref = records[im.stem]
        # Pixels by construction; names, part levels and scene exactly as the index gives them.
        np.testing.assert_array_equal(rec.pixel["object"][0], im.classes(0))
        assert len(rec.pixel.get("part", [])) == len(im.levels) - 1
        for level, layer in enumerate(rec.pixel.get("part", []), start=1):
            np.testing.assert_array_equal(layer, im.classes(level))
        assert rec.names == ref.names and rec.image_level == ref.image_level
    first = without.load(without.items()[0])
    assert first.names[("object", 2)] == ("person", "individual", "someone")  # column 4, not the raw 'man'
    assert first.names[("part", 300)] == ("doorknob", "doorhandle") == first.names[("object", 300)]


def test_2016_with_and_without_index_build_the_same_dataset(annotated: Path, tmp_path: Path) -> None:
    from concepts import open_dataset

    def build(out: Path):
        result = invoke(["build", "--from", f"ade20k={annotated}", "-o", out, "--workers", "1", "--no-color"])
        assert result.code == 0, result.stderr
        ds = open_dataset(out)
        labels = {label.name: (label.categories, tuple(sorted(label.syns))) for label in ds.labels.values()}
        pixels = {}
        for sample in ds:
            names = {n: label.name for n, label in ds.labels.items()} | {0: ""}
            for category in ("object", "part"):
                if sample.has(category):
                    pixels[(sample.image, category)] = [np.vectorize(names.get)(a) for a in ds.load_labels(sample, category)]
            pixels[(sample.image, "scene")] = [names[n] for n in ds.load_labels(sample, "scene")]
        return labels, pixels

    labels, pixels = build(tmp_path / "with")
    (annotated / "index_ade20k.mat").unlink()
    labels2, pixels2 = build(tmp_path / "without")
    assert labels2 == labels and pixels2.keys() == pixels.keys()
    for key, value in pixels.items():
        if key[1] == "scene":
            assert pixels2[key] == value
        else:
            assert len(pixels2[key]) == len(value) and all(np.array_equal(a, b) for a, b in zip(pixels2[key], value))
    assert labels["person"][0] == {"object": 1} and labels["doorknob"][0] == {"object": 1, "part": 1}


def _atr(annotated: Path) -> Path:
    return annotated / "images/training/a/abbey/ADE_train_00000001_atr.txt"


@pytest.mark.parametrize("edit, reason, needle", [
    (lambda rows: rows[:1] + ["002 # 0 # 0 # wall # wall"] + rows[2:], "bad annotation", "row 2: expected 6 fields"),
    (lambda rows: rows[:1] + ["two # 0 # 0 # wall # wall # \"\""] + rows[2:], "bad annotation", "must be whole numbers"),
    (lambda rows: rows + ["001 # 0 # 0 # wall # wall # \"\""], "bad annotation", "instance 1 of part level 0 is also row 1"),
    # The fourth instance (the second person) named otherwise than the third: one class, two names.
    (lambda rows: rows[:3] + [rows[3].replace("person, individual, someone", "statue")] + rows[4:], "bad annotation",
     "class 2 is 'person, individual, someone' on row 3 and 'statue' on row 4"),
    # No row for the wall (instance 2 of level 0), the only instance of class 1: the class has no name.
    # (Dropping the doorknob object's row would not do: its level-2 part row names class 300 too.)
    (lambda rows: rows[:1] + rows[2:], "unknown label id", "class 1 has no object in the image's _atr.txt"),
])
def test_2016_atr_problems_skip_the_image(annotated: Path, edit, reason: str, needle: str) -> None:
    (annotated / "index_ade20k.mat").unlink()
    path = _atr(annotated)
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    b = Ade20k2016Builder(annotated)
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[0])
    assert err.value.reason == reason and needle in str(err.value), str(err.value)
    b.load(b.items()[1])  # the other images are unaffected


def test_2016_atr_missing_or_latin1(annotated: Path) -> None:
    (annotated / "index_ade20k.mat").unlink()
    path = _atr(annotated)
    rows = path.read_text().splitlines()
    rows[2] = rows[2].replace('"walking, smiling"', '"caf\u00e9 #1, walking"')  # a '#' and Latin-1 inside the quotes
    path.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    b = Ade20k2016Builder(annotated)
    assert b.load(b.items()[0]).names[("object", 2)] == ("person", "individual", "someone")
    path.unlink()
    with pytest.raises(SourceItemError) as err:
        b.load(b.items()[0])
    assert err.value.reason == "missing annotation" and "_atr.txt" in str(err.value)


def test_2016_atr_bad_row_is_one_cli_error_under_strict(annotated: Path, tmp_path: Path) -> None:
    (annotated / "index_ade20k.mat").unlink()
    path = _atr(annotated)
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:2] + ["003 # 0 # 1 # person, individual, someone"] + rows[3:]) + "\n")
    out = invoke(["build", "--from", f"ade20k={annotated}", "-o", tmp_path / "out", "--workers", "1", "--strict"])
    assert_one_error(out, "ADE_train_00000001_atr.txt", "row 3", "expected 6 fields")
