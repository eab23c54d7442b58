"""Bit-exact agreement with the reference tally (NetDissect-Lite), given the same features and thresholds.

The expectation is an independent, straightforward restatement of the reference's tally loop
(``FeatureOperator.tally_job``): per image and unit, PIL's bilinear resize of the map as an ``F``
image (what ``scipy.misc.imresize(mode='F')`` did), compared with the float64 threshold, label
counts by ``bincount`` and the category rule through one-hot primary categories. The features
plant values exactly at, just above and just below float32(T) and T64, and thresholds that fall
between PIL's value and ``F.interpolate``'s, where any other arithmetic gives other counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import concepts.dissect.tally as tally_module
from concepts.dissect.data import Item
from concepts.dissect.tally import Tally, below_float32, pil_values

PRIMARY = np.array([-1, 0, 0, 1, 1, 1, -1, 2, 2])
NC = 3


def reference_tally(feats: np.ndarray, items: list[Item], thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's loop, one image and one unit at a time (its ``ndlite`` category rule)."""
    units, nl = feats.shape[1], len(PRIMARY)
    labelcat = np.zeros((nl, NC))
    for label, cat in enumerate(PRIMARY):
        if cat >= 0:
            labelcat[label, cat] = 1
    tally_labels = np.zeros(nl)
    tally_units = np.zeros(units)
    tally_units_cat = np.zeros((units, NC))
    tally_both = np.zeros((units, nl))
    for i, it in enumerate(items):
        pixels = it.layers.numpy()
        scalars = list(it.scalars)
        for s in scalars:
            tally_labels[s] += it.sh * it.sw
        counts = np.bincount(pixels.ravel(), minlength=nl)
        counts[0] = 0
        tally_labels += counts
        for u in range(units):
            fmap = feats[i, u].astype(np.float64)  # the reference's feature cache is float64
            if not fmap.max() > thresholds[u]:
                continue
            mask = np.asarray(Image.fromarray(fmap.astype(np.float32), mode="F").resize((it.sw, it.sh), Image.Resampling.BILINEAR))
            where = np.argwhere(mask.astype(np.float64) > np.float64(thresholds[u]))
            tally_units[u] += len(where)
            bt = np.bincount(pixels[:, where[:, 0], where[:, 1]].ravel(), minlength=nl)
            bt[0] = 0
            cat = bt @ labelcat
            tally_both[u] += bt
            for s in scalars:
                cat = cat + labelcat[s]
                tally_both[u, s] += len(where)
            tally_units_cat[u] += len(where) * (cat > 0)
    return {"truth": tally_labels, "intersection": tally_both, "activation": tally_units_cat @ labelcat.T, "active_pixels": tally_units}


def _items(rng: np.random.Generator, n: int, sh: int, sw: int) -> list[Item]:
    items = []
    for i in range(n):
        a = rng.choice([0, 1, 2], size=(sh, sw))
        b = rng.choice([0, 3, 4, 5], size=(sh, sw))
        scalars = [[7], [], [8], [7, 8]][i % 4]
        items.append(Item(i, None, torch.from_numpy(np.stack([a, b]).astype(np.int32)), scalars, sh, sw))
    return items


def _fast(feats: np.ndarray, items: list[Item], thresholds: np.ndarray, **flags) -> dict[str, np.ndarray]:
    t = Tally(feats.shape[1], PRIMARY, NC, thresholds, "ndlite")
    for name, value in flags.items():
        setattr(t, name, value)
    for s in range(0, len(items), 3):
        t.update(torch.from_numpy(feats[s : s + 3]), items[s : s + 3])
    return t.arrays()


def _differing_cells(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> int:
    return sum(int((np.asarray(got[k], np.float64) != want[k]).sum()) for k in want)


def _pil_up(fmap: np.ndarray, sh: int, sw: int) -> np.ndarray:
    return np.asarray(Image.fromarray(fmap, mode="F").resize((sw, sh), Image.Resampling.BILINEAR))


def _planted(rng: np.random.Generator, n: int, units: int, h: int, w: int, sh: int, sw: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and float64 thresholds with values planted at every kind of boundary."""
    feats = rng.uniform(-1, 1, (n, units, h, w)).astype(np.float32)
    c = np.float32(0.3)
    up, down = np.nextafter(c, np.float32(1)), np.nextafter(c, np.float32(-1))
    thresholds = np.zeros(units)
    # Units 0-3: constant blocks of c and its neighbours (their upsampled interiors are exactly
    # those values), against thresholds at c, just below c (rounds to c in float32), just above
    # c (rounds to c too) and half-way to the next float32.
    for u, t in enumerate([float(c), float(c) - 2.0**-40, float(c) + 2.0**-40, (float(c) + float(up)) / 2]):
        thresholds[u] = t
        for i in range(n):
            value = [c, up, down][i % 3]
            feats[i, u, 1:5, 1:5] = value
    # Other units: thresholds between PIL's value and F.interpolate's at a pixel where they differ.
    for u in range(4, units):
        i = u % n
        pil = _pil_up(feats[i, u], sh, sw).astype(np.float64)
        ft = F.interpolate(torch.from_numpy(feats[i : i + 1, u : u + 1]), size=(sh, sw), mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float64)
        differ = np.argwhere(pil != ft)
        assert len(differ), "PIL and F.interpolate agree everywhere: no boundary to plant"
        y, x = differ[len(differ) // 2]
        thresholds[u] = (pil[y, x] + ft[y, x]) / 2
    return feats, thresholds


@pytest.mark.parametrize("size", [((7, 7), (112, 112)), ((4, 5), (13, 17)), ((14, 14), (7, 7))], ids=["7-112", "4x5-13x17", "down"])
@pytest.mark.parametrize("full", [False, True], ids=["tiled", "full"])
def test_counts_equal_the_reference_cell_for_cell(size, full):
    (h, w), (sh, sw) = size
    rng = np.random.default_rng(h * w + sh)
    feats, thresholds = _planted(rng, 6, 10, h, w, sh, sw)
    items = _items(rng, 6, sh, sw)
    want = reference_tally(feats, items, thresholds)
    assert want["active_pixels"].sum() > 0
    got = _fast(feats, items, thresholds, _full=full)
    assert _differing_cells(got, want) == 0


def test_the_planted_boundaries_are_ones_that_other_arithmetic_gets_wrong():
    # Sensitivity: float32 thresholds rounded to nearest, or F.interpolate's values, give other counts.
    rng = np.random.default_rng(3)
    feats, thresholds = _planted(rng, 6, 10, 7, 7, 112, 112)
    items = _items(rng, 6, 112, 112)
    want = reference_tally(feats, items, thresholds)
    nearest = thresholds.astype(np.float32).astype(np.float64)
    assert _differing_cells(reference_tally(feats, items, nearest), want) > 0
    # Upsampling with F.interpolate and no exact decision at the boundary.
    plain = _fast(feats, items, thresholds, _full=True)
    original = tally_module._decide_near
    try:
        tally_module._decide_near = lambda *args: None
        plain = _fast(feats, items, thresholds, _full=True)
    finally:
        tally_module._decide_near = original
    assert _differing_cells(plain, want) > 0


def test_pil_values_are_pils_own():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 7, 9)).astype(np.float32) * 10
    for sh, sw in [(112, 112), (13, 31), (5, 4), (7, 9)]:
        want = np.stack([_pil_up(m, sh, sw) for m in maps])
        j = torch.arange(3).repeat_interleave(sh * sw)
        pix = torch.arange(sh * sw).repeat(3)
        got = pil_values(torch.from_numpy(maps), j, pix, sh, sw).numpy().reshape(3, sh, sw)
        np.testing.assert_array_equal(got, want)


def test_few_pixels_take_the_exact_path(monkeypatch):
    seen = []
    original = tally_module.pil_values

    def spy(maps, j, pix, sh, sw):
        seen.append(len(j))
        return original(maps, j, pix, sh, sw)

    monkeypatch.setattr(tally_module, "pil_values", spy)
    rng = np.random.default_rng(4)
    feats, thresholds = _planted(rng, 6, 10, 7, 7, 112, 112)
    items = _items(rng, 6, 112, 112)
    assert _differing_cells(_fast(feats, items, thresholds), reference_tally(feats, items, thresholds)) == 0
    assert seen and sum(seen) < 0.2 * feats.shape[0] * feats.shape[1] * 112 * 112


def test_thresholds_round_down_to_float32():
    t = np.array([0.3, float(np.float32(0.3)) - 2.0**-40, float(np.float32(0.3)) + 2.0**-40, -1e-45, 1e38])
    down = below_float32(t)
    assert down.dtype == np.float32
    assert (down.astype(np.float64) <= t).all()
    assert (np.nextafter(down, np.float32(np.inf)).astype(np.float64) > t).all()


def test_netdissect_normalisation_rounds_as_the_reference():
    # The reference: NumPy subtracts the float64 mean from the image, the result is stored as
    # float32, then divided by float32(57.12).
    from concepts.dissect.data import ImagePrep
    from concepts.dissect.models import parse_normalize

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (31, 29, 3), dtype=np.uint8)
    mean = np.array([124.6901, 118.6897, 109.5388])
    want = (rgb.astype(np.float64) - mean).astype(np.float32) / np.float32(57.12)
    got = ImagePrep(parse_normalize("netdissect"))(rgb).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)
    # Subtracting in float32 gives other inputs: the test can tell the two apart.
    float32_way = (rgb.astype(np.float32) - mean.astype(np.float32)) / np.float32(57.12)
    assert (float32_way != want).mean() > 0.2
