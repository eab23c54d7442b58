"""Build speed of the Broden sources next to the cost of the image codecs alone.

Generates ADE20K 2016, Pascal (Context + Part), OpenSurfaces and DTD trees in their real layouts
(``tests/fake_sources.py``) with ``--images`` images in all, then reports images per second for:

* the codec-only baseline: decode every JPEG and label PNG with PIL, resize (bilinear images,
  nearest labels) and re-encode (JPEG, PNG) in memory, nothing else;
* ``concepts`` builds of the same sources with each ``--workers`` count.

Run: ``python benchmarks/build_speed.py --images 500`` (``--images 50`` for a quick look).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_sources import random_sources  # noqa: E402

from builders.ade20k import Ade20k2016Builder  # noqa: E402
from builders.dtd import DtdBuilder  # noqa: E402
from builders.opensurfaces import OpenSurfacesBuilder  # noqa: E402
from builders.pascal import PascalBuilder  # noqa: E402
from concepts import progress  # noqa: E402
from concepts.unify import BuildOptions, build_dataset  # noqa: E402


def codec_files(sources: dict[str, Path]) -> tuple[list[Path], list[Path]]:
    """The photos and the label PNGs a build has to decode."""
    photos, labels = [], []
    for path in sorted(p for root in sources.values() for p in root.rglob("*")):
        if path.suffix == ".jpg":
            photos.append(path)
        elif path.suffix == ".png" and ("_seg" in path.name or "_parts_" in path.name or path.parent.name == "photos-labels"):
            labels.append(path)
    return photos, labels


def codec_baseline(photos: list[Path], labels: list[Path], size: int) -> float:
    """Seconds to decode, resize and re-encode every photo (JPEG) and label image (PNG) with PIL."""
    started = time.perf_counter()
    for path in photos:
        with Image.open(path) as im:
            small = im.convert("RGB").resize((size, size), Image.BILINEAR)
        small.save(io.BytesIO(), "JPEG", quality=90)
    for path in labels:
        with Image.open(path) as im:
            small = im.convert("RGB").resize((size // 2, size // 2), Image.NEAREST)
        small.save(io.BytesIO(), "PNG", compress_level=6)
    return time.perf_counter() - started


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
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the generated data (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    progress.set_enabled(False)

    scratch = Path(tempfile.mkdtemp(prefix="concepts-bench-", dir=args.scratch))
    try:
        started = time.perf_counter()
        paths = random_sources(scratch / "src", args.images, h=args.height, w=args.width)
        print(f"generated {args.images} images ({args.width}x{args.height}) in {time.perf_counter() - started:.1f} s on {os.cpu_count()} CPU(s)")
        photos, labels = codec_files(paths)
        seconds = codec_baseline(photos, labels, args.size)
        baseline = len(photos) / seconds
        print(f"{'codec-only baseline':<24}{baseline:8.1f} img/s  ({len(photos)} JPEGs + {len(labels)} label PNGs in {seconds:.2f} s)")
        for workers in (int(w) for w in args.workers.split(",")):
            out = scratch / f"out-{workers}"
            options = BuildOptions(size=(args.size, args.size), workers=workers, overwrite=True)
            started = time.perf_counter()
            summary = build_dataset(sources_for(paths), out, options)
            seconds = time.perf_counter() - started
            count = sum(summary.images.values())
            rate = count / seconds
            print(f"{f'build --workers {workers}':<24}{rate:8.1f} img/s  ({count} images, {summary.labels} labels in {seconds:.2f} s; "
                  f"{rate / baseline:.2f}x the codec baseline)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
