"""Issue 11 sections 3, 5 and 6 for the Broden sources: ADE20K (2016, 2021, SceneParsing), Pascal,
OpenSurfaces and DTD given hostile indexes, tables and links.

Trees come from tests/fake_sources.py (the real layouts); each case plants one bad thing and checks
that a file outside the release is never read (skipped with a counted reason, an error under
``--strict``), that an index asking for huge memory is refused in one line, and that wrong types,
non-ASCII digits and broken tables end in one line naming the file, never a traceback.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from fake_sources import (
    AdeImage,
    OsPhoto,
    PascalImage,
    photo,
    write_ade20k_2021,
    write_dtd,
    write_opensurfaces,
    write_pascal,
    write_scene_parsing,
)
from hostile import SECRET, assert_no_leftovers, assert_not_in_tree, assert_one_error, assert_unchanged, invoke, snapshot
from PIL import Image

from concepts.builders.ade20k import Ade20k2021Builder
from concepts.builders.ade20k_scene_parsing import Ade20kSceneParsingBuilder
from concepts.builders.dtd import DtdBuilder
from concepts.builders.opensurfaces import OpenSurfacesBuilder
from concepts.builders.pascal import PascalBuilder
from concepts.errors import SourceError, SourceItemError

H, W = 12, 16
NAMES = ["wall", "floor", "tree"]


def _ade_images() -> list[AdeImage]:
    objects = np.zeros((H, W), np.int32)
    objects[:, :8] = 1
    objects[6:, 8:] = 3
    return [
        AdeImage("ADE_train_00000001", "training/a/abbey", "abbey", photo(H, W, 1), objects),
        AdeImage("ADE_train_00000002", "training/s/street", "street", photo(H, W, 2), objects),
    ]


def _secret_image(tmp_path: Path) -> Path:
    """A JPEG outside every input whose pixels a leak would copy; also a text file holding SECRET."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text(SECRET)
    jpg = outside / "secret.jpg"
    Image.fromarray(photo(H, W, 9)).save(jpg)
    return jpg


def _pickle_index(root: Path, **changes: object) -> Path:
    path = root / "index_ade20k.pkl"
    index = pickle.loads(path.read_bytes())
    index.update(changes)
    path.write_bytes(pickle.dumps(index))
    return path


def _build(tmp_path: Path, source: Path, *extra: str) -> tuple[object, Path]:
    out = tmp_path / "built"
    before = snapshot(source)
    result = invoke(["build", "--from", source, "-o", out, "--workers", "1", *extra], cwd=tmp_path)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert_unchanged(before, snapshot(source))
    assert_no_leftovers(tmp_path)
    return result, out


# -- section 3: nothing read from outside the release -------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("filename", "../../../../../../../outside/secret.jpg"),
    ("folder", "ADE20K_2021_17_01/images/../../../outside"),
])
def test_ade_index_naming_a_file_outside_the_release(tmp_path: Path, field: str, value: str) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images())
    _secret_image(tmp_path)
    index = pickle.loads((root / "index_ade20k.pkl").read_bytes())
    if field == "filename":
        index["filename"][0] = value
    else:
        index["folder"][0] = value
        index["filename"][0] = "secret.jpg"
    (root / "index_ade20k.pkl").write_bytes(pickle.dumps(index))
    builder = Ade20k2021Builder(root)
    with pytest.raises(SourceItemError, match="outside the input") as err:
        builder.load(builder.items()[0])
    assert err.value.reason == "path outside the input"
    result, out = _build(tmp_path, root)
    assert result.code == 0 and "skipped 1 image(s): path outside the input" in result.stdout, result.stdout
    assert len((out / "index.csv").read_text().splitlines()) == 2  # header + the one good image
    strict, _ = _build(tmp_path, root, "--strict", "--overwrite")
    assert_one_error(strict, "outside the input")


def test_ade_image_symlinked_outside_the_release(tmp_path: Path) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images())
    secret = _secret_image(tmp_path)
    image = root / "ADE20K_2021_17_01/images/ADE/training/a/abbey/ADE_train_00000001.jpg"
    image.unlink()
    image.symlink_to(secret)
    builder = Ade20k2021Builder(root)
    with pytest.raises(SourceItemError, match="outside the input"):
        builder.load(builder.items()[0])
    seg = root / "ADE20K_2021_17_01/images/ADE/training/s/street/ADE_train_00000002_seg.png"
    seg.rename(tmp_path / "outside" / "seg.png")
    seg.symlink_to(tmp_path / "outside" / "seg.png")
    with pytest.raises(SourceItemError, match="outside the input"):
        builder.load(builder.items()[1])


def test_scene_parsing_symlinks_outside(tmp_path: Path) -> None:
    labels = np.ones((H, W), np.uint8)
    base = write_scene_parsing(tmp_path / "src", {1: "wall"}, [("training", "ADE_train_00000001", photo(H, W), labels, "abbey")])
    secret = _secret_image(tmp_path)
    image = base / "images/training/ADE_train_00000001.jpg"
    image.unlink()
    image.symlink_to(secret)
    builder = Ade20kSceneParsingBuilder(base)
    with pytest.raises(SourceItemError, match="outside the input"):
        builder.load(builder.items()[0])


def test_pascal_dtd_opensurfaces_symlinks_outside(tmp_path: Path) -> None:
    secret = _secret_image(tmp_path)
    context = np.zeros((H, W), np.uint16)
    context[:4] = 2
    pascal = write_pascal(tmp_path / "pascal", [PascalImage("2008_000001", photo(H, W), context=context)])
    jpg = pascal / "VOCdevkit/VOC2010/JPEGImages/2008_000001.jpg"
    jpg.unlink()
    jpg.symlink_to(secret)
    builder = PascalBuilder(pascal)
    with pytest.raises(SourceItemError, match="outside the input"):
        builder.load("2008_000001")

    dtd = write_dtd(tmp_path / "dtd", [("banded/banded_0001.jpg", ["banded"], photo(H, W))])
    image = dtd / "images/banded/banded_0001.jpg"
    image.unlink()
    image.symlink_to(secret)
    builder = DtdBuilder(dtd)
    with pytest.raises(SourceItemError, match="outside the input"):
        builder.load(builder.items()[0])

    material = np.ones((H, W), np.uint8)
    osr = write_opensurfaces(tmp_path / "os", ["Brick"], ["Wall"], ["Kitchen"], [OsPhoto(7, photo(H, W), "Kitchen", material, material)])
    (osr / "photos/7.jpg").unlink()
    (osr / "photos/7.jpg").symlink_to(secret)
    builder = OpenSurfacesBuilder(osr)
    with pytest.raises(SourceItemError, match="outside the input"):
        builder.load("7")


def test_dtd_build_skips_a_link_out(tmp_path: Path) -> None:
    secret = _secret_image(tmp_path)
    dtd = write_dtd(tmp_path / "dtd", [("banded/banded_0001.jpg", ["banded"], photo(H, W, 1)),
                                       ("banded/banded_0002.jpg", ["banded"], photo(H, W, 2))])
    image = dtd / "images/banded/banded_0001.jpg"
    image.unlink()
    image.symlink_to(secret)
    result, out = _build(tmp_path, dtd)
    assert result.code == 0 and "skipped 1 image(s): path outside the input" in result.stdout, result.stdout
    assert not any(p.stem == "banded_0001" for p in out.rglob("*.jpg"))
    assert_not_in_tree(out)


# -- section 5: an index cannot ask for huge memory ---------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)`` (optionally followed by ``state``), as a hostile index would."""

    def __init__(self, func: object, args: tuple, state: object = None) -> None:
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self) -> tuple:
        return self.value


def _reconstruct() -> object:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


@pytest.mark.parametrize("bomb", [
    pytest.param(lambda: _Reduce(bytes, (2**62,)), id="bytes-2**62"),
    pytest.param(lambda: _Reduce(_reconstruct(), (np.ndarray, (10**12,), b"b")), id="reconstruct-10**12"),
    pytest.param(lambda: _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"), (1, (10**12,), np.dtype(object), False, ["a"])),
                 id="object-array-10**12"),
    pytest.param(lambda: _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"), (1, (10**5, 10**5), np.dtype("f8"), False, b"x")),
                 id="shape-10**10"),
])
def test_ade_index_memory_bomb(tmp_path: Path, bomb) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images())
    _pickle_index(root, objectcounts=bomb())
    with pytest.raises(SourceError, match="index_ade20k.pkl: cannot read the index"):
        Ade20k2021Builder(root)
    result, _ = _build(tmp_path, root)
    assert_one_error(result, "index_ade20k.pkl", "cannot read the index")


def test_ade_index_with_huge_counted_bytes(tmp_path: Path) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images())
    # BINBYTES8 declaring 2**62 bytes: the C unpickler would allocate before reading.
    (root / "index_ade20k.pkl").write_bytes(b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc")
    result, _ = _build(tmp_path, root)
    assert_one_error(result, "index_ade20k.pkl")


# -- section 6: wrong types, digits and tables: one line ----------------------------------------------


@pytest.mark.parametrize("changes,needle", [
    ({"filename": 7}, "'filename' must be a list of strings"),
    ({"filename": [1, 2]}, "'filename': element 0 is int"),
    ({"folder": {"a": 1}}, "'folder' must be a list of strings"),
    ({"objectnames": [None, "x", "y"]}, "'objectnames': element 0 is NoneType"),
    ({"scene": np.zeros((2, 2))}, "'scene' must be a list of strings"),
])
def test_ade_index_values_of_the_wrong_type(tmp_path: Path, changes: dict, needle: str) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images())
    _pickle_index(root, **changes)
    result, _ = _build(tmp_path, root)
    assert_one_error(result, "index_ade20k.pkl", needle)


@pytest.mark.parametrize("ndx", ["²", "1", 1e300, True, None, -4, 10**30])
def test_ade_json_class_ids_of_the_wrong_type(tmp_path: Path, ndx: object) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images(), pickle_index=False)
    path = root / "ADE20K_2021_17_01/images/ADE/training/a/abbey/ADE_train_00000001.json"
    ann = json.loads(path.read_text())
    ann["annotation"]["object"][0]["name_ndx"] = ndx
    path.write_text(json.dumps(ann))
    builder = Ade20k2021Builder(root)
    with pytest.raises(SourceItemError, match="not an ADE20K annotation") as err:
        builder.load(builder.items()[0])
    assert err.value.reason == "bad annotation"


def test_ade_json_nested_too_deeply(tmp_path: Path) -> None:
    root = write_ade20k_2021(tmp_path / "src", NAMES, _ade_images(), pickle_index=False)
    path = root / "ADE20K_2021_17_01/images/ADE/training/a/abbey/ADE_train_00000001.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    builder = Ade20k2021Builder(root)
    with pytest.raises(SourceItemError, match="not an ADE20K annotation"):
        builder.load(builder.items()[0])


@pytest.mark.parametrize("idx", ["²", "٣", "1_0", "99999999999999999999999"])
def test_scene_parsing_object_info_digits(tmp_path: Path, idx: str) -> None:
    labels = np.ones((H, W), np.uint8)
    base = write_scene_parsing(tmp_path / "src", {1: "wall"}, [("training", "ADE_train_00000001", photo(H, W), labels, "abbey")])
    info = base / "objectInfo150.txt"
    info.write_text(info.read_text() + f"{idx}\t0.1\t1\t1\tdoor\n")
    result, _ = _build(tmp_path, base)
    assert_one_error(result, "objectInfo150.txt", "row 3", "ASCII digits")


def test_scene_parsing_object_info_csv_bom_field_limit_and_bytes(tmp_path: Path) -> None:
    labels = np.ones((H, W), np.uint8)
    base = write_scene_parsing(tmp_path / "src", {1: "wall"}, [("training", "ADE_train_00000001", photo(H, W), labels, "abbey")])
    (base / "objectInfo150.txt").unlink()
    csv_path = base / "objectInfo150.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfIdx,Ratio,Train,Val,Stuff,Name\r\n1,0.1,1,1,0,wall;walls\r\n")
    assert Ade20kSceneParsingBuilder(base).classes == {1: ("wall", "walls")}
    csv_path.write_text("Idx,Ratio,Train,Val,Stuff,Name\r\n1,0.1,1,1,0," + "w" * 140_000 + "\r\n")
    with pytest.raises(SourceError, match="field larger than field limit"):
        Ade20kSceneParsingBuilder(base)
    csv_path.write_bytes(b"Idx,Ratio,Train,Val,Stuff,Name\r\n1,0.1,1,1,0,w\xff\xfe\r\n")
    result, _ = _build(tmp_path, base)
    assert_one_error(result, "objectInfo150.csv", "not UTF-8")


@pytest.mark.parametrize("line,needle", [
    ("٣: thing", "expected 'index: name'"),
    ("²: thing", "expected 'index: name'"),
    ("100000000000000000000000: huge", "above 65535"),
])
def test_pascal_labels_txt_numbers(tmp_path: Path, line: str, needle: str) -> None:
    context = np.zeros((H, W), np.uint16)
    context[:4] = 2
    root = write_pascal(tmp_path / "pascal", [PascalImage("2008_000001", photo(H, W), context=context)])
    labels = root / "context/labels.txt"
    labels.write_text(labels.read_text() + line + "\n")
    result, _ = _build(tmp_path, root)
    assert_one_error(result, "labels.txt", needle)


def test_pascal_part2ind_huge_loop_is_refused(tmp_path: Path) -> None:
    root = write_pascal(tmp_path / "pascal", [PascalImage("2008_000001", photo(H, W), objects=[])])
    part2ind = root / "part/part2ind.m"
    text = part2ind.read_text().replace("for ii = 1:10\n", "for ii = 1:99999999\n", 1)
    part2ind.write_text(text)
    with pytest.raises(SourceError, match="part2ind.m"):
        PascalBuilder(root)


@pytest.mark.parametrize("table,change", [
    ("label-substance-colors.csv", lambda t: t.replace(",1\r\n", ",٣\r\n", 1)),
    ("photos.csv", lambda t: t.replace("\r\n7,", "\r\n٧,", 1)),
    ("label-name-colors.csv", lambda t: t + "999,x," + "9" * 140_000 + "\r\n"),
])
def test_opensurfaces_tables(tmp_path: Path, table: str, change) -> None:
    material = np.ones((H, W), np.uint8)
    root = write_opensurfaces(tmp_path / "os", ["Brick"], ["Wall"], ["Kitchen"], [OsPhoto(7, photo(H, W), "Kitchen", material, material)])
    (root / table).write_bytes(change((root / table).read_bytes().decode()).encode())
    result, _ = _build(tmp_path, root)
    assert_one_error(result, table)


def test_opensurfaces_bom_and_directory_tables(tmp_path: Path) -> None:
    material = np.ones((H, W), np.uint8)
    root = write_opensurfaces(tmp_path / "os", ["Brick"], ["Wall"], ["Kitchen"], [OsPhoto(7, photo(H, W), "Kitchen", material, material)])
    path = root / "photos.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert OpenSurfacesBuilder(root).items() == ["7"]
    (root / "label-substance-colors.csv").unlink()
    (root / "label-substance-colors.csv").mkdir()
    result, _ = _build(tmp_path, root)
    assert_one_error(result, "label-substance-colors.csv", "directory")


def test_pascal_label_map_beyond_the_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    context = np.zeros((H, W), np.uint16)
    context[:4] = 2
    root = write_pascal(tmp_path / "pascal", [PascalImage("2008_000001", photo(H, W), context=context)])
    monkeypatch.setenv("CONCEPTS_MAX_PIXELS", str(H * W - 1))
    with pytest.raises(SourceItemError, match="LabelMap of 16 x 12 = 192 pixels exceeds the limit") as err:
        PascalBuilder(root).load("2008_000001")
    assert err.value.reason == "image too large"
