"""Report tables, figures and HTML: exact numbers on hand-written runs, images on a real one."""

from __future__ import annotations

import csv
import importlib
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from concepts.cli import app
from concepts.errors import UsageError
from concepts.dissect.plots import HATCHES, category_colors, detectors_per_category, detectors_per_concept, detectors_per_layer, load_run, load_runs, plot_categories, plot_concepts, plot_layers, unit_table
from concepts.dissect.report import DIM, OUTLINE, overlay, unit_strips, write_report
from concepts.dissect.results import layer_files
from synth import toy_dataset

importlib.import_module("concepts.cli.report")  # registers `report` on the app until the lead adds it to _register()

CATS = ["object", "part", "scene", "color"]

# (unit, category, label, score) per layer; threshold 0.04, so 0.04 itself is not a detector.
CONV5 = [
    (1, "object", "dog", 0.30),
    (2, "object", "dog", 0.20),
    (3, "object", "cat", 0.10),
    (8, "color", "NA", 0.06),
    (4, "scene", "kitchen", 0.05),
    (5, "color", "red", 0.04),
    (6, "object", "cat", 0.01),
    (7, "part", "", 0.0),
]
CONV3 = [(1, "color", "red", 0.2), (2, "color", "blue", 0.1), (3, "object", "dog", 0.05), (4, "object", "dog", 0.03)]
PLACES5 = [(1, "scene", "kitchen", 0.5), (2, "scene", "street", 0.4), (3, "object", "car", 0.3), (4, "object", "dog", 0.01)]


def write_run(root: Path, layers: dict[str, list[tuple[int, str, str, float]]], iou_threshold: float = 0.04) -> Path:
    """A run folder in the files dissect writes, with the given tally rows."""
    root.mkdir(parents=True)
    record = {"args": {"layers": list(layers), "model": "resnet18", "dataset": str(root / "no-dataset"), "iou_threshold": iou_threshold}, "images": 10, "layers": {}}
    for layer, rows in layers.items():
        files = layer_files(layer)
        fields = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in CATS for f in ("label", "truth", "activation", "intersect", "iou")]
        with open(root / files["tally"], "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(fields)
            for unit, cat, label, score in rows:
                extra = [v for c in CATS for v in ((label, 1, 1, 1, score) if c == cat else ("", 0, 0, 0, 0.0))]
                w.writerow([unit, cat, label, score, *extra])
        np.save(root / files["thresholds"], np.zeros(len(rows), np.float32))
        (root / files["topk"]).write_text("unit,rank,image_index,image,max_activation\n")
        record["layers"][layer] = {"files": files, "params": {"layer": layer, "categories": CATS, "iou_threshold": iou_threshold, "model": "resnet18"}}
    (root / "run.json").write_text(json.dumps(record, sort_keys=True))
    return root


@pytest.fixture
def runs(tmp_path):
    imagenet = write_run(tmp_path / "imagenet", {"conv3": CONV3, "conv5": CONV5})
    places = write_run(tmp_path / "places", {"conv5": PLACES5})
    return imagenet, places


def test_unit_table_sorted_by_iou(runs):
    t = unit_table(runs[0], "conv5")
    assert t["unit"].tolist() == [1, 2, 3, 8, 4, 5, 6, 7]
    assert t["label"].tolist() == ["dog", "dog", "cat", "NA", "kitchen", "red", "cat", ""]
    assert t["detector"].tolist() == [True] * 5 + [False] * 3


def test_detectors_per_category_exact(runs):
    table = detectors_per_category(list(runs))
    expected = pd.DataFrame(
        [
            ["imagenet", "conv3", "object", 4, 1, 1, 25.0],
            ["imagenet", "conv3", "part", 4, 0, 0, 0.0],
            ["imagenet", "conv3", "scene", 4, 0, 0, 0.0],
            ["imagenet", "conv3", "color", 4, 2, 2, 50.0],
            ["imagenet", "conv5", "object", 8, 3, 2, 37.5],
            ["imagenet", "conv5", "part", 8, 0, 0, 0.0],
            ["imagenet", "conv5", "scene", 8, 1, 1, 12.5],
            ["imagenet", "conv5", "color", 8, 1, 1, 12.5],
            ["places", "conv5", "object", 4, 1, 1, 25.0],
            ["places", "conv5", "part", 4, 0, 0, 0.0],
            ["places", "conv5", "scene", 4, 2, 2, 50.0],
            ["places", "conv5", "color", 4, 0, 0, 0.0],
        ],
        columns=["run", "layer", "category", "units", "detectors", "unique_concepts", "detectors_pct"],
    )
    pd.testing.assert_frame_equal(table, expected)
    # The figure draws exactly these numbers: one bar series per run, categories in order.
    fig = plot_categories(list(runs), "conv5")
    unique_ax, pct_ax = fig.axes
    heights = [[p.get_height() for p in c.patches] for c in unique_ax.containers]
    assert heights == [[2, 0, 1, 1], [1, 0, 2, 0]]
    assert [[p.get_height() for p in c.patches] for c in pct_ax.containers] == [[37.5, 0, 12.5, 12.5], [25.0, 0, 50.0, 0]]
    assert [t.get_text() for t in pct_ax.get_legend().get_texts()] == ["imagenet", "places"]
    assert [t.get_text() for t in unique_ax.get_xticklabels()] == CATS
    # One colour per category in every series; the runs differ by hatch.
    colors = category_colors(CATS)
    for i, c in enumerate(unique_ax.containers):
        assert [tuple(p.get_facecolor()[:3]) for p in c.patches] == [tuple(colors[k][:3]) for k in CATS]
        assert {p.get_hatch() or "" for p in c.patches} == {HATCHES[i]}


def test_detectors_per_layer_exact(runs):
    wide = detectors_per_layer(runs[0])
    expected = pd.DataFrame({"object": [25.0, 37.5], "part": [0.0, 0.0], "scene": [0.0, 12.5], "color": [50.0, 12.5]}, index=pd.Index(["conv3", "conv5"], name="layer"))
    pd.testing.assert_frame_equal(wide, expected)
    fig = plot_layers(list(runs))
    # One panel per run, each with its own layer axis (architectures never share x positions).
    first, second = fig.axes
    lines = {line.get_label(): line.get_ydata().tolist() for line in first.get_lines() + second.get_lines()}
    assert lines["imagenet object"] == [25.0, 37.5] and lines["imagenet color"] == [50.0, 12.5]
    assert lines["places scene"] == [50.0]
    assert [t.get_text() for t in first.get_xticklabels()] == ["conv3", "conv5"] and [t.get_text() for t in second.get_xticklabels()] == ["conv5"]


def test_detectors_per_concept_exact(runs):
    table = detectors_per_concept(runs[0], "conv5")
    expected = pd.DataFrame({"concept": ["dog", "cat", "NA", "kitchen"], "category": ["object", "object", "color", "scene"], "detectors": [2, 1, 1, 1], "best_iou": [0.30, 0.10, 0.06, 0.05]})
    pd.testing.assert_frame_equal(table, expected)
    top = detectors_per_concept(runs[0], "conv5", "object", top=1)
    assert top["concept"].tolist() == ["dog"] and top["detectors"].tolist() == [2]
    fig = plot_concepts(runs[0], "conv5", "object")
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [2, 1]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dog", "cat"]
    # NetDissect-Lite's chart: every detected concept, bars coloured by its category.
    ax = plot_concepts(runs[0], "conv5").axes[0]
    colors = category_colors(CATS)
    assert [p.get_width() for p in ax.patches] == [2, 1, 1, 1]
    assert [tuple(p.get_facecolor()[:3]) for p in ax.patches] == [tuple(colors[c][:3]) for c in ("object", "object", "color", "scene")]
    with pytest.raises(UsageError, match="no category 'texture'"):
        detectors_per_concept(runs[0], "conv5", "texture")


def test_errors_name_the_folder(tmp_path, runs):
    with pytest.raises(UsageError, match="no run.json"):
        load_run(tmp_path)
    with pytest.raises(UsageError, match="no results for layer 'fc'"):
        unit_table(runs[0], "fc")
    (runs[1] / "tally_conv5.csv").unlink()
    with pytest.raises(UsageError, match="tally_conv5.csv: tally file is missing"):
        detectors_per_category(runs[1])


def test_duplicate_run_names_are_told_apart(tmp_path):
    a = write_run(tmp_path / "a" / "run", {"conv5": CONV3})
    b = write_run(tmp_path / "b" / "run", {"conv5": CONV3})
    assert [r.name for r in load_runs([a, b])] == ["a/run", "b/run"]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.cards = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "script", "link") and ("src" in a or "href" in a):
            self.refs.append(a.get("src") or a.get("href"))
        if tag == "a" and not a["href"].startswith("#"):
            self.refs.append(a["href"])
        if tag == "article" and "unit" in (a.get("class") or "").split():
            self.cards += 1


def html_refs(page: Path) -> tuple[list[str], int]:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p.refs, p.cards


def check_refs(page: Path) -> list[str]:
    """Every file the page references exists, and none is on the web."""
    refs, _ = html_refs(page)
    for ref in refs:
        if ref.startswith("data:"):
            continue
        assert "://" not in ref and not ref.startswith("//"), ref
        assert (page.parent / ref).is_file(), f"{page.name} references missing {ref}"
    return refs


def test_report_without_images_and_cli_comparison(runs, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(runs[0]), str(runs[1]), "-o", str(out), "--no-images"])
    assert result.exit_code == 0, result.output
    assert (out / "imagenet" / "conv5.html").is_file() and (out / "places" / "conv5.html").is_file()
    for ext in ("png", "svg"):
        for stem in ("compare_categories", "compare_layers", "compare_unique_layers", "compare_interpretable", "compare_concepts"):
            assert (out / "plots" / f"{stem}.{ext}").stat().st_size > 1000, stem
            assert (out / "plots" / f"{stem}.csv").is_file()
    table = pd.read_csv(out / "tables" / "compare_categories.csv")
    assert table["detectors"].tolist() == detectors_per_category(list(runs))["detectors"].tolist()
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 6  # an index per run, one page per layer, the comparison index
    for page in pages:
        check_refs(page)
    _, cards = html_refs(out / "imagenet" / "conv5.html")
    assert cards == 8
    text = (out / "imagenet" / "conv5.html").read_text()
    assert text.index('id="unit-conv5-1"') < text.index('id="unit-conv5-8"') < text.index('id="unit-conv5-4"')  # by IoU


def test_report_is_deterministic(runs, tmp_path):
    first = write_report(runs[1], tmp_path / "a", images=False)
    second = write_report(runs[1], tmp_path / "b", images=False)
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert any(p.suffix == ".svg" for p in first)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a


def test_cli_errors_are_one_line(tmp_path, runs):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [f"error: {tmp_path / 'nothing'}: not a dissection run folder (no run.json)"]
    (runs[0] / "topk_conv3.csv").write_text("unit,rank,image_index,image,max_activation\n1,1,0,a.jpg,3.5\n")
    result = CliRunner().invoke(app, ["report", str(runs[0]), "-o", str(tmp_path / "o"), "--recompute"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "cannot open the run's dataset" in result.output and "--no-images" in result.output


def test_overlay_dims_outside_and_outlines_the_mask():
    """A planted 4 x 5 mask on a uniform image: inside untouched, a one-pixel ring just outside, the rest dimmed."""
    image = np.full((10, 12, 3), 200, np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[3:7, 4:9] = True
    out = overlay(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[mask] == 200).all()
    ring = np.zeros_like(mask)
    ring[2:8, 3:10] = True  # the mask grown by one pixel, corners included
    ring &= ~mask
    assert (out[ring] == OUTLINE).all()
    far = ~mask & ~ring
    assert (out[far] == round(200 * DIM)).all()
    assert out[0, 0].tolist() == [56, 56, 56] and out[5, 6].tolist() == [200, 200, 200] and out[2, 3].tolist() == list(OUTLINE)


def test_overlay_keeps_every_masked_pixel_exactly():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 7, 3)).astype(np.uint8)
    mask = rng.random((9, 7)) > 0.5
    mask[0, :] = True  # a mask on the image's edge: the outline stops at the edge
    out = overlay(image, mask)
    assert (out[mask] == image[mask]).all()
    assert (overlay(image, np.ones((9, 7), bool)) == image).all()
    assert (overlay(image, np.zeros((9, 7), bool)) == np.round(image * DIM)).all()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from concepts.dissect.run import DissectConfig, dissect

    root = tmp_path_factory.mktemp("real")
    ds = toy_dataset(root / "ds", n=8)
    dissect(DissectConfig(dataset=ds, layers=["conv", "pool"], out=root / "run", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=3))
    return root / "run"


def test_tables_agree_with_dissect_summary(real_run):
    summary = json.loads((real_run / "summary.json").read_text())
    table = detectors_per_category(real_run)
    for row in table.itertuples():
        assert summary[row.layer]["categories"][row.category]["detectors"] == row.detectors
        assert summary[row.layer]["categories"][row.category]["unique_concepts"] == row.unique_concepts
    for layer in ("conv", "pool"):
        det = unit_table(real_run, layer)
        assert int(det["detector"].sum()) == summary[layer]["detectors"]


def test_red_unit_masks_cover_the_red_squares(real_run):
    strips = unit_strips(load_run(real_run), "conv", tile=32)
    topk = pd.read_csv(real_run / "topk_conv.csv")
    assert sorted(strips) == [1, 2, 3, 4]
    pixels, names = strips[3]  # unit 3 (channel 2) is R - (G + B) / 2
    assert names == topk[topk["unit"] == 3].sort_values("rank")["image"].tolist()
    assert pixels.shape == (32, 3 * 32 + 2 * 3, 3)
    for k in range(3):
        tile = pixels[:, k * 35 : k * 35 + 32].astype(int)
        bright_red = (tile[..., 0] > 180) & (tile[..., 1] < 60)
        bright_blue = (tile[..., 2] > 150) & (tile[..., 0] < 60)
        assert bright_red.sum() >= 16 and not bright_blue.any()


def test_report_with_images(real_run, tmp_path):
    written = write_report(real_run, tmp_path / "rep")
    for page in [p for p in written if p.suffix == ".html"]:
        check_refs(page)
    refs, cards = html_refs(tmp_path / "rep" / "conv.html")
    pictures = {r for r in refs if r.startswith("images/")}
    topk = pd.read_csv(real_run / "topk_conv.csv")
    assert cards == 4
    # Each dataset image is drawn once and shared by every tile showing it (top-k images and concept examples).
    assert {f"images/{i:06d}.webp" for i in topk["image_index"]} <= pictures
    assert sorted(p.name for p in (tmp_path / "rep" / "images").iterdir()) == sorted(r.split("/")[1] for r in pictures)
    text = (tmp_path / "rep" / "conv.html").read_text()
    assert text.count('class="tile"') >= len(topk)  # every top-k image of every unit, plus concept examples
    assert all(p.is_file() for p in written)


def test_dissect_report_flag_from_another_directory(tmp_path, monkeypatch):
    ds = toy_dataset(tmp_path / "ds", n=6)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dissect", "ds", "--model", "synth:red_unit_net", "--layer", "conv", "-o", "run",
                                      "--normalize", "none", "--quantile", "0.1", "--workers", "0", "--top-k", "2", "--report"])
    assert result.exit_code == 0, result.output
    assert "report in run/report (2 page(s))" in result.output  # conv.html and index.html
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["args"]["dataset"] == str(ds.absolute())
    monkeypatch.chdir(ds)  # the report's images must not depend on the working directory
    written = write_report(tmp_path / "run", tmp_path / "again")
    check_refs(tmp_path / "again" / "conv.html")
    assert any(p.suffix == ".webp" for p in written)
