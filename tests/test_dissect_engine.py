"""Dissection engine: a hand-built red unit is found; the fast tally equals a slow one; exact quantiles."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from concepts.dissect.data import Item
from concepts.dissect.run import DissectConfig, dissect
from concepts.dissect.tally import UNIONS, Tally
from concepts.dissect.thresholds import ExactQuantile
from synth import SynthRow, toy_dataset, write_broden


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n=12)


def _run(ds, out, **kw):
    cfg = DissectConfig(dataset=ds, layers=kw.pop("layers", ["pool"]), out=out, model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, batch_size=5, **kw)
    return dissect(cfg)


def test_red_unit_is_named(toy, tmp_path):
    record = _run(toy, tmp_path / "out", layers=["pool", "conv"])
    for layer in ("pool", "conv"):
        with open(tmp_path / "out" / f"tally_{layer}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        header = list(rows[0])
        assert header[:4] == ["unit", "category", "label", "score"]
        assert header[4:9] == ["color-label", "color-truth", "color-activation", "color-intersect", "color-iou"]
        assert header[-10:-5] == ["scene-label", "scene-truth", "scene-activation", "scene-intersect", "scene-iou"]
        assert header[-5:] == ["p-value", "z", "iou-low", "iou-high", "significant"]
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)
        red = next(r for r in rows if r["unit"] == "3")  # channel 2, 1-based
        assert red["label"] in {"red-c", "square"}
        assert float(red["score"]) > 0.5
        assert red["color-label"] == "red-c" and float(red["color-iou"]) > 0.5
        assert int(red["color-intersect"]) <= int(red["color-truth"])
    m = np.load(tmp_path / "out" / "matrices_pool.npz")
    assert m["iou"].shape == (4, 6) and m["intersection"].shape == (4, 6)
    assert (m["intersection"][:, 0] == 0).all()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pool"]["detectors"] >= 1
    assert record["summary"]["conv"]["units"] == 4
    top = list(csv.DictReader(open(tmp_path / "out" / "topk_pool.csv", newline="")))
    assert {r["unit"] for r in top} == {"1", "2", "3", "4"}
    assert not list((tmp_path / "out").glob(".features-*"))  # the feature cache is removed


def test_thresholds_equal_numpy_quantile_on_model_activations(toy, tmp_path):
    from synth import red_unit_net

    from concepts.broden.reader import open_dataset

    _run(toy, tmp_path / "out", layers=["conv"])
    ds = open_dataset(toy)
    net = red_unit_net()
    with torch.no_grad():
        acts = torch.cat([net.conv(torch.from_numpy(np.array(ds.load_image(s))).permute(2, 0, 1).float()[None]) for s in ds.samples])
    flat = acts.transpose(0, 1).reshape(4, -1).numpy()
    expected = np.quantile(flat, 1 - 0.1, axis=1)
    got = np.load(tmp_path / "out" / "thresholds_conv.npy")
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("kind", ["normal", "relu", "ties", "constant", "tiny"])
def test_exact_quantile_matches_numpy(kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 6, 5, 7)).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "ties":
        x = np.round(x * 3) / 3
    elif kind == "constant":
        x[:, 1] = 2.5
    elif kind == "tiny":
        x = x[:1, :, :1, :2]
    for level in (0.995, 0.5, 0.9):
        q = ExactQuantile(x.shape[1], level, bins=8, cap=5)
        while q.needs_pass():
            for i in range(0, len(x), 9):
                q.update(torch.from_numpy(x[i : i + 9]))
            q.end_pass()
        # The reference takes percentiles of its float64 feature cache: interpolation in float64.
        expected = np.quantile(x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).astype(np.float64), level, axis=1)
        assert q.result().dtype == np.float64
        np.testing.assert_array_equal(q.result(), expected)


def slow_tally(feats, items, thresholds, primary, nc, union):
    """Straight from DISSECTION.md: every image, unit and label, no skipping."""
    n, units = feats.shape[:2]
    nl = len(primary)
    truth = np.zeros(nl, np.int64)
    inter = np.zeros((units, nl), np.int64)
    act_cat = np.zeros((units, nc), np.int64)
    for i, it in enumerate(items):
        layers = it.layers.numpy()
        for c in range(1, nl):
            truth[c] += int((layers == c).sum())
        for s in it.scalars:
            truth[s] += it.sh * it.sw
        present_any = {int(primary[c]) for c in range(1, nl) if (layers == c).any()} | {int(primary[s]) for s in it.scalars}
        for u in range(units):
            up = F.interpolate(feats[i : i + 1, u : u + 1], size=(it.sh, it.sw), mode="bilinear", align_corners=False)[0, 0].numpy()
            mask = up > thresholds[u]
            size = int(mask.sum())
            under = {int(primary[c]) for c in range(1, nl) if ((layers == c) & mask[None]).any()}
            for c in range(1, nl):
                inter[u, c] += int(((layers == c) & mask[None]).sum())
            for s in it.scalars:
                inter[u, s] += size
            if union == "ndlite":
                cats = under | {int(primary[s]) for s in it.scalars} if size else set()
            elif union == "netdissect":
                cats = present_any
            else:
                cats = set(range(nc))
            for cat in cats:
                if cat >= 0:
                    act_cat[u, cat] += size
    act = np.zeros((units, nl), np.int64)
    for c in range(nl):
        if primary[c] >= 0:
            act[:, c] = act_cat[:, primary[c]]
    return truth, inter, act


@pytest.mark.parametrize("union", UNIONS)
def test_fast_tally_equals_slow(union):
    rng = np.random.default_rng(7)
    units, nc = 5, 3
    primary = np.array([-1, 0, 0, 1, 1, 1, -1, 2, 2])  # label 6 is a gap in label.csv
    sizes = [(8, 8), (8, 8), (6, 10), (8, 8), (6, 10), (8, 8), (8, 8)]
    feats = torch.from_numpy(rng.standard_normal((len(sizes), units, 4, 4)).astype(np.float32))
    feats[3, 2] -= 5  # a unit far below its threshold in one image
    items = []
    for i, (sh, sw) in enumerate(sizes):
        a = rng.choice([0, 1, 2], size=(sh, sw))
        b = rng.choice([0, 3, 4, 5], size=(sh, sw))
        b2 = np.where(rng.random((sh, sw)) < 0.3, 5, 0)  # a second layer of the same category
        layers = np.stack([a, b, b2]) if i % 3 else np.stack([a])
        scalars = [[7], [8, 7], [], [7, 7], [8], [], [7]][i]
        items.append(Item(i, None, torch.from_numpy(layers.astype(np.int64)), scalars, sh, sw))
    thresholds = np.quantile(feats.transpose(0, 1).reshape(units, -1).numpy(), 0.8, axis=1).astype(np.float32)
    fast = Tally(units, primary, nc, thresholds, union)
    fast.update(feats[:4], items[:4])
    fast.update(feats[4:], items[4:])
    got = fast.arrays()
    truth, inter, act = slow_tally(feats, items, thresholds, primary, nc, union)
    np.testing.assert_array_equal(got["truth"], truth)
    np.testing.assert_array_equal(got["intersection"], inter)
    np.testing.assert_array_equal(got["activation"], act)
    assert inter.sum() > 0 and act.sum() > 0


def test_image_level_only_dataset_and_union_option(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        if i % 2:
            img[..., 0] = 250
        rows.append(SynthRow(f"im{i}", img, {}, {"scene": [1 if i % 2 else 2]}))
    ds = write_broden(tmp_path / "ds", rows, {1: ("reddish-s", "scene"), 2: ("other-s", "scene")}, ["scene"])
    for union in UNIONS:
        _run(ds, tmp_path / union, layers=["conv"], union=union)
        m = np.load(tmp_path / union / "matrices_conv.npz")
        assert m["truth"].tolist() == [0, 3 * 256, 3 * 256]
        # Every active pixel of an image with a scene label counts for scene, whatever the rule.
        np.testing.assert_array_equal(m["activation"][:, 1], m["intersection"][:, 1] + m["intersection"][:, 2])


def _random_items(rng, n, sh, sw, nl_per_layer=((0, 1, 2), (0, 3, 4, 5))):
    """Items with one to three label layers (two of the same category on some) and image-level labels on some."""
    items = []
    for i in range(n):
        a = rng.choice(nl_per_layer[0], size=(sh, sw))
        b = rng.choice(nl_per_layer[1], size=(sh, sw))
        b2 = np.where(rng.random((sh, sw)) < 0.3, 5, 0)
        layers = [np.stack([a, b, b2]), np.stack([a]), np.stack([a, b])][i % 3]
        scalars = [[7], [], [8, 7], [7, 7]][i % 4]
        items.append(Item(i, None, torch.from_numpy(layers.astype(np.int32)), scalars, sh, sw))
    return items


def _tally_arrays(feats, items, thresholds, union, batch=3, **flags):
    primary = np.array([-1, 0, 0, 1, 1, 1, -1, 2, 2])
    t = Tally(feats.shape[1], primary, 3, thresholds, union)
    for name, value in flags.items():
        setattr(t, name, value)
    for s in range(0, len(items), batch):
        t.update(feats[s : s + batch], items[s : s + batch])
    return t.arrays()


def _assert_same(got, want):
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


SIZES = [((7, 7), (112, 112)), ((13, 13), (113, 113)), ((4, 5), (13, 17)), ((1, 1), (9, 7)), ((2, 3), (17, 29)), ((14, 14), (7, 7)), ((5, 6), (5, 6)), ((1, 2), (300, 260))]


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}-{sh}x{sw}" for (h, w), (sh, sw) in SIZES])
def test_tiled_upsampling_counts_equal_full_upsampling(size):
    (h, w), (sh, sw) = size
    rng = np.random.default_rng(h * 100 + sw)
    units = 6
    x = rng.standard_normal((7, units, h, w)).astype(np.float32)
    x[:, 3:] = np.maximum(x[:, 3:], 0) * 4  # ReLU-like units on another scale
    x[:, 5] = np.where(rng.random((7, h, w)) < 0.05, x[:, 5], 0)  # mostly zero: its threshold is 0
    feats = torch.from_numpy(x)
    thresholds = np.quantile(x.transpose(1, 0, 2, 3).reshape(units, -1), 0.9, axis=1).astype(np.float32)
    assert thresholds[5] == 0
    items = _random_items(rng, 7, sh, sw)
    for union in UNIONS:
        want = _tally_arrays(feats, items, thresholds, union, _full=True)
        assert want["active_pixels"].sum() > 0
        _assert_same(_tally_arrays(feats, items, thresholds, union), want)
        _assert_same(_tally_arrays(feats, items, thresholds, union, _by_pair=True), want)


def test_tiled_upsampling_in_small_chunks(monkeypatch):
    import concepts.dissect.tally as tally_module

    rng = np.random.default_rng(5)
    feats = torch.from_numpy(rng.standard_normal((6, 8, 7, 7)).astype(np.float32))
    thresholds = np.quantile(feats.transpose(0, 1).reshape(8, -1).numpy(), 0.8, axis=1).astype(np.float32)
    items = _random_items(rng, 6, 40, 40)
    want = _tally_arrays(feats, items, thresholds, "ndlite", batch=6, _full=True)
    monkeypatch.setattr(tally_module, "_CHUNK", 700)  # several chunks of pairs, and parts of them
    _assert_same(_tally_arrays(feats, items, thresholds, "ndlite", batch=6), want)


def test_int64_indices_give_the_same_counts(monkeypatch):
    import concepts.dissect.tally as tally_module

    rng = np.random.default_rng(8)
    feats = torch.from_numpy(rng.standard_normal((5, 6, 7, 7)).astype(np.float32))
    thresholds = np.quantile(feats.transpose(0, 1).reshape(6, -1).numpy(), 0.85, axis=1).astype(np.float32)
    items = _random_items(rng, 5, 45, 38)
    want = {union: _tally_arrays(feats, items, thresholds, union, _full=True) for union in UNIONS}
    monkeypatch.setattr(tally_module, "_INT32", 0)  # as if the sizes did not fit int32
    for union in UNIONS:
        assert want[union]["active_pixels"].sum() > 0
        _assert_same(_tally_arrays(feats, items, thresholds, union), want[union])
        _assert_same(_tally_arrays(feats, items, thresholds, union, _by_pair=True), want[union])


@pytest.mark.parametrize("nl", [300, 40000])
def test_label_numbers_past_small_types_count_the_same(nl):
    # The label buffer takes the smallest type for the number of labels: the same labels under
    # large numbers (16 and 32 bits) must give the same counts as under small ones (8 bits).
    rng = np.random.default_rng(nl)
    feats = torch.from_numpy(rng.standard_normal((5, 4, 7, 7)).astype(np.float32))
    thresholds = np.quantile(feats.transpose(0, 1).reshape(4, -1).numpy(), 0.85, axis=1).astype(np.float32)
    items = _random_items(rng, 5, 30, 33)
    small = np.array([-1, 0, 0, 1, 1, 1, -1, 2, 2])
    big_of = np.array([0, nl - 1, 255, 256, 257, nl - 2, 297, 32767 % nl, 32768 % nl])
    assert len(set(big_of)) == len(big_of)
    primary = np.full(nl, -1)
    primary[big_of] = small
    big_items = [Item(it.index, None, torch.from_numpy(big_of[it.layers.numpy()].astype(np.int32)), [int(big_of[n]) for n in it.scalars], it.sh, it.sw) for it in items]
    for union in UNIONS:
        want = _tally_arrays(feats, items, thresholds, union)
        t = Tally(4, primary, 3, thresholds, union)
        for b in range(0, 5, 2):
            t.update(feats[b : b + 2], big_items[b : b + 2])
        got = t.arrays()
        assert want["active_pixels"].sum() > 0
        np.testing.assert_array_equal(got["truth"][big_of[1:]], want["truth"][1:])
        assert got["truth"].sum() == want["truth"][1:].sum()
        np.testing.assert_array_equal(got["intersection"][:, big_of], want["intersection"])
        np.testing.assert_array_equal(got["activation"][:, big_of], want["activation"])
        for name in ("activation_category", "active_pixels"):
            np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("dtype", [torch.int32, torch.long])
def test_expand_equals_repeat_interleave(dtype):
    from concepts.dissect.tally import _expand

    for counts in ([], [0], [0, 0, 0], [3], [0, 2, 0, 0, 1, 4, 0], [1, 1, 1], [5, 0]):
        n = torch.tensor(counts, dtype=dtype)
        item, pos = _expand(n)
        want = torch.repeat_interleave(torch.arange(len(counts)), n.long())
        assert item.dtype == dtype and pos.dtype == dtype
        assert item.tolist() == want.tolist(), counts
        assert pos.tolist() == [i for c in counts for i in range(c)], counts


def test_tiled_tally_equals_slow_loop_on_upsampled_maps():
    rng = np.random.default_rng(3)
    primary = np.array([-1, 0, 0, 1, 1, 1, -1, 2, 2])
    feats = torch.from_numpy(rng.standard_normal((5, 4, 7, 7)).astype(np.float32))
    thresholds = np.quantile(feats.transpose(0, 1).reshape(4, -1).numpy(), 0.85, axis=1).astype(np.float32)
    items = _random_items(rng, 5, 56, 56)
    for union in UNIONS:
        got = _tally_arrays(feats, items, thresholds, union)
        truth, inter, act = slow_tally(feats, items, thresholds, primary, 3, union)
        np.testing.assert_array_equal(got["truth"], truth)
        np.testing.assert_array_equal(got["intersection"], inter)
        np.testing.assert_array_equal(got["activation"], act)


@pytest.mark.parametrize("stop_early", [True, False])
def test_captured_layer_survives_a_later_inplace_relu(stop_early: bool) -> None:
    from concepts.dissect.hooks import capture

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = model[0](x)
        with capture(model, ["0", "2"], stop_early=stop_early) as cap:
            got = cap(x)
    assert expected.min() < 0
    assert torch.equal(got["0"], expected)
