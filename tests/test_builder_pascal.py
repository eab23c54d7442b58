"""Pascal-Context + Pascal-Part builder at the record level, on fake trees in the real layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from concepts import builders
from concepts.builders.pascal import CONTEXT_59_NAMES, PascalBuilder, parse_part2ind, read_context_labels
from concepts.errors import SourceError, SourceItemError, UsageError
from fake_sources import PartObject, PascalImage, context_labels, photo, render_part2ind, write_pascal, write_v73_header

H, W = 20, 30


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("p2i") / "part2ind.m"
    path.write_text(render_part2ind())
    return parse_part2ind(path)


def _name(table, cls: int, code: str) -> str | None:
    ident = table.codes[(cls, code)]
    return table.names[ident][0] if ident else None


def test_part2ind_readable_names(table) -> None:
    assert table.silhouette == {4, 9, 11, 18}  # boat, chair ('sihouette'), diningtable, sofa
    assert _name(table, 1, "lwing") == "wing" and _name(table, 1, "engine_7") == "engine"
    assert table.codes[(1, "wheel_1")] == table.codes[(1, "wheel_10")]  # numbered parts merged
    assert _name(table, 2, "chainwheel") == "chain wheel" and _name(table, 2, "fwheel") == "wheel"
    assert table.codes[(6, "frontside")] == 0  # 'front side' leaves nothing: unlabeled
    assert _name(table, 6, "fliplate") == "license plate" and _name(table, 6, "window_20") == "window"
    assert _name(table, 7, "door_3") == "door" and table.codes[(7, "door_3")] != table.codes[(6, "door_3")]  # car copies bus
    assert _name(table, 12, "muzzle") == "muzzle" and _name(table, 12, "lfpa") == "paw"  # dog = cat + muzzle
    assert (13, "lhorn") not in table.codes and _name(table, 13, "rbho") == "hoof"  # horse: hooves, no horns
    assert _name(table, 17, "lhorn") == "horn"  # sheep keeps the cow's horns
    assert _name(table, 19, "hfrontside") == "head" and _name(table, 19, "cfrontside_4") == "coach"
    assert _name(table, 15, "ruleg") == "leg" and _name(table, 15, "rebrow") == "eyebrow"


def test_part2ind_unsupported_statement(tmp_path: Path) -> None:
    path = tmp_path / "part2ind.m"
    path.write_text(render_part2ind() + "pimap{3}(lower('EYE')) = 4;\n")
    with pytest.raises(SourceError) as err:
        parse_part2ind(path)
    assert err.value.row == render_part2ind().count("\n") + 1


def test_context_labels_split_on_first_colon(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("1: accordion\n2: aeroplane\n\n3: traffic light: red\n")
    assert read_context_labels(path) == {1: "accordion", 2: "aeroplane", 3: "traffic light: red"}
    path.write_text("1 accordion\n")
    with pytest.raises(SourceError, match="row 1"):
        read_context_labels(path)


def _scene() -> tuple[list[PascalImage], dict]:
    context = np.zeros((H, W), np.int32)
    context[:, :10] = 2  # aeroplane (in the 59)
    context[:, 10:20] = 5  # 'thing 5' (not in the 59)
    context[0:5, 20:30] = 431  # unknown
    context[10:20, 20:30] = 284  # person
    person = np.zeros((H, W), bool)
    person[2:18, 2:12] = True
    head = np.zeros((H, W), bool)
    head[2:6, 4:10] = True
    torso = np.zeros((H, W), bool)
    torso[6:18, 2:12] = True
    chair = np.zeros((H, W), bool)
    chair[12:20, 8:16] = True  # a later silhouette-only object covers the lower torso
    bus = np.zeros((H, W), bool)
    bus[2:18, 16:28] = True
    front = bus & (np.arange(W)[None, :] < 20)
    wheel = np.zeros((H, W), bool)
    wheel[14:18, 22:25] = True
    objects = [
        PartObject("person", person, [("head", head), ("torso", torso)]),
        PartObject("bus", bus, [("frontside", front), ("wheel_2", wheel)]),
        PartObject("chair", chair),
    ]
    strange = [PartObject("person", person, [("tentacle", head), ("hair", torso)])]
    images = [
        PascalImage("2008_000001", photo(H, W, 1), context, objects),
        PascalImage("2008_000002", photo(H, W, 2), context),
        PascalImage("2008_000003", photo(H, W, 3), None, []),
        PascalImage("2008_000004", photo(H, W, 4), None, strange),
    ]
    masks = {"head": head, "torso": torso & ~chair, "whole torso": torso, "wheel": wheel}
    return images, masks


@pytest.fixture(params=["broden", "extracted"])
def pascal(tmp_path: Path, request) -> Path:
    return write_pascal(tmp_path / "pascal", _scene()[0], layout=request.param)


def test_detect(pascal: Path, tmp_path: Path) -> None:
    assert PascalBuilder.detect(pascal).confidence == 1.0
    assert builders.detect(pascal) is PascalBuilder
    missing = PascalBuilder.detect(tmp_path / "nothing")
    assert missing.unmet[0] == "VOC2010/JPEGImages/"


def test_records_pixel_by_pixel(pascal: Path, table) -> None:
    b = pickle.loads(pickle.dumps(PascalBuilder(pascal)))
    assert b.items() == ["2008_000001", "2008_000002", "2008_000003", "2008_000004"]
    images, masks = _scene()
    rec = b.load("2008_000001")
    rec.check()
    assert rec.key == "2008_000001" and rec.image.name == "2008_000001.jpg"
    expected = images[0].context.copy()
    expected[expected == 431] = 0  # unknown is unlabeled
    np.testing.assert_array_equal(rec.pixel["object"][0], expected)
    assert rec.names[("object", 284)] == ("person",) and rec.names[("object", 5)] == ("thing 5",)
    part = np.zeros((H, W), np.int32)
    part[masks["head"]] = table.codes[(15, "head")]
    part[masks["torso"]] = table.codes[(15, "torso")]
    part[masks["wheel"]] = table.codes[(6, "wheel_2")]  # bus front side is unlabeled
    np.testing.assert_array_equal(rec.pixel["part"][0], part)
    assert rec.names[("part", table.codes[(6, "wheel_2")])] == ("wheel",)

    context_only = b.load("2008_000002")
    assert set(context_only.pixel) == {"object"}
    no_objects = b.load("2008_000003")  # Part file whose objects array is empty
    assert no_objects.pixel == {} and no_objects.image.is_file()


def test_unknown_part_names_are_counted(pascal: Path, table) -> None:
    rec = PascalBuilder(pascal).load("2008_000004")
    assert rec.skipped == {"unknown part name": 1}
    _, masks = _scene()
    expected = np.where(masks["whole torso"], table.codes[(15, "hair")], 0)  # the unknown 'tentacle' stays 0
    np.testing.assert_array_equal(rec.pixel["part"][0], expected)


def test_59_classes(pascal: Path) -> None:
    b = PascalBuilder(pascal, {"pascal_context_classes": 59})
    rec = b.load("2008_000001")
    images, _ = _scene()
    expected = np.zeros((H, W), np.int32)
    expected[images[0].context == 2] = 1  # aeroplane is code 1
    expected[images[0].context == 284] = CONTEXT_59_NAMES.index("person") + 1
    np.testing.assert_array_equal(rec.pixel["object"][0], expected)
    assert rec.names == {**{k: v for k, v in rec.names.items() if k[0] == "part"}, ("object", 1): ("aeroplane",), ("object", 37): ("person",)}
    with pytest.raises(UsageError, match="59 or 459"):
        PascalBuilder(pascal, {"pascal_context_classes": 33})


def test_bad_items(pascal: Path) -> None:
    b = PascalBuilder(pascal)
    labels = context_labels()
    ctx = next(pascal.rglob("trainval/2008_000002.mat"))
    scipy.io.savemat(ctx, {"LabelMap": np.full((H, W), max(labels) + 7, np.uint16)})
    with pytest.raises(SourceItemError) as err:
        b.load("2008_000002")
    assert err.value.reason == "unknown label id" and str(max(labels) + 7) in str(err.value)
    scipy.io.savemat(ctx, {"Other": np.zeros((2, 2))})
    with pytest.raises(SourceItemError, match="no variable 'LabelMap'"):
        b.load("2008_000002")
    next(pascal.rglob("Annotations_Part/2008_000004.mat")).write_bytes(b"not a mat file at all, truncated")
    with pytest.raises(SourceItemError) as err:
        b.load("2008_000004")
    assert err.value.reason == "unreadable annotation"
    write_v73_header(next(pascal.rglob("Annotations_Part/2008_000001.mat")))
    with pytest.raises(SourceItemError) as err:
        b.load("2008_000001")
    assert err.value.reason == "unsupported .mat"
    next(pascal.rglob("JPEGImages/2008_000003.jpg")).unlink()
    with pytest.raises(SourceItemError) as err:
        b.load("2008_000003")
    assert err.value.reason == "missing image"


def test_context_only_and_part_only_folders(tmp_path: Path) -> None:
    root = write_pascal(tmp_path / "p", _scene()[0])
    for path in (root / "part").rglob("*"):
        if path.is_file():
            path.unlink()
    b = PascalBuilder(root)
    assert b.parts_dir is None and b.items() == ["2008_000001", "2008_000002"]
    assert PascalBuilder.detect(root).confidence == 0.9
    (root / "context" / "labels.txt").unlink()
    assert "Pascal-Part" in PascalBuilder.detect(root).unmet[0]
    with pytest.raises(SourceError):
        PascalBuilder(root)
