"""The published figures, trust on the page, random-weights labels and the single file."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from concepts.dissect.plots import category_colors, interpretable_per_layer, load_run, load_runs, plot_interpretable, plot_sweep, plot_unique_layers
from concepts.dissect.report import render_reports, write_report
from synth import toy_dataset
from test_report import CATS, CONV3, CONV5, PLACES5, write_run

# Planted significance and baseline outputs (the shapes the trust issue defines).
SIGNIFICANT = {"object": (2, 1), "part": (0, 0), "scene": (1, 1), "color": (0, 0)}
BASELINE = {"detectors": 2, "unique_concepts": 2, "categories": {"object": {"detectors": 1, "unique_concepts": 1}, "part": {"detectors": 0, "unique_concepts": 0},
                                                                   "scene": {"detectors": 0, "unique_concepts": 0}, "color": {"detectors": 1, "unique_concepts": 1}}}
SWEEP = [(q, t, "all", n, max(0, n - 1)) for q, base in ((0.005, 6), (0.01, 8)) for t, n in ((0.02, base), (0.04, base - 2), (0.08, base - 4))]


def extend_with_trust(root: Path) -> None:
    """Add the trust outputs to a hand-written run: tally columns, summary.json entries and a sweep."""
    tally = pd.read_csv(root / "tally_conv5.csv", dtype=str, keep_default_na=False)
    score = tally["score"].astype(float)
    tally["p-value"] = [f"{0.001 * (i + 1):g}" for i in range(len(tally))]
    tally["z"] = "3.5"
    tally["iou-low"] = (score * 0.5).map("{:.4f}".format)
    tally["iou-high"] = (score * 1.5).map("{:.4f}".format)
    tally["significant"] = ["True" if s > 0.05 else "False" for s in score]
    tally.to_csv(root / "tally_conv5.csv", index=False)
    summary = {"conv5": {"units": 8, "detectors": 5, "unique_concepts": 4, "significant_detectors": 3, "significant_unique_concepts": 2, "baseline": BASELINE,
                         "categories": {c: {"detectors": 0, "unique_concepts": 0, "significant_detectors": d, "significant_unique_concepts": u} for c, (d, u) in SIGNIFICANT.items()}}}
    (root / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame(SWEEP, columns=["quantile", "iou_threshold", "category", "detectors", "unique_concepts"]).to_csv(root / "sweep_conv5.csv", index=False)


@pytest.fixture
def runs(tmp_path):
    imagenet = write_run(tmp_path / "imagenet", {"conv3": CONV3, "conv5": CONV5})
    places = write_run(tmp_path / "places", {"conv5": PLACES5})
    return imagenet, places


def test_unique_detectors_across_layers_bars_equal_the_csv_and_summary(runs, tmp_path):
    out = tmp_path / "cmp"
    render_reports(load_runs(runs), out, images=False)
    table = pd.read_csv(out / "plots" / "compare_unique_layers.csv", keep_default_na=False)
    # The numbers beside the figure are the tally's: conv5 of imagenet has dog, cat (object), kitchen (scene), NA (color).
    got = table.set_index(["run", "layer", "category"])["unique_concepts"].to_dict()
    assert got[("imagenet", "conv5", "object")] == 2 and got[("imagenet", "conv5", "scene")] == 1 and got[("imagenet", "conv3", "color")] == 2
    assert got[("places", "conv5", "scene")] == 2
    fig = plot_unique_layers(load_runs(runs))
    assert len(fig.axes) == 2  # one panel per run: layers of different models never share an axis
    colors = category_colors(CATS)
    for ax, run in zip(fig.axes, ("imagenet", "places")):
        layers = [t.get_text() for t in ax.get_xticklabels()]
        mine = table[table["run"] == run]
        assert layers == list(dict.fromkeys(mine["layer"]))
        for container, cat in zip(ax.containers, CATS):
            assert {tuple(p.get_facecolor()[:3]) for p in container.patches} == {tuple(colors[cat][:3])}
            want = [int(mine[(mine["layer"] == lay) & (mine["category"] == cat)]["unique_concepts"].iloc[0]) for lay in layers]
            assert [p.get_height() for p in container.patches] == want
    interp = pd.read_csv(out / "plots" / "compare_interpretable.csv")
    assert interp[["run", "layer", "detectors"]].values.tolist() == [["imagenet", "conv3", 3], ["imagenet", "conv5", 5], ["places", "conv5", 3]]
    fig = plot_interpretable(load_runs(runs))
    assert [p.get_height() for p in fig.axes[0].patches] == [75.0, 62.5] and [p.get_height() for p in fig.axes[1].patches] == [75.0]
    for ext in ("png", "svg"):
        assert (out / "plots" / f"compare_unique_layers.{ext}").stat().st_size > 1000


def test_real_run_figures_equal_summary_json(tmp_path):
    from concepts.dissect.run import DissectConfig, dissect

    ds = toy_dataset(tmp_path / "ds", n=6)
    dissect(DissectConfig(dataset=ds, layers=["conv", "pool"], out=tmp_path / "run", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=2))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    write_report(tmp_path / "run", tmp_path / "rep", images=False)
    table = pd.read_csv(tmp_path / "rep" / "plots" / "unique_layers.csv", keep_default_na=False)
    for row in table.itertuples():
        assert row.unique_concepts == summary[row.layer]["categories"][row.category]["unique_concepts"]
        assert row.detectors == summary[row.layer]["categories"][row.category]["detectors"]
    interp = pd.read_csv(tmp_path / "rep" / "plots" / "interpretable.csv")
    assert interp.set_index("layer")["detectors"].to_dict() == {k: v["detectors"] for k, v in summary.items()}
    ax = plot_unique_layers(tmp_path / "run").axes[0]
    stacked = np.sum([[p.get_height() for p in c.patches] for c in ax.containers], axis=0)
    assert stacked.tolist() == [sum(v["unique_concepts"] for v in summary[lay]["categories"].values()) for lay in ("conv", "pool")]


def test_trust_outputs_on_the_page_and_the_sweep_figure(runs, tmp_path):
    extend_with_trust(runs[0])
    write_report(runs[0], tmp_path / "rep", images=False)
    page = (tmp_path / "rep" / "conv5.html").read_text()
    # Cards: the IoU interval and the p-value of the tally's columns; significant units marked.
    card = re.search(r'<article class="unit" id="unit-conv5-1".*?</article>', page, re.S)[0]
    assert "IoU 0.3000 [0.1500, 0.4500]" in card and "p = 0.001" in card and 'data-significant="1"' in card
    assert 'data-significant="0"' in re.search(r'<article class="unit weak" id="unit-conv5-7".*?</article>', page, re.S)[0]
    # Summary: significant detectors and the random-weights baseline beside the trained numbers.
    head = re.search(r"<table class=\"summary\">.*?</table>", page, re.S)[0]
    assert "significant detectors" in head and "random-weights detectors" in head
    object_row = re.search(r"<tr><td>object</td>(.*?)</tr>", head)[1]
    assert re.findall(r"<td>([^<]*)</td>", object_row) == ["3", "2", "2", "1", "1", "1"]
    assert re.findall(r"<th>([^<]*)</th>", re.search(r"<tfoot>(.*?)</tfoot>", head, re.S)[1])[1:] == ["5", "4", "3", "2", "2", "2"]
    # The sweep: one line per quantile, drawn from sweep_conv5.csv and written beside the figure.
    csv = pd.read_csv(tmp_path / "rep" / "plots" / "conv5_sweep.csv")
    assert csv.values.tolist() == pd.DataFrame(SWEEP).values.tolist()
    ax = plot_sweep(runs[0], "conv5").axes[0]
    lines = {line.get_label(): (line.get_xdata().tolist(), line.get_ydata().tolist()) for line in ax.get_lines() if line.get_label().startswith("quantile")}
    assert lines == {"quantile 0.005": ([0.02, 0.04, 0.08], [6, 4, 2]), "quantile 0.01": ([0.02, 0.04, 0.08], [8, 6, 4])}
    # The interpretable-units figure shows the baseline next to the trained share.
    table = interpretable_per_layer(runs[0], "conv5")
    assert table["baseline_pct"].tolist() == [25.0] and table["significant_detectors"].tolist() == [3.0]
    marks = [c for c in plot_interpretable(runs[0], "conv5").axes[0].collections]
    assert marks and marks[0].get_offsets()[:, 1].tolist() == [25.0]


def test_random_weights_are_named_on_every_page_and_figure(runs, tmp_path):
    record = json.loads((runs[1] / "run.json").read_text())
    record["model"] = {"name": "resnet18", "weights": "random", "weights_hash": "random"}
    (runs[1] / "run.json").write_text(json.dumps(record))
    assert load_run(runs[1]).random_weights and not load_run(runs[0]).random_weights
    out = tmp_path / "cmp"
    render_reports(load_runs(runs), out, images=False)
    for page in [out / "index.html", out / "places" / "index.html", out / "places" / "conv5.html"]:
        title = re.search(r"<title>(.*?)</title>", page.read_text())[1]
        assert "places (random weights)" in title, page
        assert 'id="random-weights"' in page.read_text() or page == out / "index.html"
    for svg in sorted((out / "places" / "plots").glob("*.svg")):
        assert "random weights" in svg.read_text(), svg.name  # SVG text stays text
    assert "places (random weights)" in (out / "plots" / "compare_unique_layers.svg").read_text()
    assert "imagenet (random weights)" not in (out / "plots" / "compare_unique_layers.svg").read_text()


def test_single_file_embeds_every_image(tmp_path):
    from concepts.dissect.run import DissectConfig, dissect

    ds = toy_dataset(tmp_path / "ds", n=6)
    dissect(DissectConfig(dataset=ds, layers=["conv", "pool"], out=tmp_path / "run", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=3))
    pages = render_reports(load_runs([tmp_path / "run"]), tmp_path / "one", single_file=True)
    assert [p.name for p in pages] == ["run.html"]
    html = pages[0].read_text()
    srcs = re.findall(r'<img [^>]*?src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    keys = re.findall(r'data-picture="([^"]*)"', html)
    store = json.loads(re.search(r'<script type="application/json" id="pictures">(.*?)</script>', html, re.S)[1])
    assert keys and set(keys) == set(store)
    for uri in store.values():
        assert uri.startswith("data:image/webp;base64,") and base64.b64decode(uri.split(",", 1)[1])[8:12] == b"WEBP"
    assert 'id="layer-conv"' in html and 'id="layer-pool"' in html  # every layer of the run in the one file
    assert "url(" not in html.replace("url('data:", "")  # masks are inline too
