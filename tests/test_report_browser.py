"""The report in headless Chromium: cards render and filter, sort, per-concept view, single file, comparison."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from concepts.dissect.plots import load_runs
from concepts.dissect.report import render_reports, write_report
from synth import toy_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); the browser test of the report needs it")


def chromium(url: str, *flags: str) -> str:
    """Run headless Chromium on ``url``; return the DOM it dumps (scripts have run)."""
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=3000", *flags, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def cards(dom: str) -> tuple[list[str], list[str]]:
    """Categories of all unit cards and of the visible ones."""
    tags = re.findall(r"<article class=\"unit[^>]*>", dom)
    every = [re.search(r'data-category="([^"]*)"', t)[1] for t in tags]
    shown = [re.search(r'data-category="([^"]*)"', t)[1] for t in tags if not re.search(r"\shidden(=|>|\s)", t)]
    return every, shown


def images_shown(dom: str) -> tuple[int, int]:
    """How many images the page says loaded and failed (it counts them once everything has loaded)."""
    body = re.search(r"<body[^>]*>", dom)[0]
    return int(re.search(r'data-images-shown="(\d+)"', body)[1]), int(re.search(r'data-images-broken="(\d+)"', body)[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from concepts.dissect.run import DissectConfig, dissect

    root = tmp_path_factory.mktemp("browser")
    ds = toy_dataset(root / "ds", n=8)
    dissect(DissectConfig(dataset=ds, layers=["conv"], out=root / "run", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=4))
    return root / "run"


@pytest.fixture(scope="module")
def report(run):
    write_report(run, run.parent / "report")
    return run.parent / "report" / "conv.html"


def test_cards_render_and_filter(report, tmp_path):
    shot = tmp_path / "shot.png"
    dom = chromium(report.as_uri(), "--window-size=1000,800", f"--screenshot={shot}", "--dump-dom")
    every, shown = cards(dom)
    assert len(every) == 4 and shown == every  # no filter: every card visible
    assert re.search(r'data-filter="" aria-pressed="true"', dom)  # the page script ran and chose "all"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[:2] == (800, 1000)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, charts and image strips, not a blank page
    loaded, broken = images_shown(dom)
    assert broken == 0 and loaded >= 4 * 4
    # The page applies the URL hash by clicking the matching filter button, as a user would.
    dom = chromium(report.as_uri() + "#category=object", "--dump-dom")
    every, shown = cards(dom)
    assert len(every) == 4 and 0 < len(shown) < 4 and set(shown) == {"object"}
    assert shown == [c for c in every if c == "object"]
    assert re.search(r'data-filter="object" aria-pressed="true"', dom)
    assert re.search(rf'<span id="shown">{len(shown)}</span>', dom)


def _order(dom: str, attr: str) -> list[str]:
    return [re.search(rf'{attr}="([^"]*)"', t)[1] for t in re.findall(r"<article class=\"unit[^>]*>", dom)]


def test_sort_by_unit_label_and_score(report):
    by_iou = _order(chromium(report.as_uri(), "--dump-dom"), "data-iou")
    assert [float(v) for v in by_iou] == sorted((float(v) for v in by_iou), reverse=True)
    dom = chromium(report.as_uri() + "#sort=unit", "--dump-dom")
    assert _order(dom, "data-unit") == ["1", "2", "3", "4"]
    labels = _order(chromium(report.as_uri() + "#sort=label", "--dump-dom"), "data-label")
    assert labels == sorted(labels)


def test_per_concept_view(report):
    page = report.read_text()
    concepts = re.findall(r'<article class="concept"[^>]*data-concept="([^"]*)"', page)
    assert "square" in concepts  # unit 3 detects the red squares
    dom = chromium(report.as_uri() + "#concept=square", "--dump-dom")
    panels = re.findall(r'<article class="concept"[^>]*>', dom)
    visible = [p for p in panels if not re.search(r"\shidden(=|>|\s)", p)]
    assert len(visible) == 1 and 'data-concept="square"' in visible[0]
    body = re.search(r'<article class="concept"[^>]*data-concept="square"[^>]*>(.*?)</article>', dom, re.S)[1]
    assert re.search(r'href="#unit-conv-3">unit 3</a> \(IoU [01]\.\d{4}\)', body)  # which units see it, with their IoU
    assert body.count('class="tile"') >= 1 and "in the dataset" in body  # and what it looks like in the data
    loaded, broken = images_shown(dom)
    assert broken == 0


def test_single_file_opened_from_another_folder(run, tmp_path):
    pages = render_reports(load_runs([run]), tmp_path / "one", single_file=True)
    moved = tmp_path / "elsewhere" / "mail"
    moved.mkdir(parents=True)
    shutil.copy(pages[0], moved / "report.html")  # nothing else travels with it
    shot = tmp_path / "shot.png"
    dom = chromium((moved / "report.html").as_uri(), "--window-size=1000,1600", f"--screenshot={shot}", "--dump-dom")
    loaded, broken = images_shown(dom)
    tiles = dom.count('class="tile"')
    assert broken == 0 and loaded >= tiles > 0
    every, shown = cards(dom)
    assert len(every) == 4 and shown == every
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_comparison_page(run, tmp_path):
    from test_report import CONV5, write_run

    other = write_run(tmp_path / "other", {"conv": CONV5})
    out = tmp_path / "cmp"
    render_reports(load_runs([run, other]), out)
    dom = chromium((out / "index.html").as_uri(), "--dump-dom")
    loaded, broken = images_shown(dom)
    assert broken == 0 and loaded == 5  # the five comparison figures
    links = re.findall(r'<a href="([^"]*)">', dom)
    assert links == ["run/index.html", "other/index.html"]
    for link in links:
        sub = chromium((out / link).as_uri(), "--dump-dom")
        assert images_shown(sub)[1] == 0
