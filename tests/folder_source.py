"""Writes sources in the `folder` format (images/, masks/<category>/, labels.csv, tags.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_folder_source(
    root: Path,
    images: dict[str, np.ndarray],
    masks: dict[str, dict[str, np.ndarray]],
    labels: dict[tuple[str, int], list[str]],
    tags: list[tuple[str, str, str]] = (),
) -> Path:
    """Write images (relpath -> RGB), masks (category -> relpath -> ids), labels and tags."""
    root = Path(root)
    for rel, pixels in images.items():
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)
    for category, per_image in masks.items():
        for rel, ids in per_image.items():
            path = root / "masks" / category / (rel.rsplit(".", 1)[0] + ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = "L" if ids.max() < 256 else "I;16"
            Image.fromarray(ids.astype(np.uint8 if mode == "L" else np.uint16), mode).save(path)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "id", "names"])
        for (category, ident), names in sorted(labels.items()):
            w.writerow([category, ident, ";".join(names)])
    if tags:
        with open(root / "tags.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "category", "name"])
            w.writerows(tags)
    (root / "masks").mkdir(exist_ok=True)
    return root


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """An ``h x w`` image of one colour."""
    out = np.zeros((h, w, 3), np.uint8)
    out[:] = rgb
    return out
