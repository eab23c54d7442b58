"""The dissection report: offline HTML pages of a run's layers, with the figures and tables beside them.

Each layer has a header (units, detectors and unique concepts per category; significant detectors
and the random-weights baseline when the run has them), its figures, one card per unit (label,
category, IoU with its interval and p-value when present, second and third concepts from the
matrices file) with a strip of the unit's top-k images, each outlined where the unit fires, and
a panel per detected concept (which units detect it, and images of the dataset that contain it,
outlined). Cards filter by category, search by concept and sort by IoU, unit or label; a click
enlarges an image; the view is kept in the URL. The scripts are inline; nothing is loaded from
the web.

Unit masks come from the run folder alone: the forward pass stored each unit's top-k
low-resolution maps (:mod:`dissect.topmaps`), which are upsampled (bilinear, pixel centres
aligned) and compared with the float64 thresholds, as the tally did. No model is built and no
model code imported. A run made before the maps were kept says so in one line on its pages;
``recompute=True`` (``--recompute``) then rebuilds the model named in ``run.json`` and reruns it
on the top-k images only. ``run.json`` is data, never consent: a ``package.module:factory`` it
names is imported only with ``--trust-model-code`` and a pickled model loaded only with
``--trust-pickle``, both on the command line (a stored ``trust_pickle`` is ignored).

Images are drawn once per dataset image (WebP) and shared by every tile that shows it; masks are
small palette PNGs inlined in the page. The folder form writes the images beside the pages;
``single_file=True`` writes one HTML file per run with every image and figure embedded.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from concepts.errors import ConceptsError, DatasetFormatError, ModelError, UsageError
from concepts.dissect.plots import (
    Run,
    detectors_per_category,
    detectors_per_concept,
    detectors_per_layer,
    interpretable_per_layer,
    load_run,
    plot_categories,
    plot_concepts,
    plot_interpretable,
    plot_layers,
    plot_sweep,
    plot_unique_layers,
    save_figure,
    unit_table,
    with_trust,
)
from concepts.dissect.results import atomic_write, safe_name
from concepts.dissect.topmaps import TopMaps

log = logging.getLogger(__name__)

#: Overlay colours: the unit mask's outline, a concept mask's outline, and how bright pixels outside a mask stay.
OUTLINE = (255, 214, 0)
CONCEPT_OUTLINE = (0, 220, 255)
DIM = 0.28
#: Masks are drawn at most this many pixels high (the segmentation size when smaller).
MASK_PX = 160
#: Images are stored at most this many pixels on their long side (shown smaller in the strips, full size when enlarged).
IMAGE_PX = 384
#: Dataset images scanned for examples of each detected concept, and examples shown per concept.
SCAN_IMAGES = 300
EXAMPLES = 6


# -- masks -----------------------------------------------------------------------------------


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` (``... x H x W``) grown by one pixel in the 8 directions."""
    out = mask.copy()
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    rows = out.copy()
    out[..., :, 1:] |= rows[..., :, :-1]
    out[..., :, :-1] |= rows[..., :, 1:]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = OUTLINE) -> np.ndarray:
    """Dim ``image`` outside ``mask`` (same height and width) and outline the mask just outside its edge."""
    inside = np.asarray(mask, bool)
    ring = _grow(inside) & ~inside  # outside the mask: every pixel the unit fires on stays as it is
    out = np.where(inside[..., None], image, np.round(np.asarray(image, np.float64) * DIM)).astype(np.uint8)
    out[ring] = color
    return out


def _nearest(n_src: int, n_dst: int) -> np.ndarray:
    """The source rows a nearest-neighbour resize from ``n_src`` to ``n_dst`` samples (PIL's rule)."""
    return np.minimum(((np.arange(n_dst) + 0.5) * (n_src / n_dst)).astype(np.int64), n_src - 1)


def _weights_at(n_in: int, n_out: int, rows: np.ndarray) -> np.ndarray:
    from concepts.dissect.topmaps import _weights

    return _weights(n_in, n_out)[rows]


def tile_masks(maps: np.ndarray, thresholds: np.ndarray, seg: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Masks of ``N x h x w`` maps at ``size``: the ``seg``-sized mask (bilinear, ``> threshold``) sampled nearest-neighbour.

    Only the segmentation pixels a nearest-neighbour resize keeps are interpolated, so each shown
    pixel is exactly the tally's pixel there.
    """
    h, w = maps.shape[-2:]
    # float32 products: the stored maps are float16, so float64 arithmetic would add no exactness here.
    wh = _weights_at(h, seg[0], _nearest(seg[0], size[0])).astype(np.float32)
    ww = _weights_at(w, seg[1], _nearest(seg[1], size[1])).astype(np.float32)
    out = np.empty((len(maps), *size), bool)
    step = max(1, (1 << 21) // max(1, size[0] * size[1]))
    for i in range(0, len(maps), step):
        values = wh @ np.asarray(maps[i : i + step], np.float32) @ ww.T
        out[i : i + step] = values > np.asarray(thresholds[i : i + step], np.float64)[:, None, None]
    return out


def _mask_png(masks: np.ndarray, color: tuple[int, int, int], gap: int = 0) -> bytes:
    """Masks (``k x H x W``) side by side as one palette PNG: clear inside, dimmed outside, outlined."""
    k, h, w = masks.shape
    grown = _grow(masks)
    idx = np.where(masks, 0, 1).astype(np.uint8)
    idx[grown & ~masks] = 2
    strip = idx.transpose(1, 0, 2).reshape(h, k * w)
    im = Image.fromarray(strip, "P")
    im.putpalette([0, 0, 0, 0, 0, 0, *color])
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=bytes([0, round(255 * (1 - DIM) * 0.75), 255]), compress_level=1)
    return buf.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# -- where the maps come from ----------------------------------------------------------------


def _open_dataset(run: Run, layer: str, dataset: Path | None) -> tuple[Any, list[Any]]:
    """The run's dataset and its selected samples, checked against what the run recorded."""
    from concepts.hub import open_any

    params = run.params(layer)
    args = run.record.get("args", {})
    spec = str(dataset) if dataset is not None else str(args.get("dataset", ""))
    root = Path(spec)
    try:
        ds = open_any(spec)
    except DatasetFormatError as e:
        raise UsageError(f"cannot open the run's dataset to draw unit images: {e.message}", path=e.path or root, hint="pass --dataset PATH, or --no-images") from None
    except OSError as e:
        raise UsageError(f"cannot open the run's dataset to draw unit images: {e.strerror or e}", path=root, hint="pass --dataset PATH, or --no-images") from None
    want = params.get("dataset")
    if want and ds.fingerprint() != want:
        raise UsageError(f"dataset differs from the one the run used (fingerprint {ds.fingerprint()}, run {want})", path=root, hint="pass the run's dataset with --dataset")
    return ds, ds.select(params.get("split"), params.get("limit"))


def _check_topk(run: Run, layer: str, topk: pd.DataFrame, samples: Sequence[Any] | None, units: int) -> None:
    path = run.file(layer, "topk")
    if len(topk) and int(topk["unit"].max()) > units:
        raise UsageError(f"top-k file names unit {int(topk['unit'].max())} but the layer has {units} units", path=path)
    if samples is None:
        return
    for i, name in zip(topk["image_index"].astype(int), topk["image"].astype(str)):
        if i >= len(samples) or samples[i].image != name:
            raise UsageError(f"top-k image {name} is not image {i} of the dataset", path=path, hint="pass the run's dataset with --dataset")


def stored_maps(run: Run, layer: str) -> TopMaps | None:
    """The layer's stored top-k maps, checked against ``topk_{layer}.csv``; None for a run made before they were kept."""
    maps = run.topmaps(layer)
    if maps is None:
        return None
    topk = run.topk(layer)
    _check_topk(run, layer, topk, None, maps.units)
    k = maps.maps.shape[1]
    for u, r, i in zip(topk["unit"].astype(int), topk["rank"].astype(int), topk["image_index"].astype(int)):
        if r > k or int(maps.image_index[u - 1, r - 1]) != i:
            raise UsageError(f"unit {u} rank {r}: top-k image {i} is not the one the top-k maps hold", path=run.file(layer, "topmaps"), hint="the run folder mixes files of different runs; run the dissection again")
    return maps


def recomputed_maps(
    run: Run, layer: str, ds: Any, samples: Sequence[Any], *, device: str = "cpu", batch_size: int = 16,
    trust_model_code: bool = False, trust_pickle: bool = False,
) -> TopMaps:
    """The top-k maps of an older run, by rebuilding its model and rerunning it on the top-k images only.

    The model is rebuilt from what ``run.json`` names, which is data, never consent: a
    ``package.module:factory`` is imported only with ``trust_model_code`` and a pickled model
    unpickled only with ``trust_pickle``, both given by the user on the command line.
    """
    import torch

    from concepts.dissect.data import ImagePrep, loader, stack_images
    from concepts.dissect.hooks import capture
    from concepts.dissect.models import is_factory, load_model, parse_device, parse_normalize
    from concepts.progress import progress

    topk = run.topk(layer)
    params = run.params(layer)
    args = run.record.get("args", {})
    thresholds = run.thresholds(layer)
    _check_topk(run, layer, topk, samples, len(thresholds))
    weights = args.get("weights")
    model_name = params.get("model") or args.get("model")
    if is_factory(model_name) and not trust_model_code:
        raise ModelError(f"names the model factory {model_name}; importing it runs its code", path=run.path / "run.json", hint="pass --trust-model-code to allow it, or --no-images")
    try:
        loaded = load_model(model_name, Path(weights) if weights else None, pretrained=bool(args.get("pretrained")), trust_pickle=trust_pickle,
                            trust_code=trust_model_code, model_args=args.get("model_args"))
    except ModelError as e:
        hint = f"{e.hint}, or --no-images" if e.hint else "pass --no-images to write the report without unit images"
        raise ModelError(f"cannot rebuild the model to draw unit masks: {e.message}", path=e.path, hint=hint) from None
    if params.get("weights") and loaded.weights_hash != params["weights"]:
        raise ModelError(f"weights differ from the run's (hash {loaded.weights_hash}, run {params['weights']})", path=weights, hint="pass --no-images to write the report without unit images")
    normalize = params.get("normalize") or args.get("normalize") or "imagenet"
    try:
        resize = params.get("resize") or None
        prep = ImagePrep(parse_normalize(normalize), tuple(resize["size"]) if resize else None, (resize or {}).get("interpolation", "bilinear"))
    except (UsageError, KeyError, TypeError) as e:
        raise UsageError(f"layers.{layer}.params.normalize or resize cannot be used: {getattr(e, 'message', e)}", path=run.path / "run.json") from None
    k = int(topk["rank"].max()) if len(topk) else 0
    units = len(thresholds)
    index = np.full((units, k), -1, np.int64)
    values = np.zeros((units, k), np.float32)
    needed = sorted({int(i) for i in topk["image_index"]})
    by_image: dict[int, list[tuple[int, int]]] = {}
    for u, r, i, v in zip(topk["unit"].astype(int), topk["rank"].astype(int), topk["image_index"].astype(int), topk["max_activation"].astype(float)):
        by_image.setdefault(i, []).append((u, r))
        index[u - 1, r - 1], values[u - 1, r - 1] = i, v
    maps: np.ndarray | None = None
    dev = parse_device(device)
    model = loaded.module.to(dev)
    subset = [samples[i] for i in needed]
    mismatched = 0
    data = loader(ds, subset, [], mean_std=prep, images=True, labels=False, batch_size=batch_size, workers=0)
    with torch.no_grad(), capture(model, [layer], layout=params.get("layout"), output=params.get("layer_output")) as grab:
        for items in progress(data, desc=f"maps {layer}", total=-(-len(subset) // batch_size), unit="batch"):
            feats = grab(stack_images(items).to(dev))[layer].float().cpu().numpy()
            if feats.shape[1] != units:
                raise ModelError(f"layer {layer} has {feats.shape[1]} units but the run has {units} thresholds")
            if maps is None:
                maps = np.zeros((units, k, *feats.shape[2:]), np.float32)
            for item, f in zip(items, feats):
                for u, r in by_image[needed[item.index]]:
                    maps[u - 1, r - 1] = f[u - 1]
                    if not np.isclose(f[u - 1].max(), values[u - 1, r - 1], rtol=1e-3, atol=1e-4):
                        mismatched += 1
    if mismatched:
        log.warning("%s: %d of %d top-k activations differ from the run's; the masks may not match its results", layer, mismatched, len(topk))
    if maps is None:
        maps = np.zeros((units, k, 1, 1), np.float32)
    return TopMaps(maps, index, values, np.asarray(thresholds, np.float64))


def unit_strips(
    run: Run, layer: str, *, dataset: Path | None = None, tile: int = 112, recompute: bool = False, device: str = "cpu",
    trust_model_code: bool = False, trust_pickle: bool = False,
) -> dict[int, tuple[np.ndarray, list[str]]]:
    """Per unit, its top-k images side by side with the unit's mask outlined, and their names (for notebooks)."""
    ds, samples = _open_dataset(run, layer, dataset)
    maps = None if recompute else stored_maps(run, layer)
    if maps is None:
        if not recompute:
            raise UsageError("the run has no stored top-k maps (made before they were kept)", path=run.file(layer, "topmaps"), hint="pass recompute=True (--recompute) to rebuild them with the model")
        maps = recomputed_maps(run, layer, ds, samples, device=device, trust_model_code=trust_model_code, trust_pickle=trust_pickle)
    _check_topk(run, layer, run.topk(layer), samples, maps.units)
    out: dict[int, tuple[np.ndarray, list[str]]] = {}
    pictures: dict[int, np.ndarray] = {}
    for u in range(maps.units):
        ranks = [r for r in range(maps.image_index.shape[1]) if maps.image_index[u, r] >= 0]
        if not ranks:
            continue
        tiles, names = [], []
        for r in ranks:
            s = samples[int(maps.image_index[u, r])]
            th, tw = tile, max(1, round(tile * s.iw / s.ih))
            if s.index not in pictures:
                pictures[s.index] = np.asarray(Image.fromarray(ds.load_image(s)).resize((tw, th), Image.Resampling.BILINEAR))
            m = tile_masks(maps.maps[u, r][None], maps.thresholds[u : u + 1], (s.sh, s.sw), (th, tw))[0]
            tiles.append(overlay(pictures[s.index], m))
            names.append(s.image)
        out[u + 1] = (_strip(tiles), names)
    return out


def _strip(tiles: Sequence[np.ndarray], gap: int = 3) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for t in tiles:
        out[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


# -- the images a page shows -----------------------------------------------------------------


@dataclass
class _Pictures:
    """Dataset images drawn once each (WebP), as files beside the pages or embedded in a single file."""

    ds: Any
    samples: Sequence[Any]
    out: Path
    folder: str
    single: bool
    written: list[Path] = field(default_factory=list)
    embedded: dict[str, str] = field(default_factory=dict)
    refs: dict[int, str] = field(default_factory=dict)

    def ref(self, i: int) -> str:
        """The key (single file) or relative path (folder) of sample ``i``'s picture, drawn on first use."""
        if i not in self.refs:
            s = self.samples[i]
            rgb = Image.fromarray(self.ds.load_image(s))
            scale = min(1.0, IMAGE_PX / max(rgb.size))
            if scale < 1.0:
                rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            rgb.save(buf, "WEBP", quality=72, method=2)
            if self.single:
                key = f"i{i}"
                self.embedded[key] = _data_uri(buf.getvalue(), "image/webp")
                self.refs[i] = key
            else:
                rel = f"{self.folder}/{i:06d}.webp"
                path = self.out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, buf.getvalue())
                self.written.append(path)
                self.refs[i] = rel
        return self.refs[i]


def _unit_tiles(maps: TopMaps, samples: Sequence[Any], pictures: _Pictures, units: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per unit (1-based): its tiles (picture, image name, rank, max activation) and its mask strip as a data URI."""
    k = maps.image_index.shape[1]
    out: dict[int, dict[str, Any]] = {}
    if not len(samples) or not k:
        return out
    s0 = samples[0]
    seg = (s0.sh, s0.sw)  # one size for every image (dissect refuses mixed sizes)
    size = (min(MASK_PX, seg[0]), max(1, round(min(MASK_PX, seg[0]) * seg[1] / seg[0])))
    chunk = max(1, 4096 // k)
    for c in range(0, len(units), chunk):
        us = np.asarray(units[c : c + chunk], np.int64) - 1
        flat = tile_masks(maps.maps[us].reshape(-1, *maps.maps.shape[2:]), np.repeat(maps.thresholds[us], k), seg, size).reshape(len(us), k, *size)
        for u, m in zip(us.tolist(), flat):
            ranks = [r for r in range(k) if maps.image_index[u, r] >= 0]
            if not ranks:
                continue
            tiles = []
            for r in ranks:
                i = int(maps.image_index[u, r])
                tiles.append({"src": pictures.ref(i), "image": samples[i].image, "rank": r + 1, "value": float(maps.max_activation[u, r]),
                              "pos": 100.0 * r / (k - 1) if k > 1 else 0.0})
            out[u + 1] = {"tiles": tiles, "mask": _data_uri(_mask_png(m, OUTLINE), "image/png"), "k": k}
    return out


def _concept_examples(ds: Any, samples: Sequence[Any], categories: Sequence[str], wanted: dict[str, int], pictures: _Pictures) -> tuple[dict[str, dict[str, Any]], int]:
    """Up to :data:`EXAMPLES` images of the first :data:`SCAN_IMAGES` containing each wanted concept (name -> label number), outlined."""
    numbers = {n: name for name, n in wanted.items()}
    found: dict[int, list[tuple[int, np.ndarray]]] = {n: [] for n in numbers}
    scanned = 0
    for s in samples[:SCAN_IMAGES]:
        if all(len(v) >= EXAMPLES for v in found.values()):
            break
        scanned += 1
        for cat in categories:
            if not s.has(cat):
                continue
            data = ds.load_labels(s, cat)
            if isinstance(data, list):
                for n in data:
                    if n in found and len(found[n]) < EXAMPLES and all(i != s.index for i, _ in found[n]):
                        found[n].append((s.index, np.ones((s.sh, s.sw), bool)))
                continue
            for n in np.unique(data).tolist():
                if n in found and len(found[n]) < EXAMPLES and all(i != s.index for i, _ in found[n]):
                    found[n].append((s.index, (data == n).any(axis=0)))
    out: dict[str, dict[str, Any]] = {}
    for n, hits in found.items():
        if not hits:
            continue
        h, w = hits[0][1].shape
        size = (min(MASK_PX, h), max(1, round(min(MASK_PX, h) * w / h)))
        masks = np.stack([m[_nearest(h, size[0])][:, _nearest(w, size[1])] for _, m in hits])
        k = len(hits)
        tiles = [{"src": pictures.ref(i), "image": samples[i].image, "rank": r + 1, "pos": 100.0 * r / (k - 1) if k > 1 else 0.0} for r, (i, _) in enumerate(hits)]
        out[numbers[n]] = {"tiles": tiles, "mask": _data_uri(_mask_png(masks, CONCEPT_OUTLINE), "image/png"), "k": k}
    return out, scanned


# -- HTML ------------------------------------------------------------------------------------

_STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; background: #fafafa; }
body { margin: 0 auto; max-width: 1400px; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.4rem; margin: .2rem 0; } h2 { font-size: 1.15rem; margin: 1.4rem 0 .4rem; } h3 { font-size: 1rem; margin: .8rem 0 .3rem; }
.meta { color: #555; font-size: .85rem; margin: .2rem 0 .8rem; }
.warn { background: #fff1c2; border: 1px solid #e0b400; border-radius: .3rem; padding: .4rem .7rem; font-weight: 600; }
.note { background: #eef3ff; border: 1px solid #9bb3e8; border-radius: .3rem; padding: .4rem .7rem; }
table.summary { border-collapse: collapse; font-size: .9rem; }
table.summary th, table.summary td { padding: .2rem .7rem; border-bottom: 1px solid #ddd; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
.top { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.top img, .figures img { max-width: 100%; height: auto; background: #fff; border: 1px solid #e5e5e5; }
.controls { position: sticky; top: 0; background: #fafafa; padding: .6rem 0; border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: .4rem; align-items: center; z-index: 2; }
.controls button { border: 1px solid #bbb; background: #fff; border-radius: 1rem; padding: .2rem .8rem; cursor: pointer; font-size: .85rem; }
.controls button[aria-pressed="true"] { background: #1d1d1f; color: #fff; border-color: #1d1d1f; }
.controls input[type=search] { margin-left: auto; padding: .3rem .6rem; border: 1px solid #bbb; border-radius: .3rem; min-width: 14rem; }
.controls label, .controls select { font-size: .85rem; }
.count { font-size: .85rem; color: #555; }
.units, .concepts { display: grid; gap: .6rem; margin-top: .8rem; }
article.unit, article.concept { background: #fff; border: 1px solid #e2e2e2; border-radius: .4rem; padding: .5rem .7rem; }
article.unit.weak { opacity: .65; }
article header { display: flex; flex-wrap: wrap; gap: .8rem; align-items: baseline; font-size: .9rem; margin-bottom: .35rem; }
article .label { font-weight: 600; font-size: 1rem; }
article .cat { background: #eef; border-radius: .3rem; padding: 0 .4rem; }
article .iou { margin-left: auto; font-variant-numeric: tabular-nums; }
article .sig { background: #dff5e1; border-radius: .3rem; padding: 0 .4rem; }
article .more { color: #555; font-size: .85rem; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; }
figure.tile { position: relative; margin: 0; width: 144px; cursor: zoom-in; line-height: 0; }
figure.tile img, #lightbox img { display: block; width: 100%; height: auto; }
.ov { position: absolute; inset: 0; background-image: var(--mask); background-repeat: no-repeat; image-rendering: pixelated; pointer-events: none; }
.concept-list a { margin-right: .6rem; white-space: nowrap; }
#lightbox { position: fixed; inset: 0; background: rgba(0,0,0,.8); display: flex; align-items: center; justify-content: center; z-index: 5; cursor: zoom-out; }
#lightbox figure { position: relative; margin: 0; width: min(90vw, 90vh, 768px); line-height: 0; }
#lightbox figcaption { color: #fff; line-height: 1.4; font-size: .9rem; padding-top: .4rem; }
[hidden] { display: none !important; }
"""

_SCRIPT = """
(function () {
  var store = document.getElementById("pictures");
  if (store) {
    var pictures = JSON.parse(store.textContent);
    document.querySelectorAll("img[data-picture]").forEach(function (im) { im.src = pictures[im.dataset.picture]; });
  }
  // Once everything has loaded, the page records how many of its images show (a copied page with missing files says so).
  window.addEventListener("load", function () {
    var shown = 0, broken = 0;
    document.querySelectorAll("img[src]").forEach(function (im) {
      if (im.complete && im.naturalWidth > 0) { shown += 1; } else { broken += 1; im.classList.add("broken"); }
    });
    document.body.dataset.imagesShown = String(shown);
    document.body.dataset.imagesBroken = String(broken);
  });
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.unit"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-filter]"));
  var search = document.getElementById("search");
  var strong = document.getElementById("detectors-only");
  var sig = document.getElementById("significant-only");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  var category = "";
  function state() {
    var p = new URLSearchParams();
    if (category) p.set("category", category);
    if (search && search.value.trim()) p.set("q", search.value.trim().toLowerCase());
    if (strong && strong.checked) p.set("detectors", "1");
    if (sig && sig.checked) p.set("significant", "1");
    if (sort && sort.value !== "iou") p.set("sort", sort.value);
    var c = new URLSearchParams(location.hash.slice(1)).get("concept");
    if (c) p.set("concept", c);
    return p;
  }
  function order() {
    if (!sort) return;
    var key = sort.value;
    document.querySelectorAll("section.units").forEach(function (box) {
      var items = Array.prototype.slice.call(box.children);
      items.sort(function (a, b) {
        if (key === "unit") return Number(a.dataset.unit) - Number(b.dataset.unit);
        if (key === "label") return a.dataset.label.localeCompare(b.dataset.label) || Number(b.dataset.iou) - Number(a.dataset.iou) || Number(a.dataset.unit) - Number(b.dataset.unit);
        return Number(b.dataset.iou) - Number(a.dataset.iou) || Number(a.dataset.unit) - Number(b.dataset.unit);
      });
      items.forEach(function (x) { box.appendChild(x); });
    });
  }
  function apply() {
    var q = search ? search.value.trim().toLowerCase() : "";
    var n = 0;
    cards.forEach(function (c) {
      var ok = (!category || c.dataset.category === category) &&
               (!q || c.dataset.label.toLowerCase().indexOf(q) >= 0) &&
               (!strong || !strong.checked || c.dataset.detector === "1") &&
               (!sig || !sig.checked || c.dataset.significant === "1");
      c.hidden = !ok;
      if (ok) n += 1;
    });
    if (shown) shown.textContent = String(n);
    order();
    try { history.replaceState(null, "", "#" + state().toString()); } catch (e) { /* file: URLs may refuse */ }
  }
  function concept() {
    var want = new URLSearchParams(location.hash.slice(1)).get("concept") || "";
    var any = false;
    document.querySelectorAll("article.concept").forEach(function (a) {
      a.hidden = !(want && a.dataset.concept === want);
      if (!a.hidden) any = true;
    });
    document.querySelectorAll("section.concepts").forEach(function (s) { s.hidden = !any; });
    var first = document.querySelector("article.concept:not([hidden])");
    if (first && first.scrollIntoView) first.scrollIntoView();
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      category = b.dataset.filter;
      buttons.forEach(function (x) { x.setAttribute("aria-pressed", String(x === b)); });
      apply();
    });
  });
  [search, strong, sig, sort].forEach(function (el) { if (el) el.addEventListener(el === search ? "input" : "change", apply); });
  document.querySelectorAll("a[data-concept]").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      var p = state(); p.set("concept", a.dataset.concept);
      try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { location.hash = p.toString(); }
      concept();
    });
  });
  window.addEventListener("hashchange", concept);
  var box = document.getElementById("lightbox");
  document.querySelectorAll("figure.tile").forEach(function (t) {
    t.addEventListener("click", function () {
      var img = box.querySelector("img"), ov = box.querySelector(".ov"), style = getComputedStyle(t.querySelector(".ov"));
      img.src = t.querySelector("img").src;
      ov.style.backgroundImage = style.backgroundImage;
      ov.style.backgroundSize = style.backgroundSize;
      ov.style.backgroundPosition = style.backgroundPosition;
      box.querySelector("figcaption").textContent = t.title;
      box.hidden = false;
    });
  });
  if (box) {
    box.addEventListener("click", function () { box.hidden = true; });
    document.addEventListener("keydown", function (e) { if (e.key === "Escape") box.hidden = true; });
  }
  // The URL hash (#category=object&q=dog&detectors=1&sort=unit&concept=dog) restores a view through the same handlers.
  var init = new URLSearchParams(location.hash.slice(1));
  if (search && init.get("q")) search.value = init.get("q");
  if (strong && init.get("detectors")) strong.checked = true;
  if (sig && init.get("significant")) sig.checked = true;
  if (sort && init.get("sort")) sort.value = init.get("sort");
  var start = buttons.filter(function (x) { return x.dataset.filter === (init.get("category") || ""); })[0] || buttons[0];
  if (start) start.click(); else apply();
  concept();
})();
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ style|safe }}</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if random %}<p class="warn" id="random-weights">Random weights: this run dissected an untrained network; its detectors describe chance, not learned features.</p>{% endif %}
{% for note in notes %}<p class="note">{{ note }}</p>
{% endfor %}{% if links %}<p class="meta">{% for name, href in links %}<a href="{{ href }}">{{ name }}</a>{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>{% endif %}
{% if figures %}<section class="figures">{% for name, src in figures %}<h3>{{ name }}</h3><p><img src="{{ src }}" alt="{{ name }}"></p>
{% endfor %}</section>{% endif %}
{% if sections %}<nav class="controls" aria-label="filter units">
<button type="button" data-filter="" aria-pressed="false">all ({{ total_units }})</button>
{% for c in categories %}<button type="button" data-filter="{{ c.name }}" aria-pressed="false">{{ c.name }} ({{ c.units }})</button>
{% endfor %}<label><input type="checkbox" id="detectors-only"> detectors only</label>
{% if trust %}<label><input type="checkbox" id="significant-only"> significant only</label>{% endif %}
<label>sort <select id="sort" aria-label="sort units"><option value="iou">by IoU</option><option value="unit">by unit</option><option value="label">by label</option></select></label>
<span class="count"><span id="shown">{{ total_units }}</span> shown</span>
<input type="search" id="search" placeholder="search concept" aria-label="search concept">
</nav>{% endif %}
{% for L in sections %}<section class="layer" id="layer-{{ L.id }}">
<h2>layer {{ L.name }}</h2>
<p class="meta">model {{ L.model }} &middot; weights {{ L.weights }} &middot; dataset {{ L.dataset }} ({{ L.images }} images) &middot;
quantile {{ L.quantile }} &middot; IoU threshold {{ L.iou_threshold }} &middot; union {{ L.union }}</p>
{% for note in L.notes %}<p class="note">{{ note }}</p>
{% endfor %}<div class="top">
<table class="summary">
<thead><tr><th>category</th><th>detectors</th><th>unique concepts</th>{% for h in L.extra_heads %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in L.summary %}<tr><td>{{ row.category }}</td><td>{{ row.detectors }}</td><td>{{ row.unique_concepts }}</td>{% for v in row.extra %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
<tfoot><tr><th>all ({{ L.units }} units)</th><th>{{ L.detectors }}</th><th>{{ L.unique_concepts }}</th>{% for v in L.extra_total %}<th>{{ v }}</th>{% endfor %}</tr></tfoot>
</table>
{% for name, src in L.charts %}<img src="{{ src }}" alt="{{ name }}">
{% endfor %}</div>
{% if L.concepts %}<h3>Concepts</h3><p class="concept-list">{% for c in L.concepts %}<a href="#concept={{ c.name|urlencode }}" data-concept="{{ c.name }}">{{ c.name }} ({{ c.units|length }})</a>{% endfor %}</p>
<section class="concepts" hidden>
{% for c in L.concepts %}<article class="concept" id="concept-{{ L.id }}-{{ loop.index }}" data-concept="{{ c.name }}" hidden>
<header><span class="label">{{ c.name }}</span><span class="cat">{{ c.category }}</span><span class="more">detected by {{ c.units|length }} unit(s) of layer {{ L.name }}</span></header>
<p>{% for u in c.units %}<a href="#unit-{{ L.id }}-{{ u.unit }}">unit {{ u.unit }}</a> (IoU {{ "%.4f"|format(u.iou) }}){% if not loop.last %}, {% endif %}{% endfor %}</p>
{% if c.examples %}<p class="more">in the dataset: {{ c.examples.tiles|length }} image(s) containing it, outlined (found among the first {{ L.scanned }} images scanned):</p>
<div class="strip" style="--mask: url('{{ c.examples.mask }}')">{% for t in c.examples.tiles %}<figure class="tile" title="{{ t.image }}: {{ c.name }}">{% if single %}<img data-picture="{{ t.src }}" alt="{{ t.image }}">{% else %}<img src="{{ t.src }}" alt="{{ t.image }}">{% endif %}<span class="ov" style="background-size: {{ c.examples.k * 100 }}% 100%; background-position: {{ "%.4f"|format(t.pos) }}% 0"></span></figure>{% endfor %}</div>
{% elif L.scanned %}<p class="more">not found in the first {{ L.scanned }} images of the dataset</p>{% endif %}
</article>
{% endfor %}</section>{% endif %}
<h3>Units</h3>
<section class="units">
{% for u in L.cards %}<article class="unit{% if not u.detector %} weak{% endif %}" id="unit-{{ L.id }}-{{ u.unit }}" data-unit="{{ u.unit }}" data-category="{{ u.category }}" data-label="{{ u.label }}" data-iou="{{ u.iou }}" data-detector="{{ 1 if u.detector else 0 }}"{% if u.significant is not none %} data-significant="{{ 1 if u.significant else 0 }}"{% endif %}>
<header><span>unit {{ u.unit }}</span><span class="label">{{ u.label or "(none)" }}</span><span class="cat">{{ u.category }}</span>{% if u.significant %}<span class="sig">significant</span>{% endif %}
{% if u.others %}<span class="more">then {% for o in u.others %}{{ o.label }} ({{ "%.3f"|format(o.iou) }}){% if not loop.last %}, {% endif %}{% endfor %}</span>{% endif %}
<span class="iou">IoU {{ "%.4f"|format(u.iou) }}{% if u.interval %} [{{ "%.4f"|format(u.interval[0]) }}, {{ "%.4f"|format(u.interval[1]) }}]{% endif %}{% if u.p is not none %} &middot; p = {{ "%.2g"|format(u.p) }}{% endif %}</span></header>
{% if u.strip %}<div class="strip" style="--mask: url('{{ u.strip.mask }}')">{% for t in u.strip.tiles %}<figure class="tile" title="{{ t.image }}: unit {{ u.unit }}, rank {{ t.rank }}, max {{ "%.4g"|format(t.value) }}">{% if single %}<img data-picture="{{ t.src }}" alt="{{ t.image }}">{% else %}<img src="{{ t.src }}" alt="{{ t.image }}">{% endif %}<span class="ov" style="background-size: {{ u.strip.k * 100 }}% 100%; background-position: {{ "%.4f"|format(t.pos) }}% 0"></span></figure>{% endfor %}</div>{% endif %}
</article>
{% endfor %}</section>
</section>
{% endfor %}{% if sections %}<div id="lightbox" hidden><figure><img alt="enlarged image"><span class="ov"></span><figcaption></figcaption></figure></div>{% endif %}
{% if pictures %}<script type="application/json" id="pictures">{{ pictures|safe }}</script>{% endif %}
<script>{{ script|safe }}</script>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _page(**kw: Any) -> str:
    base = {"random": False, "notes": [], "links": [], "figures": [], "sections": [], "categories": [], "total_units": 0, "trust": False, "single": False, "pictures": None}
    base.update(kw)
    return _ENV.from_string(_PAGE).render(style=_STYLE, script=_SCRIPT, **base)


def render_index(title: str, reports: Sequence[tuple[str, str]], figures: Sequence[tuple[str, str]], *, random: bool = False, notes: Sequence[str] = ()) -> str:
    """An index page linking reports (name, relative href) and showing figures (title, relative src)."""
    return _page(title=title, links=list(reports), figures=list(figures), random=random, notes=list(notes))


def _json_for_script(obj: Any) -> str:
    # Inside <script type="application/json">, "</" could end the element: escape it.
    return json.dumps(obj, sort_keys=True).replace("</", "<\\/")


def _fmt(v: Any) -> str:
    return f"{v:.0f}" if isinstance(v, float) and v.is_integer() else f"{v:.4g}" if isinstance(v, float) else str(v)


def _others(run: Run, layer: str, units: pd.DataFrame) -> dict[int, list[dict[str, Any]]]:
    """Per unit, its second and third concepts by IoU (over every label, from the matrices file)."""
    try:
        m = run.matrices(layer)
    except UsageError as e:
        log.info("%s: no second and third concepts (%s)", layer, e)
        return {}
    iou, names = np.asarray(m["iou"], np.float64), [str(n) for n in m["label_names"]]
    if iou.shape[0] < int(units["unit"].max() if len(units) else 0):
        return {}
    iou = iou.copy()
    iou[:, 0] = -1.0  # label 0 is "no label", never a concept
    top = np.argsort(-iou, axis=1, kind="stable")[:, :3]
    out = {}
    for u, label in zip(units["unit"].astype(int), units["label"]):
        picks = [j for j in top[u - 1].tolist() if names[j] != label and iou[u - 1, j] > 0][:2]
        out[u] = [{"label": names[j], "iou": float(iou[u - 1, j])} for j in picks]
    return out


def _trust_columns(tally: pd.DataFrame) -> dict[str, pd.Series]:
    """The significance columns a tally has (``p-value``, ``z``, ``iou-low``, ``iou-high``, ``significant``), as numbers."""
    out = {}
    for c in ("p-value", "z", "iou-low", "iou-high"):
        if c in tally.columns:
            out[c] = pd.to_numeric(tally[c], errors="coerce")
    if "significant" in tally.columns:
        out["significant"] = tally["significant"].astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
    return out


@dataclass
class _Drawn:
    """What one layer's section needs besides its tables."""

    strips: dict[int, dict[str, Any]] = field(default_factory=dict)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    scanned: int = 0
    missing: bool = False  # the run has no stored top-k maps for the layer


def _draw_layer(run: Run, layer: str, units: pd.DataFrame, ds_cache: dict[str, Any], pictures_for: Any, *, dataset: Path | None, recompute: bool,
                device: str, trust_model_code: bool, trust_pickle: bool) -> _Drawn:
    drawn = _Drawn()
    maps = None if recompute else stored_maps(run, layer)
    if maps is None and not recompute:
        drawn.missing = True
        return drawn
    key = str(dataset) + "|" + json.dumps([run.params(layer).get(k) for k in ("dataset", "split", "limit")]) + str(run.record.get("args", {}).get("dataset"))
    if key not in ds_cache:
        ds_cache[key] = _open_dataset(run, layer, dataset)
    ds, samples = ds_cache[key]
    if maps is None:
        maps = recomputed_maps(run, layer, ds, samples, device=device, trust_model_code=trust_model_code, trust_pickle=trust_pickle)
    _check_topk(run, layer, run.topk(layer), samples, maps.units)
    pictures = pictures_for(ds, samples)
    drawn.strips = _unit_tiles(maps, samples, pictures, units["unit"].astype(int).tolist())
    det = units[units["detector"]]
    try:
        names = [str(n) for n in run.matrices(layer)["label_names"]]
    except UsageError:
        names = ds.label_names()
    wanted = {lab: names.index(lab) for lab in dict.fromkeys(det["label"]) if lab and lab in names}
    if wanted:
        try:
            drawn.examples, drawn.scanned = _concept_examples(ds, samples, run.categories(layer), wanted, pictures)
        except DatasetFormatError as e:  # the unit images stand; only the concepts' examples are left out
            log.warning("%s: no concept examples: %s", layer, e)
    return drawn


def _layer_section(run: Run, layer: str, units: pd.DataFrame, drawn: _Drawn, charts: list[tuple[str, str]]) -> dict[str, Any]:
    tally = run.tally(layer)
    trust = _trust_columns(tally)
    by_unit = {int(u): i for i, u in enumerate(tally["unit"])}
    others = _others(run, layer, units)
    cards = []
    for row in units.itertuples(index=False):
        u = int(row.unit)
        i = by_unit.get(u)
        low = trust.get("iou-low")
        high = trust.get("iou-high")
        interval = (float(low.iloc[i]), float(high.iloc[i])) if low is not None and high is not None and i is not None and pd.notna(low.iloc[i]) and pd.notna(high.iloc[i]) else None
        p = trust["p-value"].iloc[i] if "p-value" in trust and i is not None and pd.notna(trust["p-value"].iloc[i]) else None
        sig = bool(trust["significant"].iloc[i]) if "significant" in trust and i is not None else None
        cards.append({"unit": u, "label": row.label, "category": row.category, "iou": float(row.iou), "detector": bool(row.detector), "strip": drawn.strips.get(u),
                      "others": others.get(u, []), "interval": interval, "p": None if p is None else float(p), "significant": sig})
    per_cat = with_trust(detectors_per_category(run, layer), run)
    extra_cols = [c for c in ("significant_detectors", "significant_unique_concepts", "baseline_detectors", "baseline_unique_concepts") if c in per_cat.columns]
    heads = {"significant_detectors": "significant detectors", "significant_unique_concepts": "significant concepts", "baseline_detectors": "random-weights detectors", "baseline_unique_concepts": "random-weights concepts"}
    summary = [{"category": r["category"], "detectors": r["detectors"], "unique_concepts": r["unique_concepts"], "extra": [_fmt(r[c]) if pd.notna(r[c]) else "" for c in extra_cols]} for _, r in per_cat.iterrows()]
    total = interpretable_per_layer(run, layer).iloc[0]
    extra_total = [_fmt(total[c]) if c in total.index and pd.notna(total[c]) else "" for c in extra_cols]
    det = units[units["detector"]]
    concepts = []
    for (label, cat), g in det.groupby(["label", "category"], sort=False):
        if label:
            concepts.append({"name": label, "category": cat, "units": [{"unit": int(u), "iou": float(v)} for u, v in zip(g["unit"], g["iou"])], "examples": drawn.examples.get(label)})
    concepts.sort(key=lambda c: (-len(c["units"]), -c["units"][0]["iou"], c["name"]))
    params = run.params(layer)
    args = run.record.get("args", {})
    return {
        "id": safe_name(layer), "name": layer, "notes": [], "charts": charts, "cards": cards, "concepts": concepts, "scanned": drawn.scanned,
        "model": params.get("model") or args.get("model") or "?", "weights": args.get("weights") or params.get("weights") or ("random" if run.random_weights else "?"),
        "dataset": args.get("dataset", "?"), "images": run.record.get("images", "?"), "quantile": params.get("quantile", args.get("quantile", "?")),
        "iou_threshold": run.iou_threshold(layer), "union": params.get("union", args.get("union", "?")),
        "summary": summary, "extra_heads": [heads[c] for c in extra_cols], "extra_total": extra_total,
        "units": len(units), "detectors": int(len(det)), "unique_concepts": int(det["label"].nunique()), "trust": bool(trust),
    }


def _controls(sections: list[dict[str, Any]], run: Run, layers: Sequence[str]) -> dict[str, Any]:
    cats: dict[str, int] = {}
    for layer in layers:
        t = unit_table(run, layer)
        for c in run.categories(layer):
            cats[c] = cats.get(c, 0) + int((t["category"] == c).sum())
    return {"categories": [{"name": c, "units": n} for c, n in cats.items()], "total_units": sum(s["units"] for s in sections), "trust": any(s["trust"] for s in sections)}


class _Figures:
    """A report's figures (PNG, SVG and CSV each), drawn in a forked process while this one draws the images.

    Forking is used only where it is safe and useful: a POSIX system, no other Python thread, no
    model run in this process, two figures or more. A figure process that fails is not trusted
    to have explained why: the figures are then drawn again here, so its error surfaces as usual.
    """

    def __init__(self, out: Path, fork: bool) -> None:
        self.out, self.fork = out, fork
        self.jobs: list[tuple[Any, str, pd.DataFrame]] = []
        self.pid: int | None = None

    def add(self, make: Any, stem: str, table: pd.DataFrame) -> Path:
        """Queue one figure (``make()`` returns it); return the path its PNG will have."""
        self.jobs.append((make, stem, table))
        return self.out / "plots" / f"{stem}.png"

    def paths(self) -> list[Path]:
        """Every file the queued figures write."""
        return [self.out / "plots" / f"{stem}.{ext}" for _, stem, _ in self.jobs for ext in ("png", "svg", "csv")]

    def _draw(self) -> None:
        for make, stem, table in self.jobs:
            save_figure(make(), self.out / "plots" / stem, table=table)

    def start(self) -> None:
        """Start drawing in a child process, where that is safe (else :meth:`finish` draws them)."""
        import threading

        if not (self.fork and hasattr(os, "fork") and threading.active_count() == 1 and len(self.jobs) > 1):
            return
        (self.out / "plots").mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: draw, then leave without running the parent's clean-up
            code = 1
            try:
                self._draw()
                code = 0
            finally:
                os._exit(code)
        self.pid = pid

    def finish(self) -> None:
        """Wait for the child (or draw here)."""
        if self.pid is None:
            self._draw()
            return
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if os.waitstatus_to_exitcode(status) != 0:
            self._draw()

    def cancel(self) -> None:
        """Stop a child still drawing (the report failed elsewhere)."""
        if self.pid is not None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None


def _src(path: Path, out: Path, single: bool) -> str:
    """How a page refers to a written figure: relative path, or the PNG embedded."""
    return _data_uri(path.read_bytes(), "image/png") if single else path.relative_to(out).as_posix()


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
    recompute: bool = False,
    single_file: bool = False,
) -> list[Path]:
    """Write the report of a run into ``out``: pages, figures (PNG, SVG, CSV) and tables; return the files.

    The folder form writes one page per layer and an index; ``single_file`` writes one
    ``{run}.html`` with every image and figure embedded (the figures and tables are written beside
    it all the same). This writes into ``out`` as it goes; commands use :func:`render_reports`,
    which stages it.
    """
    if device != "cpu" or (images and recompute):
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

    ds_cache: dict[str, Any] = {}
    shared: dict[int, _Pictures] = {}

    def pictures_for(ds: Any, samples: Sequence[Any]) -> _Pictures:
        key = id(samples)
        if key not in shared:
            shared[key] = _Pictures(ds, samples, out, f"images{len(shared) or ''}", single_file)
        return shared[key]

    # Figures need only the run's tables: queued first, drawn beside the images.
    figs = _Figures(out, fork=not (images and recompute))
    charts: dict[str, list[tuple[str, Path]]] = {}
    for layer in chosen:
        s = safe_name(layer)
        charts[layer] = [("unique concepts and detectors per category", figs.add(lambda layer=layer: plot_categories(r, layer), f"{s}_categories", with_trust(detectors_per_category(r, layer), r)))]
        concepts = detectors_per_concept(r, layer, top=top_concepts)
        if len(concepts):
            charts[layer].append(("detectors per concept", figs.add(lambda layer=layer: plot_concepts(r, layer, top=top_concepts), f"{s}_concepts", concepts)))
        sweep = r.sweep(layer)
        if sweep is not None:
            charts[layer].append(("detectors against the IoU threshold", figs.add(lambda layer=layer: plot_sweep(r, layer), f"{s}_sweep", sweep)))
    run_figures = [
        ("Unique concepts per category across layers", figs.add(lambda: plot_unique_layers(r, chosen), "unique_layers", detectors_per_category(r, chosen))),
        ("Interpretable units per layer", figs.add(lambda: plot_interpretable(r, chosen), "interpretable", interpretable_per_layer(r, chosen))),
    ]
    sections = []
    missing = []
    figs.start()
    try:
        for layer in chosen:
            s = safe_name(layer)
            units = unit_table(r, layer)
            drawn = _draw_layer(r, layer, units, ds_cache, pictures_for, dataset=dataset, recompute=recompute, device=device,
                                trust_model_code=trust_model_code, trust_pickle=trust_pickle) if images else _Drawn()
            table(units, f"{s}_units.csv")
            table(detectors_per_concept(r, layer), f"{s}_concepts.csv")
            sections.append(_layer_section(r, layer, units, drawn, charts[layer]))
            if drawn.missing:
                missing.append(layer)
        per_category = with_trust(detectors_per_category(r, chosen), r)
        table(per_category, "detectors_per_category.csv")
        table(detectors_per_layer(r, chosen), "detectors_per_layer.csv", index=True)
        figs.finish()
    finally:
        figs.cancel()
    written += figs.paths()
    for sec in sections:
        sec["charts"] = [(n, _src(p, out, single_file)) for n, p in sec["charts"]]
    figures = [(n, _src(p, out, single_file)) for n, p in run_figures]
    for p in shared.values():
        written += p.written
    notes = []
    if missing:
        notes.append(f"No unit images: this run has no stored top-k maps for layer(s) {', '.join(missing)} (it was made before they were kept); "
                     "`concepts report --recompute` draws them by rerunning the model, or run the dissection again.")
        log.warning("%s: %s", r.path, notes[-1])
    if single_file:
        embedded = {k: v for p in shared.values() for k, v in p.embedded.items()}
        page = out / f"{safe_name(r.name.replace('/', '_'))}.html"
        atomic_write(page, _page(title=f"Dissection report: {r.title}", random=r.random_weights, notes=notes, figures=figures, sections=sections, single=True,
                                 pictures=_json_for_script(embedded) if embedded else None, **_controls(sections, r, chosen)))
        return written + [page]
    reports = []
    for layer, sec in zip(chosen, sections):
        page = out / f"{safe_name(layer)}.html"
        atomic_write(page, _page(title=f"{r.title} · layer {layer}: dissection report", random=r.random_weights, notes=notes, sections=[sec],
                                 links=[("index", "index.html")], **_controls([sec], r, [layer])))
        written.append(page)
        reports.append((f"layer {layer}", page.name))
    index = out / "index.html"
    atomic_write(index, render_index(f"Dissection report: {r.title}", reports, figures, random=r.random_weights, notes=notes))
    written.append(index)
    return written


def write_comparison(runs: Sequence[Run], out: Path, layers: Sequence[str] | None = None) -> list[Path]:
    """Write the side-by-side figures (PNG, SVG and CSV) and table of several runs into ``out``."""
    out = Path(out)
    rs = list(runs)
    plots = out / "plots"
    written = save_figure(plot_unique_layers(rs, layers), plots / "compare_unique_layers", table=detectors_per_category(rs, layers))
    written += save_figure(plot_interpretable(rs, layers), plots / "compare_interpretable", table=interpretable_per_layer(rs, layers))
    written += save_figure(plot_categories(rs, layers), plots / "compare_categories", table=with_trust(detectors_per_category(rs, layers), rs))
    written += save_figure(plot_layers(rs, layers), plots / "compare_layers", table=pd.concat([detectors_per_layer(r, layers).reset_index().assign(run=r.name) for r in rs], ignore_index=True))
    last = [([lay for lay in (layers or r.layers) if lay in r.layers] or r.layers)[-1] for r in rs]
    written += save_figure(plot_concepts(rs, last), plots / "compare_concepts", table=pd.concat([detectors_per_concept(r, lay).assign(run=r.name, layer=lay) for r, lay in zip(rs, last)], ignore_index=True))
    path = out / "tables" / "compare_categories.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, detectors_per_category(rs, layers).to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    return written + [path]


#: The comparison figures, in the order the comparison page shows them.
_COMPARE = [
    ("Unique concepts per category across layers", "compare_unique_layers"),
    ("Interpretable units per layer", "compare_interpretable"),
    ("Unique concepts and detectors per category", "compare_categories"),
    ("Detectors per category across layers", "compare_layers"),
    ("Detectors per concept (last layer of each run)", "compare_concepts"),
]


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
    recompute: bool = False,
    single_file: bool = False,
) -> list[Path]:
    """Write the report of one run, or of several with their comparison, as one staged output at ``out``.

    The folder appears whole or not at all (:func:`concepts.staging.staged_output`, kind
    ``report``); ``--overwrite`` replaces only an earlier report. Return the pages written.
    """
    from concepts.staging import staged_output

    out = Path(os.path.abspath(out))
    if device != "cpu" or (images and recompute):
        from concepts.dissect.models import parse_device

        parse_device(device)

    def mine(r: Run) -> list[str] | None:
        return [lay for lay in layers if lay in r.layers] if layers else None

    options = dict(dataset=dataset, images=images, device=device, top_concepts=top_concepts, trust_model_code=trust_model_code, trust_pickle=trust_pickle,
                   recompute=recompute, single_file=single_file)
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
                html = [p for p in written if p.suffix == ".html"]
                pages += [p for p in html if p.name != "index.html"]
                links.append((r.title, (html[-1] if single_file else tmp / sub / "index.html").relative_to(tmp).as_posix()))
            write_comparison(runs, tmp, layers)
            figures = [(name, _src(tmp / "plots" / f"{stem}.png", tmp, single_file)) for name, stem in _COMPARE]
            title = "Dissection reports: " + ", ".join(r.title for r in runs)
            atomic_write(tmp / "index.html", render_index(title, links, figures, random=any(r.random_weights for r in runs)))
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


__all__ = ["overlay", "recomputed_maps", "render_index", "render_reports", "stored_maps", "tile_masks", "unit_strips", "write_comparison", "write_report"]
