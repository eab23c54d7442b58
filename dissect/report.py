"""The dissection report: one offline HTML page per layer, with its figures and tables beside it.

Each page has a header (units, detectors and unique concepts per category), the bar chart of
:func:`dissect.plots.plot_categories`, and one card per unit sorted by IoU with a strip of the
unit's top-k images, each showing the unit's thresholded mask (outlined, the rest dimmed). Filtering by
category and searching by concept are plain inline JavaScript; nothing is loaded from the web.

The run folder does not keep feature maps, so the masks are recomputed: the model named in
``run.json`` is rebuilt with dissect's own loader and run on the top-k images only, and each map
is upsampled and thresholded exactly as the tally did (bilinear to the segmentation size, then
``> threshold``). The weights file and the dataset must be the ones the run used; both are
checked against the hashes the run recorded.

``run.json`` is data written by whoever made the run folder, so nothing in it is consent: a
``package.module:factory`` it names is imported only with ``--trust-model-code`` and a pickled
model loaded only with ``--trust-pickle`` given to ``concepts report`` itself (a stored
``trust_pickle`` is ignored). Without that consent the report stops with one line naming what to
pass (or ``--no-images``) rather than silently dropping the images. The result files it names are
read only inside the run folder (:func:`concepts.dissect.plots.check_record`); the dataset and
weights paths it records are opened as data only (the weights with ``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from concepts.errors import ConceptsError, DatasetFormatError, ModelError, UsageError
from concepts.progress import progress
from concepts.dissect.plots import Run, detectors_per_category, detectors_per_concept, detectors_per_layer, load_run, plot_categories, plot_concepts, plot_layers, save_figure, unit_table
from concepts.dissect.results import atomic_write, safe_name

log = logging.getLogger(__name__)

#: Overlay colours: the mask outline, and how bright pixels outside the mask stay.
OUTLINE = (255, 214, 0)
DIM = 0.28


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Dim ``image`` outside ``mask`` (same height and width) and outline the mask just outside its edge."""
    import torch
    import torch.nn.functional as F
    from torchvision.utils import draw_segmentation_masks

    inside = torch.from_numpy(np.array(mask, dtype=bool))  # a writable copy
    # The outline lies outside the mask, so every pixel the unit fires on stays visible as it is.
    grown = F.max_pool2d(inside[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    # Drawn on floats and rounded once: torchvision's uint8 path truncates, darkening every pixel by one.
    out = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255
    out = draw_segmentation_masks(out, ~inside, alpha=1 - DIM, colors=(0, 0, 0))
    out = draw_segmentation_masks(out, grown & ~inside, alpha=1.0, colors=OUTLINE)  # 0-255, scaled for floats
    return (out * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _strip(tiles: Sequence[np.ndarray], gap: int = 3) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for t in tiles:
        out[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


def unit_strips(
    run: Run, layer: str, *, dataset: Path | None = None, device: str = "cpu", tile: int = 112, batch_size: int = 16,
    trust_model_code: bool = False, trust_pickle: bool = False,
) -> dict[int, tuple[np.ndarray, list[str]]]:
    """Per unit, its top-k images side by side with the unit's mask shown, and their names.

    The model is rebuilt from what ``run.json`` names, which is data, never consent: a
    ``package.module:factory`` is imported only with ``trust_model_code`` and a pickled model
    unpickled only with ``trust_pickle``, both given by the user on the command line.
    """
    import torch
    import torch.nn.functional as F

    from concepts.hub import open_any
    from concepts.dissect.data import loader, stack_images
    from concepts.dissect.hooks import capture
    from concepts.dissect.models import is_factory, load_model, parse_device, parse_normalize

    topk = run.topk(layer)
    if topk.empty:
        return {}
    params = run.params(layer)
    args = run.record.get("args", {})
    spec = str(dataset) if dataset is not None else str(args.get("dataset", ""))
    root = Path(spec)
    try:
        ds = open_any(spec)
    except DatasetFormatError as e:
        raise UsageError(f"cannot open the run's dataset to draw unit masks: {e.message}", path=e.path or root, hint="pass --dataset PATH, or --no-images") from None
    except OSError as e:
        raise UsageError(f"cannot open the run's dataset to draw unit masks: {e.strerror or e}", path=root, hint="pass --dataset PATH, or --no-images") from None
    want = params.get("dataset")
    if want and ds.fingerprint() != want:
        raise UsageError(f"dataset differs from the one the run used (fingerprint {ds.fingerprint()}, run {want})", path=root, hint="pass the run's dataset with --dataset")
    samples = ds.select(params.get("split"), params.get("limit"))
    needed = sorted({int(i) for i in topk["image_index"]})
    for _, row in topk.drop_duplicates("image_index").iterrows():
        i = int(row["image_index"])
        if i >= len(samples) or samples[i].image != row["image"]:
            raise UsageError(f"top-k image {row['image']} is not image {i} of the dataset", path=root, hint="pass the run's dataset with --dataset")
    weights = args.get("weights")
    model_name = params.get("model") or args.get("model")
    if is_factory(model_name) and not trust_model_code:
        raise ModelError(
            f"names the model factory {model_name}; importing it runs its code", path=run.path / "run.json",
            hint="pass --trust-model-code to allow it, or --no-images",
        )
    try:
        loaded = load_model(model_name, Path(weights) if weights else None, pretrained=bool(args.get("pretrained")), trust_pickle=trust_pickle, trust_code=trust_model_code)
    except ModelError as e:
        hint = f"{e.hint}, or --no-images" if e.hint else "pass --no-images to write the report without image strips"
        raise ModelError(f"cannot rebuild the model to draw unit masks: {e.message}", path=e.path, hint=hint) from None
    if params.get("weights") and loaded.weights_hash != params["weights"]:
        raise ModelError(f"weights differ from the run's (hash {loaded.weights_hash}, run {params['weights']})", path=weights, hint="pass --no-images to write the report without image strips")
    thresholds = run.thresholds(layer)
    if int(topk["unit"].max()) > len(thresholds):
        raise UsageError(f"top-k file names unit {int(topk['unit'].max())} but the layer has {len(thresholds)} thresholds", path=run.file(layer, "topk"))
    # Which (unit, rank) tiles each needed image feeds.
    by_image: dict[int, list[tuple[int, int, float]]] = {}
    for u, r, i, v in zip(topk["unit"].astype(int), topk["rank"].astype(int), topk["image_index"].astype(int), topk["max_activation"].astype(float)):
        by_image.setdefault(i, []).append((u, r, v))
    subset = [samples[i] for i in needed]
    ih, iw = subset[0].ih, subset[0].iw
    th, tw = tile, max(1, round(tile * iw / ih))
    tiles: dict[tuple[int, int], np.ndarray] = {}
    mismatched = 0
    dev = parse_device(device)
    model = loaded.module.to(dev)
    normalize = params.get("normalize") or args.get("normalize") or "imagenet"
    try:
        mean_std = parse_normalize(normalize)
    except UsageError as e:
        raise UsageError(f"layers.{layer}.params.normalize: {e.message}", path=run.path / "run.json") from None
    data = loader(ds, subset, [], mean_std=mean_std, images=True, labels=False, batch_size=batch_size, workers=0)
    with capture(model, [layer]) as grab:
        for items in progress(data, desc=f"masks {layer}", total=-(-len(subset) // batch_size), unit="batch"):
            feats = grab(stack_images(items).to(dev))[layer].float()
            if feats.shape[1] != len(thresholds):
                raise ModelError(f"layer {layer} has {feats.shape[1]} units but the run has {len(thresholds)} thresholds")
            for item, f in zip(items, feats):
                sample = subset[item.index]
                picture = np.asarray(Image.fromarray(ds.load_image(sample)).resize((tw, th), Image.Resampling.BILINEAR))
                refs = by_image[needed[item.index]]
                units = torch.tensor([u - 1 for u, _, _ in refs], device=dev)
                maps = f[units]
                up = F.interpolate(maps[:, None], size=(sample.sh, sample.sw), mode="bilinear", align_corners=False)[:, 0]
                masks = (up > torch.as_tensor(thresholds, device=dev)[units][:, None, None]).cpu().numpy()
                peaks = maps.amax(dim=(1, 2)).cpu().numpy()
                for (u, r, v), m, peak in zip(refs, masks, peaks):
                    if not np.isclose(peak, v, rtol=1e-3, atol=1e-4):
                        mismatched += 1
                    small = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((tw, th), Image.Resampling.NEAREST)) > 127
                    tiles[(u, r)] = overlay(picture, small)
    if mismatched:
        log.warning("%s: %d of %d top-k activations differ from the run's; the masks may not match its results", layer, mismatched, len(topk))
    out: dict[int, tuple[np.ndarray, list[str]]] = {}
    for u, group in topk.sort_values(["unit", "rank"], kind="stable").groupby("unit", sort=True):
        ranks = group["rank"].astype(int).tolist()
        out[int(u)] = (_strip([tiles[(int(u), r)] for r in ranks]), group["image"].astype(str).tolist())
    return out


# -- HTML ------------------------------------------------------------------------------------

_STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; background: #fafafa; }
body { margin: 0 auto; max-width: 1280px; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.4rem; margin: .2rem 0; } h2 { font-size: 1.1rem; margin: 1.2rem 0 .4rem; }
.meta { color: #555; font-size: .85rem; margin: .2rem 0 .8rem; }
table.summary { border-collapse: collapse; font-size: .9rem; }
table.summary th, table.summary td { padding: .2rem .7rem; border-bottom: 1px solid #ddd; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
.top { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.top img { max-width: 100%; height: auto; background: #fff; border: 1px solid #e5e5e5; }
.controls { position: sticky; top: 0; background: #fafafa; padding: .6rem 0; border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; z-index: 1; }
.controls button { border: 1px solid #bbb; background: #fff; border-radius: 1rem; padding: .2rem .8rem; cursor: pointer; font-size: .85rem; }
.controls button[aria-pressed="true"] { background: #1d1d1f; color: #fff; border-color: #1d1d1f; }
.controls input[type=search] { margin-left: auto; padding: .3rem .6rem; border: 1px solid #bbb; border-radius: .3rem; min-width: 14rem; }
.controls label { font-size: .85rem; }
.count { font-size: .85rem; color: #555; }
.units { display: grid; gap: .6rem; margin-top: .8rem; }
article.unit { background: #fff; border: 1px solid #e2e2e2; border-radius: .4rem; padding: .5rem .7rem; }
article.unit.weak { opacity: .6; }
article.unit header { display: flex; gap: .8rem; align-items: baseline; font-size: .9rem; margin-bottom: .35rem; }
article.unit .label { font-weight: 600; font-size: 1rem; }
article.unit .cat { background: #eef; border-radius: .3rem; padding: 0 .4rem; }
article.unit .iou { margin-left: auto; font-variant-numeric: tabular-nums; }
article.unit img { display: block; max-width: 100%; height: auto; }
[hidden] { display: none !important; }
details { margin-top: 1rem; } details img { max-width: 100%; }
"""

_SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.unit"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-filter]"));
  var search = document.getElementById("search");
  var strong = document.getElementById("detectors-only");
  var shown = document.getElementById("shown");
  var category = "";
  function apply() {
    var q = search.value.trim().toLowerCase();
    var n = 0;
    cards.forEach(function (c) {
      var ok = (!category || c.dataset.category === category) &&
               (!q || c.dataset.label.toLowerCase().indexOf(q) >= 0) &&
               (!strong.checked || c.dataset.detector === "1");
      c.hidden = !ok;
      if (ok) n += 1;
    });
    shown.textContent = String(n);
    var p = new URLSearchParams();
    if (category) p.set("category", category);
    if (q) p.set("q", q);
    if (strong.checked) p.set("detectors", "1");
    try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { /* file: URLs may refuse */ }
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      category = b.dataset.filter;
      buttons.forEach(function (x) { x.setAttribute("aria-pressed", String(x === b)); });
      apply();
    });
  });
  search.addEventListener("input", apply);
  strong.addEventListener("change", apply);
  // The URL hash (#category=object&q=dog&detectors=1) restores a view through the same handlers.
  var init = new URLSearchParams(location.hash.slice(1));
  if (init.get("q")) search.value = init.get("q");
  if (init.get("detectors")) strong.checked = true;
  var start = buttons.filter(function (x) { return x.dataset.filter === (init.get("category") || ""); })[0] || buttons[0];
  start.click();
})();
"""

_LAYER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ run }} {{ layer }}: dissection report</title>
<style>{{ style|safe }}</style>
</head>
<body>
<h1>{{ run }} &middot; layer {{ layer }}</h1>
<p class="meta">model {{ model }} &middot; weights {{ weights }} &middot; dataset {{ dataset }} ({{ images }} images) &middot;
quantile {{ quantile }} &middot; IoU threshold {{ iou_threshold }} &middot; union {{ union }}</p>
<div class="top">
<table class="summary">
<thead><tr><th>category</th><th>detectors</th><th>unique concepts</th></tr></thead>
<tbody>
{% for row in summary %}<tr><td>{{ row.category }}</td><td>{{ row.detectors }}</td><td>{{ row.unique_concepts }}</td></tr>
{% endfor %}</tbody>
<tfoot><tr><th>all ({{ units }} units)</th><th>{{ detectors }}</th><th>{{ unique_concepts }}</th></tr></tfoot>
</table>
<img src="{{ chart }}" alt="unique concepts and detectors per category" width="{{ chart_size[0] }}" height="{{ chart_size[1] }}">
</div>
{% if concept_charts %}<details><summary>Detectors per concept</summary>
{% for c in concept_charts %}<img src="{{ c }}" alt="detectors per concept">
{% endfor %}</details>{% endif %}
<h2>Units</h2>
<nav class="controls" aria-label="filter units">
<button type="button" data-filter="" aria-pressed="false">all ({{ units }})</button>
{% for c in categories %}<button type="button" data-filter="{{ c.name }}" aria-pressed="false">{{ c.name }} ({{ c.units }})</button>
{% endfor %}<label><input type="checkbox" id="detectors-only"> detectors only</label>
<span class="count"><span id="shown">{{ units }}</span> shown</span>
<input type="search" id="search" placeholder="search concept" aria-label="search concept">
</nav>
<section class="units">
{% for u in cards %}<article class="unit{% if not u.detector %} weak{% endif %}" id="unit-{{ u.unit }}" data-category="{{ u.category }}" data-label="{{ u.label }}" data-detector="{{ 1 if u.detector else 0 }}">
<header><span>unit {{ u.unit }}</span><span class="label">{{ u.label or "(none)" }}</span><span class="cat">{{ u.category }}</span><span class="iou">IoU {{ "%.4f"|format(u.iou) }}</span></header>
{% if u.strip %}<img src="{{ u.strip }}" alt="top images of unit {{ u.unit }}" title="{{ u.images|join(', ') }}" width="{{ u.size[0] }}" height="{{ u.size[1] }}" loading="lazy">{% endif %}
</article>
{% endfor %}</section>
<script>{{ script|safe }}</script>
</body>
</html>
"""

_INDEX_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }}</title><style>{{ style|safe }}</style></head>
<body>
<h1>{{ title }}</h1>
{% if reports %}<h2>Reports</h2><ul>
{% for name, href in reports %}<li><a href="{{ href }}">{{ name }}</a></li>
{% endfor %}</ul>{% endif %}
{% for name, src in figures %}<h2>{{ name }}</h2><p><img src="{{ src }}" alt="{{ name }}"></p>
{% endfor %}</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_index(title: str, reports: Sequence[tuple[str, str]], figures: Sequence[tuple[str, str]]) -> str:
    """An index page linking reports (name, relative href) and showing figures (title, relative src)."""
    return _ENV.from_string(_INDEX_PAGE).render(title=title, reports=reports, figures=figures, style=_STYLE)


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def write_report(
    run_dir: Path,
    out: Path,
    *,
    layers: Sequence[str] | None = None,
    dataset: Path | None = None,
    images: bool = True,
    device: str = "cpu",
    top_concepts: int = 20,
    run: Run | None = None,
    trust_model_code: bool = False,
    trust_pickle: bool = False,
) -> list[Path]:
    """Write the HTML report of each layer of a run, its figures and tables into ``out``; return the files.

    This writes into ``out`` as it goes; commands use :func:`render_reports`, which stages it.
    """
    if images:
        from concepts.dissect.models import parse_device

        parse_device(device)  # before any page is written
    r = run or load_run(run_dir)
    chosen = list(layers) if layers else list(r.layers)
    for layer in chosen:
        r._check_layer(layer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def table(df: pd.DataFrame, name: str, index: bool = False) -> None:
        path = out / "tables" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, df.to_csv(index=index, lineterminator="\n", float_format="%.6g"))
        written.append(path)

    per_category = detectors_per_category(r, chosen)
    reports: list[tuple[str, str]] = []
    for layer in chosen:
        s = safe_name(layer)
        # Masks first: they need the model and dataset, the likeliest things to fail.
        strips: dict[int, tuple[np.ndarray, list[str]]] = {}
        if images:
            strips = unit_strips(r, layer, dataset=dataset, device=device, trust_model_code=trust_model_code, trust_pickle=trust_pickle)
        written += save_figure(plot_categories(r, layer), out / "plots" / f"{s}_categories")
        units = unit_table(r, layer)
        table(units, f"{s}_units.csv")
        table(detectors_per_concept(r, layer), f"{s}_concepts.csv")
        concept_charts = []
        for cat in r.categories(layer):
            if len(detectors_per_concept(r, layer, cat)):
                written += save_figure(plot_concepts(r, layer, cat, top_concepts), out / "plots" / f"{s}_concepts_{safe_name(cat)}")
                concept_charts.append(f"plots/{s}_concepts_{safe_name(cat)}.png")
        cards = []
        for row in units.itertuples(index=False):
            card: dict[str, Any] = {"unit": int(row.unit), "label": row.label, "category": row.category, "iou": float(row.iou), "detector": bool(row.detector), "strip": None, "images": [], "size": (0, 0)}
            if int(row.unit) in strips:
                pixels, names = strips[int(row.unit)]
                rel = f"{s}_units/unit{int(row.unit):04d}.jpg"
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
                atomic_write(path, buf.getvalue())
                written.append(path)
                card.update(strip=rel, images=names, size=(pixels.shape[1], pixels.shape[0]))
            cards.append(card)
        mine = per_category[per_category["layer"] == layer]
        det = units[units["detector"]]
        params = r.params(layer)
        args = r.record.get("args", {})
        chart = f"plots/{s}_categories.png"
        html = _ENV.from_string(_LAYER_PAGE).render(
            run=r.name,
            layer=layer,
            model=params.get("model") or args.get("model") or "?",
            weights=args.get("weights") or params.get("weights") or "?",
            dataset=args.get("dataset", "?"),
            images=r.record.get("images", "?"),
            quantile=params.get("quantile", args.get("quantile", "?")),
            iou_threshold=r.iou_threshold(layer),
            union=params.get("union", args.get("union", "?")),
            summary=mine.to_dict("records"),
            units=len(units),
            detectors=int(len(det)),
            unique_concepts=int(det["label"].nunique()),
            chart=chart,
            chart_size=_png_size(out / chart),
            concept_charts=concept_charts,
            categories=[{"name": c, "units": int((units["category"] == c).sum())} for c in r.categories(layer)],
            cards=cards,
            style=_STYLE,
            script=_SCRIPT,
        )
        page = out / f"{s}.html"
        atomic_write(page, html)
        written.append(page)
        reports.append((f"layer {layer}", page.name))
    table(per_category, "detectors_per_category.csv")
    table(detectors_per_layer(r, chosen), "detectors_per_layer.csv", index=True)
    written += save_figure(plot_layers(r, chosen), out / "plots" / "layers")
    index = out / "index.html"
    figures = [("Detectors across layers", "plots/layers.png")] + [(f"Layer {lay}", f"plots/{safe_name(lay)}_categories.png") for lay in chosen]
    atomic_write(index, render_index(f"Dissection report: {r.name}", reports, figures))
    written.append(index)
    return written


def write_comparison(runs: Sequence[Run], out: Path, layers: Sequence[str] | None = None) -> list[Path]:
    """Write the side-by-side figures and table of several runs into ``out``."""
    out = Path(out)
    written = save_figure(plot_categories(list(runs), layers), out / "plots" / "compare_categories")
    written += save_figure(plot_layers(list(runs), layers), out / "plots" / "compare_layers")
    path = out / "tables" / "compare_categories.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, detectors_per_category(list(runs), layers).to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    return written + [path]


def render_reports(
    runs: Sequence[Run],
    out: Path,
    *,
    overwrite: bool = False,
    inputs: Sequence[Path] = (),
    layers: Sequence[str] | None = None,
    dataset: Path | None = None,
    images: bool = True,
    device: str = "cpu",
    top_concepts: int = 20,
    trust_model_code: bool = False,
    trust_pickle: bool = False,
) -> list[Path]:
    """Write the report of one run, or of several with their comparison, as one staged output at ``out``.

    The folder appears whole or not at all (:func:`concepts.staging.staged_output`, kind
    ``report``); ``--overwrite`` replaces only an earlier report. Return the pages written.
    """
    from concepts.staging import staged_output

    out = Path(os.path.abspath(out))
    if images:
        from concepts.dissect.models import parse_device

        parse_device(device)

    def mine(r: Run) -> list[str] | None:
        return [lay for lay in layers if lay in r.layers] if layers else None

    options = dict(dataset=dataset, images=images, device=device, top_concepts=top_concepts, trust_model_code=trust_model_code, trust_pickle=trust_pickle)
    pages: list[Path] = []
    with staged_output(out, kind="report", overwrite=overwrite, inputs=inputs) as tmp, _named(tmp, out):
        if len(runs) == 1:
            written = write_report(runs[0].path, tmp, layers=mine(runs[0]), run=runs[0], **options)
            pages = [p for p in written if p.suffix == ".html"]
        else:
            links = []
            for r in runs:
                sub = safe_name(r.name.replace("/", "_"))
                written = write_report(r.path, tmp / sub, layers=mine(r), run=r, **options)
                pages += [p for p in written if p.suffix == ".html" and p.name != "index.html"]
                links.append((r.name, f"{sub}/index.html"))
            write_comparison(runs, tmp, layers)
            figures = [("Detectors per category", "plots/compare_categories.png"), ("Detectors across layers", "plots/compare_layers.png")]
            atomic_write(tmp / "index.html", render_index("Dissection reports: " + ", ".join(r.name for r in runs), links, figures))
            pages.append(tmp / "index.html")
    return [out / p.relative_to(tmp) for p in pages]


@contextlib.contextmanager
def _named(tmp: Path, out: Path) -> Iterator[None]:
    """Errors raised while writing into the staging folder name the user's ``out`` instead (the folder is gone after)."""
    try:
        yield
    except ConceptsError as e:
        if e.path is not None and Path(e.path).is_relative_to(tmp):
            e.path = out / Path(e.path).relative_to(tmp)
            e.args = (e.format(),)
        raise
    except OSError as e:
        from concepts.staging import OutputWriteError, write_failed

        name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else None
        if write_failed(e, tmp) or name is None:
            raise OutputWriteError(f"cannot write the report: {e.strerror or type(e).__name__}", path=out) from None
        raise UsageError(f"cannot read: {e.strerror or type(e).__name__}", path=name) from None


__all__ = ["overlay", "render_index", "render_reports", "unit_strips", "write_comparison", "write_report"]
