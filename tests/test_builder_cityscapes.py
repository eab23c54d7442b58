"""Cityscapes: a release in its real layout (leftImg8bit/, gtFine/, gtCoarse/, 8-bit label ids, 16-bit
instance ids, polygons and colour files beside them) built with the CLI and checked pixel by pixel
against the planted boxes; the label table checked against cityscapesScripts' own, restated here."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityscapes_release import Frame, paint, write_release
from concepts import builders
from concepts.builders.cityscapes import LABELS, CityscapesBuilder
from concepts.errors import SourceItemError
from fake_exports import assert_valid, label_layers
from hostile import assert_one_error, assert_unchanged, invoke, snapshot

H, W = 8, 12

AACHEN = Frame("train", "aachen", 0, 19, {
    "gtFine": [("sky", (0, 0, 12, 2)), ("building", (0, 2, 6, 4)), ("vegetation", (6, 2, 12, 4)), ("road", (0, 4, 12, 8)),
               ("parking", (10, 4, 12, 5)), ("car", (1, 5, 4, 7)), ("car", (7, 5, 10, 7)), ("person", (5, 3, 6, 6)),
               ("ego vehicle", (0, 7, 12, 8))],
    # Coarse labels of the same image say terrain everywhere: the fine annotation must win.
    "gtCoarse": [("terrain", (0, 0, 12, 8))],
})
BOCHUM = Frame("train", "bochum", 0, 313, {
    "gtFine": [("sidewalk", (0, 0, 12, 8)), ("bridge", (0, 0, 12, 1)), ("cargroup", (2, 2, 8, 6)), ("bicycle", (9, 1, 11, 3)),
               ("ground", (0, 7, 4, 8)), ("rectification border", (11, 0, 12, 8))],
})
FRANKFURT = Frame("val", "frankfurt", 0, 294, {"gtFine": [("road", (0, 0, 12, 8)), ("person", (3, 2, 5, 7))]})
# The test split's labels are placeholders: void ids only.
BERLIN = Frame("test", "berlin", 0, 19, {"gtFine": [("ego vehicle", (0, 6, 12, 8)), ("rectification border", (0, 0, 1, 8))]})
ERLANGEN = Frame("train_extra", "erlangen", 0, 1, {"gtCoarse": [("road", (0, 4, 12, 8)), ("sky", (0, 0, 12, 3))]})
FRAMES = [AACHEN, BOCHUM, FRANKFURT, BERLIN, ERLANGEN]

# cityscapesScripts helpers/labels.py, restated: name -> (id, category, ignoreInEval, hasInstances).
OFFICIAL = {
    "unlabeled": (0, "void", True, False),
    "ego vehicle": (1, "void", True, False),
    "ground": (6, "void", True, False),
    "road": (7, "flat", False, False),
    "parking": (9, "flat", True, False),
    "guard rail": (14, "construction", True, False),
    "polegroup": (18, "object", True, False),
    "traffic sign": (20, "object", False, False),
    "sky": (23, "sky", False, False),
    "rider": (25, "human", False, True),
    "caravan": (29, "vehicle", True, True),
    "bicycle": (33, "vehicle", False, True),
    "license plate": (-1, "vehicle", True, False),
}
VOID = {"unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground"}


def expected(frame: Frame, kind: str = "gtFine") -> np.ndarray:
    """The planted object names: void labels unlabeled (``""``), a car group a car."""
    names = paint(frame.annotations[kind], H, W)[0]
    return np.where(np.isin(names, list(VOID)), "", names)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path / "cityscapes", FRAMES, H, W)


def test_label_table_is_the_official_one() -> None:
    table = {label.name: label for label in LABELS}
    assert len(LABELS) == 35 and sorted(label.id for label in LABELS if label.id >= 0) == list(range(34))
    for name, (ident, category, ignored, instances) in OFFICIAL.items():
        label = table[name]
        got = (label.id, label.category, label.ignore_in_eval, label.has_instances)
        assert got == (ident, category, ignored, instances), name
    assert {label.name for label in LABELS if label.category == "void"} == VOID
    assert {label.category for label in LABELS} == {"void", "flat", "construction", "object", "nature", "sky", "human", "vehicle"}


def test_release_files_are_as_the_release_writes_them(release: Path) -> None:
    fine = release / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_"
    with Image.open(f"{fine}labelIds.png") as im:
        assert im.mode == "L"
    with Image.open(f"{fine}instanceIds.png") as im:
        assert im.mode == "I;16"
        values = set(np.unique(np.asarray(im)).tolist())
    # Two cars numbered 26000, 26001; one person 24000; stuff as plain ids.
    assert {26000, 26001, 24000, 7, 9, 23} <= values


def test_detect_and_items(release: Path, tmp_path: Path) -> None:
    assert builders.detect(release) is CityscapesBuilder
    assert builders.detect(tmp_path) is CityscapesBuilder  # the folder holding the release
    b = CityscapesBuilder(tmp_path)
    assert b.base == release
    assert b.items() == [("train/aachen", "aachen_000000_000019"), ("train/bochum", "bochum_000000_000313"),
                         ("train_extra/erlangen", "erlangen_000000_000001"), ("val/frankfurt", "frankfurt_000000_000294")]
    assert b.summary() == {"test split (labels withheld by the benchmark)": 1}
    r = b.load(("train/aachen", "aachen_000000_000019"))
    assert r.key == "train/aachen/aachen_000000_000019" and list(r.pixel) == ["object"]
    r.check()
    assert pickle.loads(pickle.dumps(b)).load(("val/frankfurt", "frankfurt_000000_000294")).key.endswith("000294")
    coarse_only = write_release(tmp_path / "coarse" / "cityscapes", [ERLANGEN], H, W)
    assert builders.detect(coarse_only.parent) is CityscapesBuilder
    assert CityscapesBuilder(coarse_only).items() == [("train_extra/erlangen", "erlangen_000000_000001")]
    assert not CityscapesBuilder.detect(release / "leftImg8bit")


def test_build_with_the_cli_pixels_and_validate(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(["build", "--from", release, "-o", out, "--workers", "1", "--no-synonyms"])
    assert result.code == 0, result.stderr
    assert "wrote 4 images (cityscapes: 4)" in result.stdout
    assert "skipped 1 image(s): test split (labels withheld by the benchmark)" in result.stdout + result.stderr
    for frame, kind in ((AACHEN, "gtFine"), (BOCHUM, "gtFine"), (FRANKFURT, "gtFine"), (ERLANGEN, "gtCoarse")):
        (layer,) = label_layers(out, f"{frame.stem}.jpg", "object")
        assert (layer == expected(frame, kind)).all(), frame.stem
    (aachen,) = label_layers(out, "aachen_000000_000019.jpg", "object")
    assert aachen[5, 1] == aachen[5, 8] == "car" and aachen[4, 11] == "parking" and aachen[7, 0] == ""
    assert "terrain" not in set(aachen.ravel())  # gtFine wins over gtCoarse
    (bochum,) = label_layers(out, "bochum_000000_000313.jpg", "object")
    assert bochum[3, 3] == "car" and bochum[0, 5] == "bridge" and bochum[7, 0] == "" and bochum[4, 11] == ""
    index = (out / "index.csv").read_text()
    assert "berlin" not in index
    labels = (out / "label.csv").read_text()
    for absent in ("ground", "ego vehicle", "unlabeled", "rectification border", "terrain"):
        assert f",{absent}," not in labels
    assert_valid(out)


def test_mapping_sees_names_and_cityscapes_categories(release: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "concepts.yaml"
    mapping.write_text("version: 1\nlabels:\n  car: {category: vehicle, name: automobile}\n  parking: drop\n"
                       "attributes:\n  category: {category: street, values: {flat: ground plane}}\n")
    out = tmp_path / "out"
    result = invoke(["build", "--from", f"cityscapes={release}", "--concepts", mapping, "-o", out, "--workers", "1",
                     "--no-synonyms", "--no-color"])
    assert result.code == 0, result.stderr
    names = paint(AACHEN.annotations["gtFine"], H, W)[0]
    (obj,) = label_layers(out, "aachen_000000_000019.jpg", "object")
    want = np.where(np.isin(names, list(VOID) + ["car", "parking"]), "", names)
    assert (obj == want).all()
    (vehicle,) = label_layers(out, "aachen_000000_000019.jpg", "vehicle")
    assert (vehicle == np.where(names == "car", "automobile", "")).all()
    (street,) = label_layers(out, "aachen_000000_000019.jpg", "street")
    # "sky" is both a label (object) and a Cityscapes category (street): one name in two categories.
    group = {"sky": "sky", "building": "construction", "vegetation": "nature", "road": "ground plane", "car": "vehicle",
             "person": "human"}
    assert (street == np.vectorize(lambda n: group.get(n, ""))(names)).all()  # dropped parking adds nothing
    assert_valid(out)


def test_print_concepts_lists_labels_and_categories(release: Path) -> None:
    result = invoke(["build", "--from", release, "--print-concepts"])
    assert result.code == 0, result.stderr
    assert '"traffic light": {category: object' in result.stdout and '"ego vehicle"' not in result.stdout
    # Labels per Cityscapes category in the official table (license plate, id -1, is never drawn).
    counts = "vehicle x8, construction x6, flat x4, object x4, human x2, nature x2, sky x1"
    assert f'"category": drop  # values: {counts}' in result.stdout


def test_instance_ids_when_label_ids_are_missing(release: Path) -> None:
    fine = release / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_"
    os.remove(f"{fine}labelIds.png")
    r = CityscapesBuilder(release).load(("train/bochum", "bochum_000000_000313"))
    names = {ident: n[0] for (_, ident), n in r.names.items()}
    got = np.vectorize(lambda i: names.get(int(i), ""))(r.pixel["object"][0])
    assert (got == expected(BOCHUM)).all()


def test_bad_items_are_skipped_with_reasons(release: Path, tmp_path: Path) -> None:
    b = CityscapesBuilder(release)
    fine = release / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    ids = np.asarray(Image.open(fine)).copy()
    ids[0, 0] = 40  # a lane-line id of a modified table, not the release's
    Image.fromarray(ids).save(fine)
    with pytest.raises(SourceItemError, match=r"label id\(s\) 40 not in the Cityscapes label table") as e:
        b.load(("train/aachen", "aachen_000000_000019"))
    assert e.value.reason == "unknown label id"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(fine)
    with pytest.raises(SourceItemError, match="single-channel"):
        b.load(("train/aachen", "aachen_000000_000019"))
    voids = release / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    Image.fromarray(np.full((H, W), 1, np.uint8)).save(voids)
    with pytest.raises(SourceItemError, match="all void") as e:
        b.load(("val/frankfurt", "frankfurt_000000_000294"))
    assert e.value.reason == "no labels (all void)"
    result = invoke(["build", "--from", release, "-o", tmp_path / "out", "--workers", "1"])
    assert result.code == 0, result.stderr
    assert "skipped 1 image(s): bad annotation" in result.stdout and "skipped 1 image(s): no labels (all void)" in result.stdout


def test_hostile_layouts_one_error_line(release: Path, tmp_path: Path) -> None:
    # A label file that is a symlink out of the release is never read.
    outside = tmp_path / "secret_labelIds.png"
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(outside)
    fine = release / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    fine.unlink()
    fine.symlink_to(outside)
    before = snapshot(release)
    result = invoke(["build", "--from", release, "-o", tmp_path / "out", "--workers", "1", "--strict"])
    assert_one_error(result, "frankfurt_000000_000294", "outside the input")
    assert_unchanged(before, snapshot(release))
    # Only the test split: nothing to build, said in one line.
    only_test = write_release(tmp_path / "test_only", [BERLIN], H, W)
    result = invoke(["build", "--from", only_test, "-o", tmp_path / "out2", "--workers", "1"])
    assert_one_error(result, "no labelled image", "test split")
