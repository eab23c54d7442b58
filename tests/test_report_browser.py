"""The report in headless Chromium: it renders its unit cards, and the category filter works."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from concepts.dissect.report import write_report
from synth import toy_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); the browser test of the report needs it")


def chromium(url: str, *flags: str) -> str:
    """Run headless Chromium on ``url``; return the DOM it dumps (scripts have run)."""
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=2000", *flags, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def cards(dom: str) -> tuple[list[str], list[str]]:
    """Categories of all unit cards and of the visible ones."""
    tags = re.findall(r"<article [^>]*>", dom)
    every = [re.search(r'data-category="([^"]*)"', t)[1] for t in tags]
    shown = [re.search(r'data-category="([^"]*)"', t)[1] for t in tags if not re.search(r"\shidden(=|>|\s)", t)]
    return every, shown


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from concepts.dissect.run import DissectConfig, dissect

    root = tmp_path_factory.mktemp("browser")
    ds = toy_dataset(root / "ds", n=8)
    dissect(DissectConfig(dataset=ds, layers=["conv"], out=root / "run", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=4))
    write_report(root / "run", root / "report", trust_model_code=True)
    return root / "report" / "conv.html"


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
    # The page applies the URL hash by clicking the matching filter button, as a user would.
    dom = chromium(report.as_uri() + "#category=object", "--dump-dom")
    every, shown = cards(dom)
    assert len(every) == 4 and 0 < len(shown) < 4 and set(shown) == {"object"}
    assert shown == [c for c in every if c == "object"]
    assert re.search(r'data-filter="object" aria-pressed="true"', dom)
    assert re.search(rf'<span id="shown">{len(shown)}</span>', dom)
