"""Significance wired into ``concepts dissect``: planted units, output columns, summary counts, resume, options."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from concepts.cli import app
from concepts.dissect.run import DissectConfig, dissect
from concepts.dissect.significance import COLUMNS, Significance, intervals_from_matrices
from hostile import assert_one_error, invoke
from synth import SynthRow, write_broden

N, SIZE, SEG = 24, 32, 16
REFERENCE = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in ("color", "object") for f in ("label", "truth", "activation", "intersect", "iou")]


def planted_dataset(root, n=N, seed=0):
    """Red squares labelled ``square`` (and ``red-c``) in the left half; green noise and unseen ``blob`` labels in the right half.

    The noise stays two JPEG blocks away from the squares (a red square raises the decoded green
    around it), so nothing in the labels follows it: the noise unit's label is chance.
    """
    rng = np.random.default_rng(seed)
    labels = {1: ("red-c", "color"), 2: ("grey-c", "color"), 3: ("square", "object"), 4: ("ground", "object"), 5: ("blob", "object")}
    rows = []
    for i in range(n):
        obj = np.full((SEG, SEG), 4)
        y0, x0 = rng.integers(0, SEG - 5), rng.integers(0, 3)
        obj[y0 : y0 + 5, x0 : x0 + 5] = 3
        by, bx = rng.integers(0, SEG - 4), rng.integers(9, SEG - 4)
        obj[by : by + 4, bx : bx + 4] = 5
        color = np.where(obj == 3, 1, 2)
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        img[np.kron(obj == 3, np.ones((2, 2), bool)), 0] = 230
        img[:, 18:, 1] = np.kron(rng.integers(0, 250, (SIZE // 2, 7)), np.ones((2, 2), np.int64)).astype(np.uint8)
        rows.append(SynthRow(f"im{i:03d}", img, {"color": [color], "object": [obj]}))
    return write_broden(root, rows, labels, ["color", "object"])


class TwoUnits(nn.Module):
    """Unit 1 (0-based 0) is the red channel, planted on ``square``; unit 2 the green noise channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
            self.conv.bias.zero_()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(x))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_dataset(tmp_path_factory.mktemp("planted") / "ds")


def _run(ds, out, **kw):
    args = dict(layers="pool", out=out, normalize="none", quantile=0.05, workers=0, batch_size=5)
    return dissect(TwoUnits(), ds, **(args | kw))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sig_run(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("sig") / "out"
    _run(planted, out)
    return out


def test_planted_unit_is_significant_with_narrow_interval(sig_run):
    rows = {r["unit"]: r for r in _rows(sig_run / "tally_pool.csv")}
    red, noise = rows["1"], rows["2"]
    assert red["label"] in {"square", "red-c"} and float(red["score"]) > 0.4
    assert red["significant"] == "1" and float(red["p-value"]) < 1e-3 and float(red["z"]) > 5
    low, high = float(red["iou-low"]), float(red["iou-high"])
    assert low <= float(red["score"]) <= high and high - low < 0.1
    # The noise channel's masks fall on labels at random: its score is what chance gives.
    assert noise["significant"] == "0" and float(noise["p-value"]) > 0.05


def test_columns_in_order_and_summary_counts(sig_run):
    with open(sig_run / "tally_pool.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == REFERENCE + list(COLUMNS)
    rows = _rows(sig_run / "tally_pool.csv")
    summary = json.loads((sig_run / "summary.json").read_text())["pool"]
    sig = [r for r in rows if r["significant"] == "1"]
    assert summary["significant_detectors"] == len(sig) == 1
    assert summary["significant_unique_concepts"] == len({r["label"] for r in sig})
    for cat in ("color", "object"):
        mine = [r for r in sig if r["category"] == cat]
        assert summary["categories"][cat]["significant_detectors"] == len(mine)
        assert summary["categories"][cat]["significant_unique_concepts"] == len({r["label"] for r in mine})
    assert summary["significant_detectors"] <= summary["detectors"]


def test_matrices_recompute_the_intervals(sig_run):
    with np.load(sig_run / "matrices_pool.npz") as z:
        m = {k: z[k] for k in z.files}
        assert np.array_equal(m["sig_candidates"][:, 0] >= 0, m["iou"].max(1) > 0)
    low, high = intervals_from_matrices(m, samples=1000, seed=0)
    for r in _rows(sig_run / "tally_pool.csv"):
        u = int(r["unit"]) - 1
        if r["iou-low"]:
            assert float(r["iou-low"]) == pytest.approx(low[u, 0], abs=1e-12)
            assert float(r["iou-high"]) == pytest.approx(high[u, 0], abs=1e-12)


def test_no_significance_gives_todays_columns(planted, sig_run, tmp_path):
    _run(planted, tmp_path / "plain", significance=False)
    with open(tmp_path / "plain" / "tally_pool.csv", newline="") as f:
        plain = list(csv.reader(f))
    with open(sig_run / "tally_pool.csv", newline="") as f:
        full = list(csv.reader(f))
    assert plain[0] == REFERENCE
    assert plain == [row[: len(REFERENCE)] for row in full]
    with np.load(tmp_path / "plain" / "matrices_pool.npz") as z:
        assert not [k for k in z.files if k.startswith("sig_")]
    summary = json.loads((tmp_path / "plain" / "summary.json").read_text())["pool"]
    assert "significant_detectors" not in summary


def _files(out):
    data = {}
    for p in sorted(out.iterdir()):
        if not p.is_file() or p.name == "run.json":
            continue
        if p.suffix == ".npz":
            with np.load(p) as z:
                data |= {f"{p.name}:{k}": z[k].tobytes() for k in z.files}
        else:
            data[p.name] = p.read_bytes()
    return data


def test_interrupted_significance_pass_resumes_identically(planted, sig_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = Significance.update
    calls = {"n": 0}

    def stop(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Significance, "update", stop)
        with pytest.raises(KeyboardInterrupt):
            _run(planted, out)
    assert not (out / "tally_pool.csv").exists()
    record = _run(planted, out)
    assert record["resumed"]["tally_images"] == N and record["significance_restarted"] is True
    assert _files(out) == _files(sig_run)
    assert not (out / ".partial").exists()


def test_one_image_skips_significance(planted, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        _run(planted, tmp_path / "one", limit=1)
    assert "significance skipped" in caplog.text
    with open(tmp_path / "one" / "tally_pool.csv", newline="") as f:
        assert next(csv.reader(f)) == REFERENCE


def test_significance_options_in_the_resume_key(planted, sig_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sig_run, out)
    again = _run(planted, out)
    assert again["recomputed"] == []
    changed = _run(planted, out, alpha=0.01)
    assert changed["recomputed"] == ["pool"]
    assert json.loads((out / "run.json").read_text())["layers"]["pool"]["params"]["significance"] == {"alpha": 0.01, "shifts": 8, "bootstrap": 1000, "seed": 0}


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--alpha", "0"], "--alpha 0.0"),
        (["--null-shifts", "1"], "--null-shifts 1"),
        (["--bootstrap", "1"], "--bootstrap 1"),
        (["--seed", "-1"], "--seed -1"),
        (["--quantile", "0.01,x"], "'x' is not a number"),
        (["--quantile", "0.01,0.01"], "given twice"),
        (["--quantile", "0.01,1.5"], "--quantile 1.5"),
    ],
)
def test_bad_options_are_one_line(planted, tmp_path, option, needle, monkeypatch):
    import pathlib

    monkeypatch.chdir(pathlib.Path(__file__).parent)
    out = invoke(["dissect", str(planted), "--model", "synth:red_unit_net", "--layer", "pool", "-o", str(tmp_path / "o"), "--workers", "0", *option])
    assert_one_error(out, needle)
    assert not (tmp_path / "o").exists()


def test_cli_significance_flags(planted, tmp_path, monkeypatch):
    import pathlib

    monkeypatch.chdir(pathlib.Path(__file__).parent)
    base = ["dissect", str(planted), "--model", "synth:red_unit_net", "--normalize", "none", "--layer", "pool", "--workers", "0", "--quantile", "0.05"]
    out = invoke([*base, "-o", str(tmp_path / "a"), "--null-shifts", "5", "--bootstrap", "200", "--alpha", "0.1", "--seed", "3"])
    assert out.code == 0, out.stderr + out.stdout
    params = json.loads((tmp_path / "a" / "run.json").read_text())["layers"]["pool"]["params"]
    assert params["significance"] == {"alpha": 0.1, "shifts": 5, "bootstrap": 200, "seed": 3}
    out = invoke([*base, "-o", str(tmp_path / "b"), "--no-significance"])
    assert out.code == 0
    assert json.loads((tmp_path / "b" / "run.json").read_text())["layers"]["pool"]["params"]["significance"] is None
    with open(tmp_path / "b" / "tally_pool.csv", newline="") as f:
        assert "p-value" not in next(csv.reader(f))
