"""Part 3 of issue 14: the random-weights baseline, IoU-threshold sweeps and several quantiles in one run."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from concepts.dissect.run import dissect
from hostile import assert_one_error, invoke
from test_dissect_trust import REFERENCE, TwoUnits, planted_dataset

GRID = [round(0.01 * i, 2) for i in range(1, 21)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_dataset(tmp_path_factory.mktemp("planted") / "ds", n=16)


def _run(ds, out, model=None, **kw):
    args = dict(layers="pool", out=out, normalize="none", quantile=0.05, workers=0, batch_size=5, significance=False)
    return dissect(model if model is not None else TwoUnits(), ds, **(args | kw))


@pytest.fixture(scope="module")
def multi(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "out"
    _run(planted, out, quantile=[0.05, 0.1, 0.02], baseline="random", seed=7)
    return out


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _expected_sweep(matrices, quantile):
    """Detectors and unique concepts per IoU threshold, recomputed from the matrices file by plain loops."""
    with np.load(matrices) as z:
        iou, primary, cats = z["iou"].astype(np.float64), z["primary"], [str(c) for c in z["categories"]]
    rows = []
    for t in GRID:
        per_cat = {c: [0, set()] for c in cats}
        total, labels = 0, set()
        for u in range(iou.shape[0]):
            best_cat, best_label, best_score = None, None, -1.0
            for c in range(len(cats)):
                own = [j for j in range(iou.shape[1]) if primary[j] == c]
                score, lab = max((iou[u, j], -j) for j in own)
                if score >= best_score:  # ties go to the later category, as the reference's
                    best_cat, best_label, best_score = c, -lab, score
            if best_score > t:
                total += 1
                labels.add(best_label)
                per_cat[cats[best_cat]][0] += 1
                per_cat[cats[best_cat]][1].add(best_label)
        rows.append([f"{quantile:g}", f"{t:g}", "all", str(total), str(len(labels))])
        rows += [[f"{quantile:g}", f"{t:g}", c, str(n), str(len(s))] for c, (n, s) in per_cat.items()]
    return rows


def test_sweep_counts_equal_counts_from_the_matrices(multi):
    rows = _csv(multi / "sweep_pool.csv")
    assert rows[0] == ["quantile", "iou_threshold", "category", "detectors", "unique_concepts"]
    got = [[f"{float(r[0]):g}", f"{float(r[1]):g}", *r[2:]] for r in rows[1:]]
    expected = _expected_sweep(multi / "matrices_pool.npz", 0.05)
    expected += _expected_sweep(multi / "matrices_pool.q0.1.npz", 0.1)
    expected += _expected_sweep(multi / "matrices_pool.q0.02.npz", 0.02)
    assert got == expected
    summary = json.loads((multi / "summary.json").read_text())["pool"]
    at = next(r for r in got if r[:3] == ["0.05", "0.04", "all"])
    assert [summary["detectors"], summary["unique_concepts"]] == [int(at[3]), int(at[4])]
    assert set(summary["quantiles"]) == {"0.1", "0.02"}


def test_each_quantile_equals_a_separate_single_quantile_run(planted, multi, tmp_path):
    for q, tag in ((0.05, None), (0.1, "q0.1"), (0.02, "q0.02")):
        out = tmp_path / f"single{q}"
        _run(planted, out, quantile=q)
        name = "pool" if tag is None else f"pool.{tag}"
        assert np.array_equal(np.load(multi / f"thresholds_{name}.npy"), np.load(out / "thresholds_pool.npy"))
        assert (multi / f"tally_{name}.csv").read_bytes() == (out / "tally_pool.csv").read_bytes()
        with np.load(multi / f"matrices_{name}.npz") as a, np.load(out / "matrices_pool.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    # The first quantile's outputs are the run's main ones, as a single run's.
    assert (multi / "topk_pool.csv").read_bytes() == (tmp_path / "single0.05" / "topk_pool.csv").read_bytes()
    assert _csv(tmp_path / "single0.05" / "sweep_pool.csv")[1:] == [r for r in _csv(multi / "sweep_pool.csv")[1:] if r[0] == "0.05"]


def _random_copy(seed):
    """The baseline's documented rule, restated: a copy whose modules' reset_parameters() run in order under the seed."""
    model = copy.deepcopy(TwoUnits())
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def test_baseline_is_a_random_model_dissected_in_the_same_run(planted, multi, tmp_path):
    summary = json.loads((multi / "summary.json").read_text())["pool"]
    base = summary["baseline"]
    assert set(base) == {"detectors", "unique_concepts", "categories"}
    assert set(base["categories"]) == {"color", "object"}
    rows = _csv(multi / "tally_pool.baseline.csv")
    assert rows[0] == REFERENCE
    # The planted model's red unit scores far above anything a random 1x1 convolution of these images gives.
    trained = {r[0]: r for r in _csv(multi / "tally_pool.csv")[1:]}
    assert float(trained["1"][3]) > 0.4
    assert _csv(multi / "tally_pool.baseline.csv") != _csv(multi / "tally_pool.csv")
    out = tmp_path / "random"
    _run(planted, out, model=_random_copy(7))
    assert (out / "tally_pool.csv").read_bytes() == (multi / "tally_pool.baseline.csv").read_bytes()
    assert np.array_equal(np.load(out / "thresholds_pool.npy"), np.load(multi / "thresholds_pool.baseline.npy"))
    alone = json.loads((out / "summary.json").read_text())["pool"]
    assert base == {k: alone[k] for k in ("detectors", "unique_concepts", "categories")}
    # Another seed draws other weights.
    other = tmp_path / "seed8"
    _run(planted, other, baseline="random", seed=8)
    assert np.load(other / "thresholds_pool.baseline.npy").tolist() != np.load(multi / "thresholds_pool.baseline.npy").tolist()


class Bare(TwoUnits):
    """A parameter of its own, which no reset_parameters() covers."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return super().forward(x) * self.scale


def test_baseline_refused_when_weights_cannot_be_redrawn(planted, tmp_path):
    from concepts.errors import UsageError

    with pytest.raises(UsageError, match="scale") as e:
        _run(planted, tmp_path / "out", model=Bare(), baseline="random")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_baseline_and_quantiles(planted, tmp_path, monkeypatch):
    import pathlib

    monkeypatch.chdir(pathlib.Path(__file__).parent)
    base = ["dissect", str(planted), "--model", "synth:red_unit_net", "--normalize", "none", "--layer", "pool", "--workers", "0", "--no-significance"]
    out = invoke([*base, "-o", str(tmp_path / "a"), "--quantile", "0.1,0.2", "--baseline", "random"])
    assert out.code == 0, out.stderr + out.stdout
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["args"]["quantile"] == 0.1 and record["args"]["sweep_quantiles"] == [0.2]
    files = record["layers"]["pool"]["files"]
    assert {"tally.baseline", "tally.q0.2", "sweep"} <= set(files)
    assert all((tmp_path / "a" / f).is_file() for f in files.values())
    assert "baseline" in json.loads((tmp_path / "a" / "summary.json").read_text())["pool"]
    assert_one_error(invoke([*base, "-o", str(tmp_path / "b"), "--baseline", "zeros"]), "zeros")
