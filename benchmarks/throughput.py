"""Images per second: the bare forward pass with the dissection's own loader, the whole dissection, and their ratio.

For ResNet-18 ``layer4`` and ViT-B/16 ``encoder.layers.encoder_layer_11`` (random weights), on a
generated Broden-like dataset of ``--images`` 224 px images (112 px labels), each measurement is a
whole process on the same images:

* ``forward``: the dissection's DataLoader (same workers, pinned memory on CUDA, same decoding and
  normalisation) feeding the model up to the layer, nothing else;
* ``dissect``: ``concepts dissect`` of that layer (features, exact thresholds, tally, files).

It prints images/s of both and the ratio (the issue's target on a GPU: the dissection within 1.2x of
the bare forward pass; ResNet-18 ``layer4`` over 63,305 images in under 2 minutes). Run on a GPU
machine: ``python benchmarks/throughput.py --device cuda --images 20000 --workers 15``; on a CPU,
``--images 200`` gives the same table in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CASES = {"resnet18": "layer4", "vit_b_16": "encoder.layers.encoder_layer_11"}


def _forward(args: argparse.Namespace) -> dict:
    from concepts.broden.reader import open_dataset
    from concepts.dissect.data import loader, stack_images
    from concepts.dissect.hooks import capture
    from concepts.dissect.models import load_model, parse_device, parse_normalize

    device = parse_device(args.device)
    ds = open_dataset(args.dataset)
    samples = ds.select(None, None)
    model = load_model(args.model).module.to(device).eval()
    data = loader(ds, samples, [], mean_std=parse_normalize("imagenet"), images=True, labels=False,
                  batch_size=args.batch_size, workers=args.workers, pin=device.type == "cuda")
    t0 = time.perf_counter()
    with capture(model, [args.layer]) as grab:
        for items in data:
            grab(stack_images(items).to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "images": len(samples)}


def _dissect(args: argparse.Namespace) -> dict:
    from concepts.dissect.run import DissectConfig, dissect

    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        cfg = DissectConfig(dataset=args.dataset, layers=[args.layer], out=Path(tmp) / "out", model=args.model,
                            normalize="imagenet", batch_size=args.batch_size, workers=args.workers, device=args.device, top_k=5)
        t0 = time.perf_counter()
        record = dissect(cfg)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": int(record["images"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--models", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--process", choices=["forward", "dissect"], help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--layer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.process:
        print(json.dumps((_forward if args.process == "forward" else _dissect)(args)))
        return
    from dissect_speed import make_dataset

    with tempfile.TemporaryDirectory(prefix="throughput-data-") as tmp:
        ds = make_dataset(Path(tmp) / "ds", args.images)
        print(f"{args.images} images of 224 px, device {args.device}, {args.workers} loader workers, batch {args.batch_size}, "
              f"{os.cpu_count()} cores")
        for model in args.models.split(","):
            layer = CASES[model]
            got = {}
            for kind in ("forward", "dissect"):
                cmd = [sys.executable, __file__, "--process", kind, "--dataset", str(ds), "--model", model, "--layer", layer,
                       "--device", args.device, "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
                t0 = time.perf_counter()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                # The whole process counts (start-up, model, loader, files), as a user waits for it.
                got[kind] = json.loads(out) | {"process_s": time.perf_counter() - t0}
            f, d = got["forward"], got["dissect"]
            fps, dps = f["images"] / f["process_s"], d["images"] / d["process_s"]
            print(f"{model} {layer}: bare forward {fps:.1f} images/s ({f['images'] / f['seconds']:.1f} in its loop), "
                  f"whole dissection {dps:.1f} images/s, ratio {d['process_s'] / f['process_s']:.2f}x (target 1.2x on a GPU)")
            print(json.dumps({"model": model, "layer": layer, "device": args.device, "forward": f, "dissect": d}))


if __name__ == "__main__":
    main()
