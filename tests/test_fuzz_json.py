"""Property-based fuzzing of the JSON readers (COCO, labelme), RLE runs and concept mapping files.

Whatever the file holds, the only allowed outcomes are success or a ConceptsError whose message is
one line; any other exception (KeyError, TypeError, RecursionError, OverflowError, MemoryError, a
pycocotools error) is a bug. The number of examples is bounded by the profile in conftest.py
(CONCEPTS_FUZZ_EXAMPLES=N for more); a failure prints the minimal input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concepts.builders.coco import CocoBuilder, _decode_rle, rle_counts
from concepts.builders.labelme_json import LabelmeJsonBuilder
from concepts.errors import ConceptsError
from concepts.mapping import load_mapping
from fake_exports import rgb, save_image

#: Any JSON value (NaN and infinities included, as Python's json reads and writes them).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
NUMBER = st.one_of(st.integers(min_value=-(10**12), max_value=10**12), st.floats(), st.sampled_from([0, 1, 4, 8, 2**31, 10**23]))
NAME = st.one_of(st.sampled_from(["dog", "image", "color", "a/b", "x\ny", "<b>", "", " pad", "ok-name", "Person (left)"]),
                 st.text(max_size=12))


def _one_line(error: ConceptsError) -> None:
    text = str(error)
    assert text and "\n" not in text and "\r" not in text, repr(text)


def _either(fn) -> Any:
    """Run ``fn``; a ConceptsError must be one line; anything else propagates (and fails the test)."""
    try:
        return fn()
    except ConceptsError as e:
        _one_line(e)
        return None


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the valid shape of a value, sometimes any JSON value in its place."""
    return st.one_of(valid, valid, JSON)


SEGMENTATION = st.one_of(
    st.lists(st.lists(NUMBER, max_size=10), max_size=3),
    st.fixed_dictionaries({"size": _maybe(st.lists(st.integers(-3, 12), min_size=2, max_size=2)),
                           "counts": st.one_of(st.lists(st.integers(-(10**20), 10**20), max_size=8),
                                               st.lists(st.integers(0, 30), max_size=8),
                                               st.text(alphabet=[chr(c) for c in range(40, 120)], max_size=12), JSON)}),
    JSON,
)
ANNOTATION = st.fixed_dictionaries({
    "id": _maybe(st.integers(1, 5)),
    "image_id": _maybe(st.sampled_from([1, 2])),
    "category_id": _maybe(st.sampled_from([1, 2, 10**23])),
    "segmentation": SEGMENTATION,
    "bbox": _maybe(st.lists(NUMBER, min_size=4, max_size=4)),
    "attributes": _maybe(st.dictionaries(st.sampled_from(["rotation", "colour", "occluded"]), JSON, max_size=2)),
})
COCO = st.fixed_dictionaries({
    "images": _maybe(st.lists(st.fixed_dictionaries({
        "id": _maybe(st.sampled_from([1, 2])),
        "width": _maybe(st.sampled_from([8, 0, -1, 2**40])) | NUMBER,
        "height": _maybe(st.sampled_from([6, 1])) | NUMBER,
        "file_name": _maybe(st.sampled_from(["a.jpg", "../a.jpg", "/etc/passwd", "a\x00.jpg", "missing.jpg"])),
    }), max_size=3)),
    "annotations": _maybe(st.lists(ANNOTATION, max_size=4)),
    "categories": _maybe(st.lists(st.fixed_dictionaries({"id": _maybe(st.sampled_from([1, 2, 10**23])), "name": _maybe(NAME)}),
                                  max_size=3)),
})


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=COCO)
def test_fuzz_coco_files(tmp_path: Path, data: dict) -> None:
    root = tmp_path / "coco"
    if not (root / "a.jpg").exists():
        save_image(root / "a.jpg", rgb(6, 8))
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    builder = CocoBuilder(root)
    items = _either(builder.items) or []
    for item in items:
        record = _either(lambda: builder.load(item))
        if record is not None:
            for layers in record.pixel.values():
                assert all(layer.shape == record_size(builder, item) for layer in layers)


def record_size(builder: CocoBuilder, item: int) -> tuple[int, int]:
    return builder._parse()[item].size


@given(size=st.lists(st.one_of(st.integers(-5, 40), st.sampled_from([0, 2**31, 10**23, 200000])), min_size=0, max_size=3),
       counts=st.one_of(st.lists(st.integers(-(10**30), 10**30), max_size=10), st.lists(st.integers(0, 50), max_size=10),
                        st.text(max_size=16), JSON))
def test_fuzz_rle_runs(size: list, counts: Any) -> None:
    try:
        h, w, runs = rle_counts({"size": size, "counts": counts})
    except ValueError as e:  # SourceItemError included: the builder reports it against the annotation
        assert "\n" not in str(e)
        return
    assert [h, w] == size and sum(runs) == h * w and min(runs, default=0) >= 0
    assert _decode_rle(h, w, runs).shape == (h, w)


POINT = st.lists(NUMBER, min_size=2, max_size=2)
SHAPE = st.fixed_dictionaries({
    "label": _maybe(NAME),
    "shape_type": _maybe(st.sampled_from(["polygon", "rectangle", "circle", "mask", "line", "point", "oriented_rectangle", "weird"])),
    "points": _maybe(st.lists(POINT, max_size=5)),
    "mask": _maybe(st.sampled_from(["iVBORw0KGgo=", "AAAA", ""])),
})
LABELME = st.fixed_dictionaries({
    "shapes": _maybe(st.lists(SHAPE, max_size=4)),
    "flags": _maybe(st.dictionaries(NAME, st.booleans() | JSON, max_size=3)),
    "imagePath": _maybe(st.sampled_from(["a.jpg", "../a.jpg", "/etc/hostname", "missing.jpg", None])),
    "imageData": _maybe(st.sampled_from([None, "", "AAAA"])),
    "imageHeight": _maybe(st.sampled_from([6, 0, None])) | NUMBER,
    "imageWidth": _maybe(st.sampled_from([8, 0, None])) | NUMBER,
})


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=LABELME)
def test_fuzz_labelme_files(tmp_path: Path, data: dict) -> None:
    root = tmp_path / "lm"
    if not (root / "a.jpg").exists():
        save_image(root / "a.jpg", rgb(6, 8))
    (root / "x.json").write_text(json.dumps(data))
    builder = LabelmeJsonBuilder(root)
    for item in _either(builder.items) or []:
        _either(lambda: builder.load(item))


ENTRY = st.one_of(
    st.none(), st.just("drop"), NAME,
    st.fixed_dictionaries({}, optional={"category": _maybe(NAME), "name": _maybe(NAME), "synonyms": _maybe(st.lists(NAME, max_size=2)),
                                        "drop": st.booleans()}),
    JSON,
)
MAPPING = st.fixed_dictionaries({}, optional={
    "version": _maybe(st.just(1)),
    "unmapped": _maybe(st.sampled_from(["keep", "drop"])),
    "labels": _maybe(st.dictionaries(NAME, ENTRY, max_size=3)),
    "attributes": _maybe(st.dictionaries(NAME, st.one_of(ENTRY, st.fixed_dictionaries(
        {}, optional={"category": _maybe(NAME), "values": _maybe(st.dictionaries(NAME, ENTRY, max_size=2))})), max_size=2)),
    "tags": _maybe(st.fixed_dictionaries({}, optional={"category": _maybe(NAME)})),
})


def _toml(value: Any, prefix: str = "") -> str:
    """A small TOML writer for the fuzzed tables (strings, numbers, booleans, lists, tables)."""
    def scalar(v: Any) -> str | None:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            items = [scalar(x) for x in v]
            return None if None in items else "[" + ", ".join(items) + "]"
        if isinstance(v, dict):
            items = [f"{json.dumps(k)} = {scalar(x)}" for k, x in v.items() if scalar(x) is not None]
            return "{" + ", ".join(items) + "}"
        return None  # TOML has no null

    lines = [f"{json.dumps(k)} = {scalar(v)}" for k, v in value.items() if scalar(v) is not None]
    return "\n".join(lines) + "\n"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=MAPPING, toml=st.booleans(), probe=st.lists(NAME, max_size=3))
def test_fuzz_mapping_files(tmp_path: Path, data: dict, toml: bool, probe: list[str]) -> None:
    path = tmp_path / ("m.toml" if toml else "m.yaml")
    path.write_text(_toml(data) if toml else yaml.safe_dump(data, allow_unicode=True))
    mapping = _either(lambda: load_mapping(path))
    if mapping is None:
        return
    for name in probe:
        for concept in (mapping.shape(name), mapping.tag(name), mapping.attribute(name, "true"), mapping.attribute(name, name)):
            assert concept is None or (concept.category and concept.names)


@given(text=st.one_of(st.text(max_size=40), st.sampled_from(["[" * 1200, "a: " + "[" * 1200, "{" * 1200,
                                                              "a = " + "[" * 1200, "x: !!python/object:os.system ls"])),
       toml=st.booleans())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_mapping_text(tmp_path: Path, text: str, toml: bool) -> None:
    path = tmp_path / ("m.toml" if toml else "m.yaml")
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _either(lambda: load_mapping(path))


def test_fuzz_profile_is_bounded() -> None:
    assert settings.default.max_examples <= 10000
    assert np.isfinite(settings.default.max_examples)
