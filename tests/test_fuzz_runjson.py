"""Property-based fuzzing of ``run.json``: any value in any field the report reads is either used or refused in one line.

A valid run folder is written once; each example replaces one to three fields of its ``run.json``
with arbitrary JSON (NaN, nesting, wrong types, paths) and opens it as the report does. The only
exception allowed out is a ConceptsError, and no path outside the run folder is ever opened.
"""

from __future__ import annotations

import builtins
import copy
import json
import os
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from concepts.errors import ConceptsError  # noqa: E402
from concepts.dissect.plots import detectors_per_category, detectors_per_concept, load_run, unit_table  # noqa: E402
from test_report import CONV5, write_run  # noqa: E402

PARAMS = ["model", "weights", "layer", "dataset", "categories", "quantile", "iou_threshold", "union", "normalize", "split", "limit", "top_k"]
PLACES = (
    [("layers",), ("layers", "conv5"), ("layers", "conv5", "params"), ("layers", "conv5", "files"), ("args",), ("images",), ("args", "layers")]
    + [("layers", "conv5", "params", k) for k in PARAMS]
    + [("layers", "conv5", "files", k) for k in ("tally", "topk", "thresholds", "matrices")]
    + [("args", k) for k in ("model", "weights", "dataset", "iou_threshold", "pretrained", "normalize")]
)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.just(10**400) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.sampled_from(["/etc/passwd", "../x.csv", "tally_conv5.csv", "conv5", "object", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[Path, dict]:
    run = write_run(tmp_path_factory.mktemp("fuzz") / "run", {"conv5": CONV5})
    return run, json.loads((run / "run.json").read_text())


def _put(record: dict, place: tuple[str, ...], value) -> None:
    node = record
    for key in place[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return
        node = node[key]
    if isinstance(node, dict):
        node[place[-1]] = value


@given(changes=st.lists(st.tuples(st.sampled_from(PLACES), values), min_size=1, max_size=3))
def test_any_run_json_is_used_or_refused_in_one_line(valid, changes, monkeypatch):
    run, record = valid
    record = copy.deepcopy(record)
    for place, value in changes:
        _put(record, place, value)
    (run / "run.json").write_text(json.dumps(record))
    root = os.path.realpath(run)
    opened = []
    real_open = builtins.open

    def watching_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            opened.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", watching_open)
        try:
            r = load_run(run)
            for layer in r.layers:
                for kind in ("tally", "topk", "thresholds"):
                    r.file(layer, kind)
                unit_table(r, layer)
                detectors_per_concept(r, layer)
                r.iou_threshold(layer)
            detectors_per_category(r)
        except ConceptsError as e:
            assert "\n" not in str(e)
    # Libraries read system and installation files on first use; those are not the run's.
    ignored = ("/sys/", "/proc/", os.path.realpath(sys.prefix) + os.sep, os.path.realpath(sys.base_prefix) + os.sep)
    outside = [p for p in opened if not (p == root or p.startswith(root + os.sep) or p.startswith(ignored))]
    assert not outside, outside
