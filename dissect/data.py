"""Feed images and label maps from a concept dataset to the engine through DataLoader workers.

The engine depends only on this small protocol of the dataset, so another backend (for example
a Hugging Face dataset) can stand in for :class:`concepts.broden.reader.ConceptDataset`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from concepts.errors import ConceptsError, DatasetFormatError, UsageError


class ConceptSource(Protocol):
    """What dissection needs from a concept dataset."""

    category_names: list[str]
    num_labels: int

    def label_names(self) -> list[str]: ...
    def load_image(self, sample: Any) -> np.ndarray: ...
    def load_labels(self, sample: Any, category: str) -> np.ndarray | list[int]: ...
    def primary_categories(self, categories: Sequence[str] | None = None) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class ImagePrep:
    """What every image goes through: an optional resize of the whole image (never a crop), then ``(RGB - mean) / std``.

    ``mean_std`` is on the 0-255 scale (None: raw 0-255 values); ``resize`` is ``(height, width)``
    and ``interpolation`` a PIL filter name (the way torchvision, timm and transformers resize PIL images).
    """

    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    resize: tuple[int, int] | None = None
    interpolation: str = "bilinear"

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """An ``H x W x 3`` uint8 image as the model's ``3 x h x w`` float input."""
        if self.resize is not None and tuple(rgb.shape[:2]) != tuple(self.resize):
            h, w = self.resize
            rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling[self.interpolation.upper()]))
        if self.mean_std is None:
            return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
        mean, std = self.mean_std
        # The reference's rounding: subtract the float64 mean, round to float32, then divide in
        # float32 (subtracting in float32 moves over half the inputs by up to ~100 ulp).
        centred = (rgb.astype(np.float64) - np.asarray(mean, np.float64)).astype(np.float32)
        x = torch.from_numpy(centred).permute(2, 0, 1)
        return x / torch.tensor(std, dtype=torch.float32)[:, None, None]


@dataclass
class Item:
    """One image's tensors: the normalised image or its labels (pixel layers and image-level)."""

    index: int
    image: torch.Tensor | None
    layers: torch.Tensor | None  # L x sh x sw int16, int32 past 32,768 labels (L may be 0)
    scalars: list[int]
    sh: int
    sw: int
    error: ConceptsError | None = None  # raised in the main process, so it reaches the user as one line

    def pin_memory(self) -> Item:
        """Pin the tensors (DataLoader's ``pin_memory`` calls this on CUDA runs)."""
        if self.image is not None:
            self.image = self.image.pin_memory()
        if self.layers is not None:
            self.layers = self.layers.pin_memory()
        return self


class _Images(Dataset):
    def __init__(self, ds: ConceptSource, samples: Sequence[Any], categories: Sequence[str], mean_std, images: bool, labels: bool, start: int) -> None:
        self.ds, self.samples, self.categories = ds, list(samples), list(categories)
        self.prep = mean_std if isinstance(mean_std, ImagePrep) else ImagePrep(mean_std)
        self.images, self.labels, self.start = images, labels, start

    def __len__(self) -> int:
        return len(self.samples) - self.start

    def __getitem__(self, j: int) -> Item:
        i = self.start + j
        sample = self.samples[i]
        # Errors travel inside the item: raised in a worker, they would reach the user wrapped in
        # the worker's traceback text instead of as one line.
        try:
            return self._load(i, sample)
        except ConceptsError as e:
            return Item(i, None, None, [], 0, 0, error=e)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL reports truncated files as SyntaxError or OSError
            return Item(i, None, None, [], 0, 0, error=DatasetFormatError(f"cannot read: {e}", item=str(getattr(sample, "image", i))))

    def _load(self, i: int, sample: Any) -> Item:
        image = layers = None
        scalars: list[int] = []
        if self.images:
            image = self.prep(np.array(self.ds.load_image(sample), dtype=np.uint8))
        if self.labels:
            stacks = []
            for cat in self.categories:
                data = self.ds.load_labels(sample, cat)
                if isinstance(data, np.ndarray):
                    stacks.append(data.reshape(-1, sample.sh, sample.sw))
                else:
                    # An image-level 0 is a label dropped by the frequency filter, never a concept.
                    scalars += [int(n) for n in data if int(n) != 0]
            arr = np.concatenate(stacks) if stacks else np.zeros((0, sample.sh, sample.sw), np.int32)
            top = max([int(arr.max()) if arr.size else 0] + scalars)
            if top >= self.ds.num_labels or (arr.size and arr.min() < 0):
                raise DatasetFormatError(f"label number {top} is not in label.csv", item=str(getattr(sample, "image", i)))
            # The smallest type that holds every label: half the bytes through the loader's shared
            # memory for Broden-sized vocabularies; widened on the device, where it is used.
            kind = np.int16 if self.ds.num_labels <= 32768 else np.int32
            layers = torch.from_numpy(np.ascontiguousarray(arr, kind))
        return Item(i, image, layers, scalars, sample.sh, sample.sw)


def _collate(items: list[Item]) -> list[Item]:
    # Items leave a worker through shared memory, one segment per storage: sending each item's
    # tensors on their own costs more than decoding them, so a batch shares one storage per kind.
    if get_worker_info() is None:
        return items
    for kind in ("image", "layers"):
        tensors = [getattr(it, kind) for it in items if getattr(it, kind) is not None]
        if len(tensors) < 2 or len({t.dtype for t in tensors}) > 1:
            continue
        flat = torch.cat([t.reshape(-1) for t in tensors])
        offset = 0
        for it in items:
            t = getattr(it, kind)
            if t is not None:
                setattr(it, kind, flat[offset : offset + t.numel()].view(t.shape))
                offset += t.numel()
    return items


class CheckedLoader:
    """Iterates a DataLoader's batches, raising the first error an item carries."""

    def __init__(self, inner: DataLoader) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[Item]]:
        for items in self.inner:
            for it in items:
                if it.error is not None:
                    raise it.error
            yield items


def stack_images(items: Sequence[Item]) -> torch.Tensor:
    """Stack a batch's images, refusing mixed sizes (features must share one shape)."""
    shapes = {tuple(it.image.shape) for it in items}
    if len(shapes) > 1:
        raise UsageError(f"images of different sizes in one dataset ({', '.join(map(str, sorted(shapes)))}); dissection needs one image size")
    images = [it.image for it in items]
    if all(im.is_pinned() for im in images):
        # Stacking into pinned memory keeps the copy to the device asynchronous.
        out = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
        return torch.stack(images, out=out)
    return torch.stack(images)


def loader(ds: ConceptSource, samples: Sequence[Any], categories: Sequence[str], *, mean_std=None, images: bool, labels: bool, batch_size: int, workers: int, start: int = 0, pin: bool = False) -> CheckedLoader:
    """Batches of ``samples[start:]`` in order (``Item.index`` is the position in ``samples``), decoded in ``workers`` processes.

    ``mean_std`` is an :class:`ImagePrep`, or a 0-255 ``(mean, std)`` pair (or None) for normalisation alone.
    ``pin`` pins the tensors for faster, asynchronous copies to a CUDA device.
    """
    return CheckedLoader(
        DataLoader(
            _Images(ds, samples, categories, mean_std, images, labels, start),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            pin_memory=pin,
        )
    )
