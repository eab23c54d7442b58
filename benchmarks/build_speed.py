"""Build speed of the Broden sources next to the cost of the image codecs alone.

Generates ADE20K 2016, Pascal (Context + Part), OpenSurfaces and DTD trees in their real layouts
(``tests/fake_sources.py``) with ``--images`` images in all, then reports images per second for:

* the codec-only baseline: decode every JPEG and label PNG with PIL, resize (bilinear images,
  nearest labels) and re-encode (JPEG, PNG) in memory, with the encoder settings the build uses;
  also decode every ``.mat`` file a build reads (Pascal-Context ``LabelMap``s are label images
  and are resized and re-encoded like the label PNGs; Pascal-Part ``anno`` structs and the ADE20K
  index are only decoded); nothing else;
* ``concepts`` builds of the same sources with each ``--workers`` count.

Each figure is the best of ``--repeat`` runs, so that other load on the machine disturbs the
ratio less; each line also gives the CPU seconds used (worker processes included), which other
load disturbs less still. Builds write to ``--scratch`` like any build writes its output, so the
file system's cost of creating files counts (on a RAM disk it is nearly nil). Run:
``python benchmarks/build_speed.py --images 500`` (``--images 50`` for a quick look).
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.io
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_sources import random_sources  # noqa: E402

from concepts.builders.ade20k import Ade20k2016Builder  # noqa: E402
from concepts.builders.dtd import DtdBuilder  # noqa: E402
from concepts.builders.opensurfaces import OpenSurfacesBuilder  # noqa: E402
from concepts.builders.pascal import PascalBuilder  # noqa: E402
from concepts import progress  # noqa: E402
from concepts.unify import PNG_OPTIONS, BuildOptions, build_dataset  # noqa: E402


T = TypeVar("T")


def codec_files(sources: dict[str, Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """The photos, the label PNGs and the ``.mat`` files a build has to decode."""
    photos, labels, mats = [], [], []
    for path in sorted(p for root in sources.values() for p in root.rglob("*")):
        if path.suffix == ".jpg":
            photos.append(path)
        elif path.suffix == ".png" and ("_seg" in path.name or "_parts_" in path.name or path.parent.name == "photos-labels"):
            labels.append(path)
        elif path.suffix == ".mat":
            mats.append(path)
    return photos, labels, mats


def _reencode_label(im: Image.Image, size: int) -> None:
    small = im.resize((size // 2, size // 2), Image.NEAREST)
    small.save(io.BytesIO(), "PNG", **PNG_OPTIONS)


def codec_baseline(photos: list[Path], labels: list[Path], mats: list[Path], size: int, quality: int = 90) -> float:
    """Seconds to decode, resize and re-encode every photo and label image, and decode every ``.mat``."""
    started = time.perf_counter()
    for path in photos:
        with Image.open(path) as im:
            # The same calls the build makes for an image it must resize.
            small = im.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=3.0)
        small.save(io.BytesIO(), "JPEG", quality=quality)
    for path in labels:
        with Image.open(path) as im:
            _reencode_label(im.convert("RGB"), size)
    for path in mats:
        mat = scipy.io.loadmat(path)
        if "LabelMap" in mat:
            _reencode_label(Image.fromarray(np.ascontiguousarray(mat["LabelMap"], dtype=np.uint16)), size)
    return time.perf_counter() - started


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (build workers), in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
    """``fn(*args)`` with its wall-clock and CPU seconds."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def sources_for(paths: dict[str, Path]) -> list:
    """The four builders, OpenSurfaces supplying material and colour as in the Broden recipe."""
    return [
        Ade20k2016Builder(paths["ade20k"]),
        PascalBuilder(paths["pascal"]),
        OpenSurfacesBuilder(paths["opensurfaces"], {"supply": "material,color"}),
        DtdBuilder(paths["dtd"]),
    ]


def main(argv: list[str] | None = None) -> None:
    """Generate the sources, time the codec baseline and the builds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images over the four sources (default 500)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--size", type=int, default=224, help="output image side (segmentations half of it)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported (default 3)")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the generated data (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    progress.set_enabled(False)

    scratch = Path(tempfile.mkdtemp(prefix="concepts-bench-", dir=args.scratch))
    try:
        started = time.perf_counter()
        paths = random_sources(scratch / "src", args.images, h=args.height, w=args.width)
        if hasattr(os, "sync"):
            os.sync()  # the sources were just written: let their write-back finish before timing
        print(f"generated {args.images} images ({args.width}x{args.height}) in {time.perf_counter() - started:.1f} s on {os.cpu_count()} CPU(s)")
        photos, labels, mats = codec_files(paths)
        repeat = max(1, args.repeat)
        runs = [timed(codec_baseline, photos, labels, mats, args.size)[1:] for _ in range(repeat)]
        seconds, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        baseline, baseline_cpu = len(photos) / seconds, len(photos) / cpu
        print(f"{'codec-only baseline':<24}{baseline:8.1f} img/s  ({len(photos)} JPEGs + {len(labels)} label PNGs + {len(mats)} .mat "
              f"in {seconds:.2f} s; {cpu:.2f} CPU-s)")
        outputs = itertools.count()
        for workers in (int(w) for w in args.workers.split(",")):
            options = BuildOptions(size=(args.size, args.size), workers=workers)
            runs = []
            for run in range(repeat):
                # A fresh folder each run, as a build usually writes; old outputs go at the end.
                summary, wall, used = timed(build_dataset, sources_for(paths), scratch / f"out-{next(outputs)}", options)
                runs.append((wall, used))
            seconds, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            count = sum(summary.images.values())
            rate = count / seconds
            print(f"{f'build --workers {workers}':<24}{rate:8.1f} img/s  ({count} images, {summary.labels} labels in {seconds:.2f} s; "
                  f"{rate / baseline:.2f}x the codec baseline; {cpu:.2f} CPU-s, {count / cpu / baseline_cpu:.2f}x per CPU-second)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
