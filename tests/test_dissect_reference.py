"""Our ``tally_{layer}.csv`` against the reference's rules, written here as NetDissect-Lite does them.

DISSECTION.md: with ``--normalize netdissect`` and the reference's thresholds, every count of the
tally must equal the reference's. The reference tally below follows NetDissect-Lite line by line
(per image, per unit: PIL bilinear resize, threshold, ``bincount`` over the label layers, the
category test per image, primary categories by coverage with ties to the later category, its IoU
formula and label choice), reading the dataset's tables and PNGs with nothing from `concepts`.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from concepts.dissect.run import DissectConfig, dissect
from synth import SynthRow, small_convnet, write_broden

CATS = ["color", "object", "part", "scene"]
LABELS = {1: ("red-c", "color"), 2: ("grey-c", "color"), 3: ("car", "object"), 4: ("tree", "object"), 5: ("wheel", "object"), 6: ("door", "part"), 7: ("roof", "part"), 8: ("street-s", "scene"), 9: ("park-s", "scene")}


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


def _dataset(root):
    rng = np.random.default_rng(11)
    rows = []
    yy, xx = np.mgrid[:16, :16]
    for i in range(10):
        obj = np.zeros((16, 16), np.int64)
        y0, x0 = rng.integers(0, 9, 2)
        obj[y0 : y0 + 7, x0 : x0 + 7] = 3
        obj[(yy - 12) ** 2 + (xx - rng.integers(2, 14)) ** 2 < 6] = 4
        obj[(yy - y0 - 6) ** 2 + (xx - x0 - 1) ** 2 < 3] = 5
        color = np.where(obj == 3, 1, 2)
        part = np.where((obj == 3) & (yy < y0 + 3), 7, 0)
        door = np.where((obj == 3) & (xx > x0 + 4), 6, 0)
        door[(obj == 5) & (door == 0)] = 5  # wheel, listed in part too, but object by coverage
        img = np.where(color[..., None] == 1, [200, 30, 20], [120, 120, 120]).repeat(2, 0).repeat(2, 1)
        img = np.clip(img + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
        pixel = {"color": [color], "object": [obj], "part": [part, door] if i % 2 else [part]}
        rows.append(SynthRow(f"r{i}", img, pixel, {"scene": [8 + i % 2]} if i % 3 else {}))
    root = write_broden(root, rows, LABELS, CATS)
    # Wheel also in c_part.csv, with less coverage than in c_object.csv.
    with open(root / "c_part.csv", "a", newline="") as f:
        csv.writer(f).writerow([3, 5, "wheel", 2, "0.001000"])
    text = (root / "label.csv").read_text()
    (root / "label.csv").write_text(text.replace(",wheel,object(", ",wheel,part(2);object(", 1))
    return root


def _tables(root):
    index = list(csv.DictReader(open(root / "index.csv", newline="")))
    labels = {int(r["number"]): r["name"] for r in csv.DictReader(open(root / "label.csv", newline=""))}
    size = max(labels) + 1
    coverage = np.zeros((len(CATS), size))
    for ci, cat in enumerate(CATS):
        for r in csv.DictReader(open(root / f"c_{cat}.csv", newline="")):
            coverage[ci, int(r["number"])] = float(r["coverage"])
    # max over (coverage, category index): ties, and label 0, go to the later category.
    primary = [max((coverage[ci, n], ci) for ci in range(len(CATS)))[1] for n in range(size)]
    labelcat = np.zeros((size, len(CATS)), np.int64)
    labelcat[np.arange(size), primary] = 1
    names = [labels.get(n, "") for n in range(size)]
    return index, names, labelcat


def _features(root, index):
    net = small_convnet().eval()
    bgr_mean = np.array([109.5388, 118.6897, 124.6901], np.float32)
    out = []
    for row in index:
        img = np.array(Image.open(root / "images" / row["image"]).convert("RGB"), dtype=np.float32)
        img = (img[:, :, ::-1] - bgr_mean).transpose(2, 0, 1)  # the reference's BGR, mean subtracted
        x = torch.from_numpy(img[::-1].copy())[None] / (255.0 * 0.224)  # back to RGB, divided by 57.12
        with torch.no_grad():
            out.append(net.features[:3](x)[0].numpy())
    return np.stack(out)


def reference_tally(root, index, features, threshold, labelcat):
    size, units = len(labelcat), features.shape[1]
    tally_labels = np.zeros(size, np.int64)
    tally_both = np.zeros((units, size), np.int64)
    tally_units_cat = np.zeros((units, len(CATS)), np.int64)
    for i, row in enumerate(index):
        sh, sw = int(row["sh"]), int(row["sw"])
        scalars, pixels = [], []
        for cat in CATS:
            cell = [p for p in row[cat].split(";") if p]
            if cell and not cell[0].isdigit():
                for p in cell:
                    rgb = np.array(Image.open(root / "images" / p)).astype(np.int64)
                    pixels.append(rgb[..., 0] + 256 * rgb[..., 1])
            else:
                scalars += [int(n) for n in cell]
        for scalar in scalars:
            tally_labels[scalar] += sh * sw
        pixels = np.stack(pixels)
        tally_label = np.bincount(pixels.ravel())
        tally_label[0] = 0
        tally_labels[: len(tally_label)] += tally_label
        for unit in range(units):
            feature_map = features[i][unit]
            if feature_map.max() > threshold[unit]:
                mask = np.array(Image.fromarray(feature_map).resize((sw, sh), resample=Image.BILINEAR))
                indexes = np.argwhere(mask > threshold[unit])
                tally_bt = np.bincount(pixels[:, indexes[:, 0], indexes[:, 1]].ravel())
                if len(tally_bt) > 0:
                    tally_bt[0] = 0
                tally_cat = np.dot(tally_bt[None, :], labelcat[: len(tally_bt), :])[0]
                tally_both[unit, : len(tally_bt)] += tally_bt
                for scalar in scalars:
                    tally_cat += labelcat[scalar]
                    tally_both[unit, scalar] += len(indexes)
                tally_units_cat[unit] += len(indexes) * (tally_cat > 0)
    tally_units_cat = np.dot(tally_units_cat, labelcat.T)
    iou = tally_both / (tally_units_cat + tally_labels[np.newaxis, :] - tally_both + 1e-10)
    return tally_labels, tally_both, tally_units_cat, iou


def reference_rows(tally_labels, tally_both, tally_units_cat, iou, labelcat, names):
    primary = labelcat.argmax(1)
    pciou = np.array([iou * (primary == ci)[np.newaxis, :] for ci in range(len(CATS))])
    label_pciou = pciou.argmax(axis=2)
    score_pciou = pciou[np.arange(pciou.shape[0])[:, None], np.arange(pciou.shape[1])[None, :], label_pciou]
    bestcat_pciou = score_pciou.argsort(axis=0, kind="stable")[::-1]
    rows = {}
    for unit in range(iou.shape[0]):
        bestcat = bestcat_pciou[0, unit]
        row = {"unit": unit + 1, "category": CATS[bestcat], "label": names[label_pciou[bestcat][unit]], "score": score_pciou[bestcat][unit]}
        for ci, cat in enumerate(CATS):
            label = label_pciou[ci][unit]
            row |= {f"{cat}-label": names[label], f"{cat}-truth": tally_labels[label], f"{cat}-activation": tally_units_cat[unit, label], f"{cat}-intersect": tally_both[unit, label], f"{cat}-iou": score_pciou[ci][unit]}
        rows[unit + 1] = row
    return rows


def test_tally_csv_equals_reference(tmp_path):
    root = _dataset(tmp_path / "ds")
    index, names, labelcat = _tables(root)
    assert labelcat[5].argmax() == CATS.index("object")  # wheel's primary category
    features = _features(root, index)
    # The reference's thresholds: percentiles of its float64 feature cache, kept in float64.
    threshold = np.quantile(features.transpose(1, 0, 2, 3).reshape(features.shape[1], -1).astype(np.float64), 0.9, axis=1)
    np.save(tmp_path / "thresholds.npy", threshold)
    expected = reference_rows(*reference_tally(root, index, features, threshold, labelcat), labelcat, names)
    cfg = DissectConfig(dataset=root, layers=["features.2"], out=tmp_path / "out", model="synth:small_convnet", normalize="netdissect", thresholds={"": tmp_path / "thresholds.npy"}, workers=0, batch_size=4, significance=False)
    dissect(cfg)
    with open(tmp_path / "out" / "tally_features.2.csv", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        got = list(reader)
    assert header == list(next(iter(expected.values())))
    assert [float(r["score"]) for r in got] == sorted((float(r["score"]) for r in got), reverse=True)
    assert len(got) == len(expected) == 6
    for row in got:
        ref = expected[int(row["unit"])]
        for key, value in ref.items():
            if key == "score" or key.endswith("-iou"):
                assert float(row[key]) == pytest.approx(float(value), rel=1e-12, abs=1e-15), key
            else:
                assert row[key] == str(value), (row["unit"], key)
    # The comparison covers the awkward cases: a part label whose primary category is object,
    # and a category none of whose labels a unit overlaps (the reference's label 0 row).
    assert any(int(r["part-intersect"]) for r in got) and any(int(r["object-intersect"]) for r in got)
    assert any(r[f"{c}-label"] == "" for r in got for c in CATS)
