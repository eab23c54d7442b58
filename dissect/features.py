"""One forward pass per image; per-layer features cached in disk memmaps, or recomputed.

The cache (one ``.npy`` per layer) lives in the run's work folder. Its rows are filled in dataset order and
:attr:`FeatureStore.rows` says how many are complete, so an interrupted forward pass resumes
after the last complete batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext as _nothing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from concepts.progress import progress
from concepts.dissect.data import Item, loader, stack_images
from concepts.dissect.hooks import capture

log = logging.getLogger(__name__)

Batch = tuple[list[Item] | None, dict[str, torch.Tensor]]


class _Rows:
    """A ``.npy`` file of ``n x shape`` rows, written and read by explicit file I/O.

    Not a memmap: mapped pages count towards the process's resident memory, which would then
    grow with the dataset, while pages written and read this way stay in the page cache.
    """

    def __init__(self, path: Path, n: int, shape: tuple[int, ...], dtype: np.dtype, create: bool) -> None:
        self.path, self.n, self.shape, self.dtype = path, n, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        if create:
            with path.open("wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n, *self.shape)})
                f.truncate(f.tell() + n * self.row_bytes)
        with path.open("rb") as f:
            if np.lib.format.read_magic(f) != (1, 0):
                raise ValueError(f"{path} is not a .npy file this cache wrote")
            got_shape, _, got_dtype = np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
        if tuple(got_shape) != (n, *self.shape) or got_dtype != self.dtype:
            raise ValueError(f"{path} holds {got_shape} {got_dtype}")
        self.file = path.open("r+b")

    def write(self, i0: int, rows: np.ndarray) -> None:
        """Store rows ``i0 ..`` (C-contiguous, of this file's dtype)."""
        os.pwrite(self.file.fileno(), np.ascontiguousarray(rows, self.dtype).tobytes(), self.offset + i0 * self.row_bytes)

    def read(self, i0: int, i1: int) -> np.ndarray:
        """Rows ``i0 .. i1 - 1`` as float32."""
        out = np.empty((i1 - i0, *self.shape), self.dtype)
        got = os.preadv(self.file.fileno(), [memoryview(out).cast("B")], self.offset + i0 * self.row_bytes)
        if got != out.nbytes:
            raise OSError(f"{self.path}: feature cache is shorter than expected")
        return out.astype(np.float32, copy=False)

    def flush(self) -> None:
        """Make the written rows durable before a checkpoint says they are complete."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Close the file."""
        self.file.close()


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
        layout: str | None = None,
        layer_output: str | None = None,
    ) -> None:
        self.model, self.layers, self.ds, self.samples = model.to(device), list(layers), ds, list(samples)
        self.categories, self.mean_std = list(categories), mean_std
        self.batch_size, self.workers, self.device = batch_size, workers, torch.device(device)
        self.cache_dir, self.budget, self.dtype = Path(cache_dir), budget_bytes, np.dtype(dtype)
        self.maps: dict[str, _Rows] | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.rows = 0  # complete rows of the cache
        self.layout, self.layer_output = layout, layer_output

    def _loader(self, images: bool, labels: bool, start: int = 0):
        return loader(
            self.ds, self.samples, self.categories, mean_std=self.mean_std, images=images, labels=labels,
            batch_size=self.batch_size, workers=self.workers, start=start, pin=self.device.type == "cuda",
        )

    def _forward(self, grab, items: list[Item]) -> dict[str, torch.Tensor]:
        return grab(stack_images(items).to(self.device, non_blocking=True))

    def _from_cache(self, i0: int, i1: int) -> dict[str, torch.Tensor]:
        assert self.maps is not None
        return {k: torch.from_numpy(m.read(i0, i1)).to(self.device, non_blocking=True) for k, m in self.maps.items()}

    def resume(self, shapes: dict[str, Sequence[int]], rows: int) -> None:
        """Reopen the cache a previous, interrupted run left with ``rows`` complete rows."""
        if set(shapes) != set(self.layers):
            return
        paths = self._paths(shapes)
        if rows <= 0 or not all(p.is_file() for p in paths.values()):
            return
        try:
            maps = {k: _Rows(p, len(self.samples), tuple(shapes[k]), self.dtype, create=False) for k, p in paths.items()}
        except (OSError, ValueError):
            return
        n = len(self.samples)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.maps, self.rows = maps, min(rows, n)

    def forward_pass(self, on_batch: Callable[[list[Item] | None, int, dict[str, torch.Tensor]], None], checkpoint: Callable[[], None] | None = None) -> None:
        """Run the model over every image once, caching features if they fit the budget.

        ``on_batch(items, first_index, features)`` sees every batch in order; rows already in the
        cache of a resumed run are replayed from it (with ``items`` None). ``checkpoint`` is
        called after each batch whose features are safely in the cache.
        """
        n, bs = len(self.samples), self.batch_size
        if self.maps is not None and self.rows:
            for i0 in progress(range(0, self.rows, bs), desc="cached features", total=-(-self.rows // bs), unit="batch"):
                on_batch(None, i0, self._from_cache(i0, min(i0 + bs, self.rows)))
        start = self.rows if self.maps is not None else 0
        if start >= n:
            return
        with capture(self.model, self.layers, layout=self.layout, output=self.layer_output) as grab:
            for items in progress(self._loader(True, False, start), desc="features", total=-(-(n - start) // bs), unit="batch"):
                feats = self._forward(grab, items)
                if not self.shapes:
                    self._open(feats, n)
                for name, f in feats.items():
                    if tuple(f.shape[1:]) != self.shapes[name]:
                        raise RuntimeError(f"layer {name} changed shape between images")
                i0 = items[0].index
                if self.maps is not None:
                    for name, f in feats.items():
                        self.maps[name].write(i0, f.to("cpu", torch.float32).numpy())
                    self.rows = i0 + len(items)
                on_batch(items, i0, feats)
                if checkpoint is not None and self.maps is not None:
                    checkpoint()
        self.flush()

    def flush(self) -> None:
        """Write the cached rows to disk (before recording how many are complete)."""
        if self.maps is not None:
            for m in self.maps.values():
                m.flush()

    def _paths(self, shapes: dict[str, Any]) -> dict[str, Path]:
        # Numbered by the layer's place in the run, not by the order of ``shapes``: a run's saved
        # state may hold them in another order (sorted JSON keys) than the capture returned them.
        return {name: self.cache_dir / f"features_{self.layers.index(name)}.npy" for name in shapes}

    def _open(self, feats: dict[str, torch.Tensor], n: int) -> None:
        self.shapes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
        need = sum(n * int(np.prod(s)) * self.dtype.itemsize for s in self.shapes.values())
        if need > self.budget:
            log.info("features need %.1f GB, over the cache budget of %.1f GB: recomputing them in each pass", need / 1e9, self.budget / 1e9)
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.maps = {}
        for name, path in self._paths(self.shapes).items():
            self.maps[name] = _Rows(path, n, self.shapes[name], self.dtype, create=True)

    def batches(self, *, labels: bool, desc: str, start: int = 0, order: Sequence[int] | None = None) -> Iterator[Batch]:
        """Yield ``(items or None, features by layer)`` over ``samples[start:]`` in order, or over every image in ``order``.

        With ``order`` (a permutation of the image positions), batch ``b`` holds images
        ``order[b * batch_size ...]``, and each item's ``index`` is still its position in ``samples``.
        """
        if order is not None:
            yield from self._ordered(labels, desc, np.asarray(order, np.int64))
            return
        n, bs = len(self.samples), self.batch_size
        total = -(-(n - start) // bs)
        if self.maps is not None:
            if not labels:
                for i0 in progress(range(start, n, bs), desc=desc, total=total, unit="batch"):
                    yield None, self._from_cache(i0, min(i0 + bs, n))
                return
            for items in progress(self._loader(False, True, start), desc=desc, total=total, unit="batch"):
                i0 = items[0].index
                yield items, self._from_cache(i0, i0 + len(items))
            return
        with capture(self.model, self.layers, layout=self.layout, output=self.layer_output) as grab:
            for items in progress(self._loader(True, labels, start), desc=desc, total=total, unit="batch"):
                yield (items if labels else None), self._forward(grab, items)

    def _ordered(self, labels: bool, desc: str, order: np.ndarray) -> Iterator[Batch]:
        n, bs = len(self.samples), self.batch_size
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError("order must be a permutation of the images")
        total = -(-n // bs)
        if self.maps is not None and not labels:
            for i0 in progress(range(0, n, bs), desc=desc, total=total, unit="batch"):
                yield None, self._rows(order[i0 : i0 + bs])
            return
        samples = [self.samples[i] for i in order]
        cached = self.maps is not None
        load = loader(self.ds, samples, self.categories, mean_std=self.mean_std, images=not cached, labels=labels,
                      batch_size=bs, workers=self.workers, pin=self.device.type == "cuda")
        with capture(self.model, self.layers, layout=self.layout, output=self.layer_output) if not cached else _nothing() as grab:
            for items in progress(load, desc=desc, total=total, unit="batch"):
                at = [it.index for it in items]
                feats = self._rows(order[at]) if cached else self._forward(grab, items)
                for it in items:
                    it.index = int(order[it.index])
                yield (items if labels else None), feats

    def _rows(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Cache rows ``rows`` (any order), read in runs of consecutive rows."""
        assert self.maps is not None
        out = {}
        for k, m in self.maps.items():
            parts, i = [], 0
            while i < len(rows):
                j = i + 1
                while j < len(rows) and rows[j] == rows[j - 1] + 1:
                    j += 1
                parts.append(m.read(int(rows[i]), int(rows[j - 1]) + 1))
                i = j
            out[k] = torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0]).to(self.device, non_blocking=True)
        return out

    def close(self) -> None:
        """Close the cache files (they go with the run's work folder)."""
        for m in (self.maps or {}).values():
            m.close()
        self.maps = None
