"""Dissection speed next to a plain forward pass and a straightforward tally, on the same data.

Generates an ``--images`` image Broden dataset (224 px images, 112 px labels; color, object and
part pixel categories, part with two layers on some images, and an image-level scene category),
then in one process times:

* a plain ResNet-18 forward pass up to ``layer4`` (same DataLoader decoding the same JPEGs);
* our full dissection of ``layer4`` (features, exact thresholds, tally, result files);
* a straightforward tally like the reference's: per image, per unit, upsample, threshold,
  bincount (on features held in RAM, with our thresholds; label decoding included).

It checks that both tallies give identical counts, and prints times, ratios and peak memory.
Run: ``python benchmarks/dissect_speed.py --images 1000`` (``--images 64`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synth import SynthRow, write_broden  # noqa: E402

from concepts import progress  # noqa: E402
from concepts.broden.reader import open_dataset  # noqa: E402
from dissect.data import loader, stack_images  # noqa: E402
from dissect.models import NORMALIZATIONS, load_model  # noqa: E402
from dissect.run import DissectConfig, dissect  # noqa: E402

LABELS = {1: ("red-c", "color"), 2: ("green-c", "color"), 3: ("blue-c", "color"), 4: ("box", "object"), 5: ("disc", "object"), 6: ("bar", "object"), 7: ("top", "part"), 8: ("edge", "part"), 9: ("indoor-s", "scene"), 10: ("outdoor-s", "scene")}


def make_dataset(root: Path, n: int, size: int = 224, seg: int = 112, seed: int = 0) -> Path:
    """Random smooth images with coloured shapes and their label maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:seg, :seg]
    rows = []
    palette = np.array([[0, 0, 0], [220, 30, 30], [30, 200, 40], [40, 40, 220]], np.uint8)
    for i in range(n):
        color = rng.integers(1, 4, (8, 8)).repeat(seg // 8, 0).repeat(seg // 8, 1)
        obj = np.zeros((seg, seg), np.int64)
        cy, cx, r = *rng.integers(20, seg - 20, 2), rng.integers(6, 20)
        obj[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 5
        y0, x0 = rng.integers(0, seg - 30, 2)
        obj[y0 : y0 + 25, x0 : x0 + 30] = 4
        obj[:, rng.integers(0, seg - 6) :][:, :6] = 6
        part = np.where((obj > 0) & (yy < cy), 7, 0)
        part2 = np.where((obj == 4) & (xx < x0 + 4), 8, 0)
        img = palette[color].repeat(2, 0).repeat(2, 1).astype(np.int16)
        img[(obj > 0).repeat(2, 0).repeat(2, 1)] //= 2
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        layers = {"color": [color], "object": [obj], "part": [part, part2] if i % 3 == 0 else [part]}
        rows.append(SynthRow(f"b{i:05d}", img, layers, {"scene": [9 + i % 2]}))
    return write_broden(root, rows, LABELS, ["color", "object", "part", "scene"])


def plain_forward(ds, samples, model, batch_size: int, workers: int, keep: bool = False) -> tuple[float, torch.Tensor | None]:
    """Seconds for decoding and running the model up to layer4; the features if ``keep``."""
    trunk = torch.nn.Sequential(*list(model.children())[:-2]).eval()
    out = []
    t = time.perf_counter()
    with torch.inference_mode():
        for items in loader(ds, samples, [], mean_std=NORMALIZATIONS["imagenet"], images=True, labels=False, batch_size=batch_size, workers=workers):
            f = trunk(stack_images(items))
            if keep:
                out.append(f.clone())
    return time.perf_counter() - t, (torch.cat(out) if keep else None)


def reference_tally(ds, samples, feats: torch.Tensor, thresholds: np.ndarray, categories: list[str]) -> tuple[float, np.ndarray]:
    """Seconds for the per-image, per-unit tally the reference does; the intersection counts."""
    primary = ds.primary_categories(categories)
    units, nl = feats.shape[1], ds.num_labels
    inter = np.zeros((units, nl), np.int64)
    t = time.perf_counter()
    for i, s in enumerate(samples):
        pixels = [ds.load_labels(s, c) for c in categories]
        pixels = np.concatenate([p for p in pixels if isinstance(p, np.ndarray)])
        for u in range(units):
            fmap = feats[i, u]
            if fmap.max() > thresholds[u]:
                mask = F.interpolate(fmap[None, None], size=(s.sh, s.sw), mode="bilinear", align_corners=False)[0, 0].numpy()
                idx = np.argwhere(mask > thresholds[u])
                bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=nl)
                bt[0] = 0
                inter[u] += bt
                _ = (bt[None, :] @ (primary[:, None] == np.arange(len(categories))[None, :]))
    return time.perf_counter() - t, inter


def main() -> None:
    """Generate, time, compare, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the dataset and results here.")
    args = ap.parse_args()
    progress.set_enabled(False)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="dissect-bench-") as tmp:
        root = args.keep or Path(tmp)
        t = time.perf_counter()
        ds_path = make_dataset(root / "ds", args.images)
        print(f"generated {args.images} images in {time.perf_counter() - t:.1f} s")
        ds = open_dataset(ds_path)
        samples = ds.select()
        model = load_model("resnet18").module
        plain_forward(ds, samples[: args.batch_size], model, args.batch_size, 0)  # warm-up
        t_plain, _ = plain_forward(ds, samples, model, args.batch_size, args.workers)
        cfg = DissectConfig(dataset=ds_path, layers=["layer4"], out=root / "out", model="resnet18", batch_size=args.batch_size, workers=args.workers, top_k=5, force=True)
        t = time.perf_counter()
        record = dissect(cfg)
        t_ours = time.perf_counter() - t
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        _, feats = plain_forward(ds, samples, model, args.batch_size, args.workers, keep=True)
        thresholds = np.load(root / "out" / "thresholds_layer4.npy")
        t_ref, inter = reference_tally(ds, samples, feats, thresholds, ds.category_names)
        ours = np.load(root / "out" / "matrices_layer4.npz")["intersection"]
        tm = record["timings"]
        n = args.images
        print(f"plain forward to layer4: {t_plain:7.2f} s  ({1000 * t_plain / n:.1f} ms/image)")
        print(f"our dissection:          {t_ours:7.2f} s  ({1000 * t_ours / n:.1f} ms/image)  = {t_ours / t_plain:.2f}x the forward pass")
        print(f"  features {tm['features_s']:.2f} s, thresholds {tm['thresholds_s']:.2f} s, tally {tm['tally_s']:.2f} s, results {tm['results_s']:.2f} s")
        print(f"straightforward tally:   {t_ref:7.2f} s  ({1000 * t_ref / n:.1f} ms/image)  = {t_ref / tm['tally_s']:.1f}x our tally")
        print(f"identical intersections: {bool(np.array_equal(inter, ours))}")
        print(f"peak RSS during dissection: {rss_self:.0f} MB main process, {rss_kids:.0f} MB largest worker")
        print(json.dumps({"images": n, "plain_s": t_plain, "ours_s": t_ours, "ref_tally_s": t_ref, "timings": tm, "peak_rss_mb": rss_self}))


if __name__ == "__main__":
    main()
