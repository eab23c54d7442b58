"""Check that ``--device cuda`` gives the CPU's tally: same data, model and thresholds file.

Generates a small dataset (``--images``, 224 px images, 112 px labels), dissects ``layer4`` of a
random-weight ResNet-18 on the CPU (which also writes the thresholds), then on CUDA with those
thresholds, and compares ``tally_layer4.csv``: counts exactly, IoU to 1e-6. Because CUDA's
convolutions round differently from the CPU's, a pixel whose activation lies within rounding of
its threshold may flip; so the script also tallies the CPU's own features on both devices, which
isolates the tally code: its counts must be identical but for the few pixels CUDA's bilinear
kernel may round across a threshold. Prints timings of both runs.

Run: ``python benchmarks/cuda_check.py [--images 64]``; exits 1 when the tally-only check fails,
2 without CUDA.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dissect_speed import make_dataset  # noqa: E402

from concepts import progress  # noqa: E402
from concepts.broden.reader import open_dataset  # noqa: E402
from concepts.dissect.data import loader, stack_images  # noqa: E402
from concepts.dissect.models import NORMALIZATIONS, load_model  # noqa: E402
from concepts.dissect.run import DissectConfig, dissect  # noqa: E402
from concepts.dissect.tally import Tally  # noqa: E402


def read_tally(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a tally CSV by unit."""
    with open(path, newline="") as f:
        return {r["unit"]: r for r in csv.DictReader(f)}


def compare(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> tuple[int, int, float]:
    """(count cells that differ, label cells that differ, largest IoU difference)."""
    counts = labels = 0
    iou = 0.0
    for unit, ra in a.items():
        rb = b[unit]
        for key, va in ra.items():
            if key == "score" or key.endswith("-iou"):
                iou = max(iou, abs(float(va) - float(rb[key])))
            elif key.endswith(("-truth", "-activation", "-intersect")):
                counts += va != rb[key]
            elif va != rb[key]:
                labels += 1
    return counts, labels, iou


def tally_only(ds_path: Path, thresholds: np.ndarray, device: str, batch_size: int) -> dict[str, np.ndarray]:
    """Tally the CPU's layer4 features on ``device``."""
    ds = open_dataset(ds_path)
    samples = ds.select()
    trunk = torch.nn.Sequential(*list(load_model("resnet18").module.children())[:-2]).eval()
    primary = ds.primary_categories()
    primary[0] = -1
    tally = Tally(512, primary, len(ds.category_names), thresholds, "ndlite", device)
    with torch.inference_mode():
        for items in loader(ds, samples, ds.category_names, mean_std=NORMALIZATIONS["imagenet"], images=True, labels=True, batch_size=batch_size, workers=0):
            tally.update(trunk(stack_images(items)).to(device), items)
    return tally.arrays()


def main() -> int:
    """Generate, dissect on both devices, compare, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda", help="The device to compare with the CPU (cpu checks this script itself).")
    args = ap.parse_args()
    progress.set_enabled(False)
    logging.basicConfig(level=logging.ERROR)
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if dev.startswith('cuda') else dev}")
    with tempfile.TemporaryDirectory(prefix="cuda-check-") as tmp:
        root = Path(tmp)
        ds_path = make_dataset(root / "ds", args.images)
        times = {}
        base = dict(dataset=ds_path, layers=["layer4"], model="resnet18", batch_size=args.batch_size, workers=args.workers, top_k=5)
        t = time.perf_counter()
        dissect(DissectConfig(out=root / "cpu", **base))
        times["cpu"] = time.perf_counter() - t
        thresholds = root / "cpu" / "thresholds_layer4.npy"
        for name in ("cuda-warmup", "cuda"):
            t = time.perf_counter()
            dissect(DissectConfig(out=root / name, device=dev, thresholds={"": thresholds}, force=True, **base))
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            times[name] = time.perf_counter() - t
        counts, labels, iou = compare(read_tally(root / "cpu" / "tally_layer4.csv"), read_tally(root / "cuda" / "tally_layer4.csv"))
        agree = counts == 0 and labels == 0 and iou <= 1e-6
        print(f"full run, cpu vs cuda: {'AGREE' if agree else 'DIFFER'} ({counts} count cells and {labels} label cells differ, largest IoU difference {iou:.2e})")
        t_cpu = np.load(thresholds)
        cpu = tally_only(ds_path, t_cpu, "cpu", args.batch_size)
        gpu = tally_only(ds_path, t_cpu, dev, args.batch_size)
        differ = {k: int((cpu[k] != gpu[k]).sum()) for k in ("truth", "intersection", "activation")}
        worst = max(int(np.abs(cpu[k] - gpu[k]).max()) for k in differ)
        # Only CUDA's bilinear kernel may round differently: a few pixels at most, never whole units.
        same = differ["truth"] == 0 and worst <= max(3, int(cpu["intersection"].sum()) // 10**6)
        verdict = "IDENTICAL" if not any(differ.values()) else "NEARLY IDENTICAL" if same else "DIFFERENT"
        print(f"tally of the same features, cpu vs cuda: {verdict} counts (cells differing: {differ}; largest difference {worst} pixels)")
        print(f"times for {args.images} images: cpu {times['cpu']:.2f} s, cuda {times['cuda']:.2f} s (first cuda run, with start-up: {times['cuda-warmup']:.2f} s)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
