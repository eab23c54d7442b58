"""One forward pass per image; per-layer features cached in disk memmaps, or recomputed."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from concepts.progress import progress
from dissect.data import Item, loader, stack_images
from dissect.hooks import capture

log = logging.getLogger(__name__)

Batch = tuple[list[Item] | None, dict[str, torch.Tensor]]


class FeatureStore:
    """Gives each pass the layers' ``B x U x h x w`` features in dataset order."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        ds: Any,
        samples: Sequence[Any],
        categories: Sequence[str],
        *,
        mean_std: Any,
        batch_size: int,
        workers: int,
        device: torch.device,
        cache_dir: Path,
        budget_bytes: int,
        dtype: np.dtype = np.dtype(np.float32),
    ) -> None:
        self.model, self.layers, self.ds, self.samples = model.to(device), list(layers), ds, list(samples)
        self.categories, self.mean_std = list(categories), mean_std
        self.batch_size, self.workers, self.device = batch_size, workers, device
        self.cache_dir, self.budget, self.dtype = Path(cache_dir), budget_bytes, np.dtype(dtype)
        self.maps: dict[str, np.memmap] | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}

    def _loader(self, images: bool, labels: bool):
        return loader(self.ds, self.samples, self.categories, mean_std=self.mean_std, images=images, labels=labels, batch_size=self.batch_size, workers=self.workers)

    def _forward(self, grab, items: list[Item]) -> dict[str, torch.Tensor]:
        return grab(stack_images(items).to(self.device, non_blocking=True))

    def forward_pass(self, on_batch: Callable[[list[Item], dict[str, torch.Tensor]], None]) -> None:
        """Run the model over every image once, caching features if they fit the budget."""
        n = len(self.samples)
        with capture(self.model, self.layers) as grab:
            for items in progress(self._loader(True, False), desc="features", total=-(-n // self.batch_size), unit="batch"):
                feats = self._forward(grab, items)
                if not self.shapes:
                    self._open(feats, n)
                for name, f in feats.items():
                    if tuple(f.shape[1:]) != self.shapes[name]:
                        raise RuntimeError(f"layer {name} changed shape between images")
                    if self.maps is not None:
                        i0 = items[0].index
                        self.maps[name][i0 : i0 + len(items)] = f.to("cpu", torch.float32).numpy().astype(self.dtype, copy=False)
                on_batch(items, feats)
        if self.maps is not None:
            for m in self.maps.values():
                m.flush()

    def _open(self, feats: dict[str, torch.Tensor], n: int) -> None:
        self.shapes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
        need = sum(n * int(np.prod(s)) * self.dtype.itemsize for s in self.shapes.values())
        if need > self.budget:
            log.info("features need %.1f GB, over the cache budget of %.1f GB: recomputing them in each pass", need / 1e9, self.budget / 1e9)
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.maps = {}
        for i, (name, shape) in enumerate(self.shapes.items()):
            path = self.cache_dir / f"features_{i}.{self.dtype.name}"
            self.maps[name] = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=(n, *shape))

    def batches(self, *, labels: bool, desc: str) -> Iterator[Batch]:
        """Yield ``(items or None, features by layer)`` over the dataset in order."""
        n, bs = len(self.samples), self.batch_size
        total = -(-n // bs)
        if self.maps is not None:
            if not labels:
                for i0 in progress(range(0, n, bs), desc=desc, total=total, unit="batch"):
                    yield None, {k: torch.from_numpy(np.asarray(m[i0 : i0 + bs], np.float32)).to(self.device) for k, m in self.maps.items()}
                return
            for items in progress(self._loader(False, True), desc=desc, total=total, unit="batch"):
                i0 = items[0].index
                yield items, {k: torch.from_numpy(np.asarray(m[i0 : i0 + len(items)], np.float32)).to(self.device) for k, m in self.maps.items()}
            return
        with capture(self.model, self.layers) as grab:
            for items in progress(self._loader(True, labels), desc=desc, total=total, unit="batch"):
                yield (items if labels else None), self._forward(grab, items)

    def close(self) -> None:
        """Drop the memmaps and their files."""
        self.maps = None
        shutil.rmtree(self.cache_dir, ignore_errors=True)
