"""Writes small Broden-format datasets by hand, straight from FORMATS.md part A.

Deliberately independent of `concepts.broden.writer`, so tests of the reader, the validator and
dissection do not trust the code they check.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def rg(labels: np.ndarray) -> np.ndarray:
    """RG-encode label numbers by hand."""
    out = np.zeros(labels.shape + (3,), np.uint8)
    out[..., 0] = labels % 256
    out[..., 1] = labels // 256
    return out


@dataclass
class SynthRow:
    """One image: its RGB pixels and per category either layers (list of 2-D arrays) or numbers."""

    name: str
    image: np.ndarray
    pixel: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image_level: dict[str, list[int]] = field(default_factory=dict)
    split: str = "train"


def write_broden(
    root: Path,
    rows: list[SynthRow],
    labels: dict[int, tuple[str, str]],
    categories: list[str],
    source: str = "synth",
) -> Path:
    """Write ``rows`` as a Broden dataset; ``labels`` maps number -> (name, category)."""
    root = Path(root)
    (root / "images" / source).mkdir(parents=True, exist_ok=True)
    freq: dict[int, int] = {n: 0 for n in labels}
    cov: dict[int, float] = {n: 0.0 for n in labels}
    index = []
    for row in rows:
        image = f"{source}/{row.name}.jpg"
        Image.fromarray(row.image).save(root / "images" / image, quality=95)
        ih, iw = row.image.shape[:2]
        sh = sw = None
        cells = {}
        for cat in categories:
            if cat in row.pixel:
                layers = row.pixel[cat]
                paths = []
                for i, layer in enumerate(layers, start=1):
                    sh, sw = layer.shape
                    suffix = f"_{i}" if len(layers) > 1 else ""
                    rel = f"{source}/{row.name}_{cat}{suffix}.png"
                    Image.fromarray(rg(layer.astype(np.int64)), "RGB").save(root / "images" / rel)
                    paths.append(rel)
                    for n in np.unique(layer):
                        if n:
                            cov[int(n)] += float((layer == n).mean())
                for n in {int(v) for layer in layers for v in np.unique(layer) if v}:
                    freq[n] += 1
                cells[cat] = ";".join(paths)
            elif cat in row.image_level:
                for n in row.image_level[cat]:
                    freq[n] += 1
                    cov[n] += 1.0
                cells[cat] = ";".join(str(n) for n in row.image_level[cat])
            else:
                cells[cat] = ""
        if sh is None:
            sh, sw = ih, iw
        index.append([image, row.split, ih, iw, sh, sw] + [cells[c] for c in categories])
    index.sort(key=lambda r: hashlib.md5(r[0].encode()).hexdigest())
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", *categories])
        w.writerows(index)
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for n, (name, cat) in sorted(labels.items()):
            w.writerow([n, name, f"{cat}({freq[n]})", freq[n], f"{cov[n]:.6f}", ""])
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for cat in categories:
            nums = sorted(n for n, (_, c) in labels.items() if c == cat)
            w.writerow([cat, nums[0], nums[-1], len(nums), sum(freq[n] for n in nums)])
    for cat in categories:
        nums = sorted((n for n, (_, c) in labels.items() if c == cat), key=lambda n: (-freq[n], -cov[n], n))
        with open(root / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, n in enumerate(nums, start=1):
                w.writerow([code, n, labels[n][0], freq[n], f"{cov[n]:.6f}"])
    return root


def toy_dataset(root: Path, n: int = 8, size: int = 32, seg: int = 16, seed: int = 0) -> Path:
    """A small valid dataset: colour pixels, an object category with squares, a scene label."""
    rng = np.random.default_rng(seed)
    labels = {1: ("red-c", "color"), 2: ("blue-c", "color"), 3: ("square", "object"), 4: ("disc", "object"), 5: ("lab-s", "scene")}
    rows = []
    yy, xx = np.mgrid[:seg, :seg]
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 2] = 200
        color = np.full((seg, seg), 2)
        obj = np.zeros((seg, seg), np.int64)
        x0, y0 = rng.integers(0, seg // 2, 2)
        obj[y0 : y0 + seg // 3, x0 : x0 + seg // 3] = 3
        obj[(yy - seg + 4) ** 2 + (xx - seg + 4) ** 2 < 9] = 4
        color[obj == 3] = 1
        s = size // seg
        img[np.repeat(np.repeat(obj == 3, s, 0), s, 1)] = (220, 10, 10)
        rows.append(SynthRow(f"img{i:03d}", img, {"color": [color], "object": [obj]}, {"scene": [5]} if i % 2 else {}))
    return write_broden(root, rows, labels, ["color", "object", "scene"])


def red_unit_net(num_classes: int = 3):
    """A tiny CNN with hand-set weights: unit 2 of ``conv`` (and ``pool``) fires on red pixels.

    Fed 0-255 RGB (``--normalize none``): unit 0 is blue, unit 1 green, unit 2 ``R - (G + B) / 2``,
    unit 3 ``-R``. ``pool`` halves the resolution; ``head`` makes the output a class vector.
    """
    import torch
    from torch import nn

    class RedNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.pool = nn.AvgPool2d(2)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.flat = nn.Flatten()
            self.head = nn.Linear(4, num_classes)
            w = torch.tensor([[0, 0, 1], [0, 1, 0], [1, -0.5, -0.5], [-1, 0, 0]], dtype=torch.float32)
            with torch.no_grad():
                self.conv.weight.copy_(w[:, :, None, None])
                self.conv.bias.zero_()

        def forward(self, x):
            return self.head(self.flat(self.gap(self.pool(self.conv(x)))))

    return RedNet()


def small_convnet(num_classes: int = 3):
    """A seeded random CNN with nested layer names: ``features.2`` gives 6 maps at a quarter of the input size."""
    import torch
    from torch import nn

    torch.manual_seed(5)
    net = nn.Sequential()
    net.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU())
    net.pool = nn.AdaptiveAvgPool2d(1)
    net.flat = nn.Flatten()
    net.head = nn.Linear(6, num_classes)
    return net


def write_png16_rgb(path: Path, labels: np.ndarray) -> None:
    """Write label numbers as a 16-bit-per-channel RGB PNG (R = number, G = B = 0), by hand.

    Pillow cannot write such a file, and reads it back as 8-bit RGB holding only the high bytes,
    so small numbers come back as 0: the kind of file a validator must refuse.
    """
    import struct
    import zlib

    h, w = labels.shape
    rgb = np.zeros((h, w, 3), ">u2")
    rgb[..., 0] = labels
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
