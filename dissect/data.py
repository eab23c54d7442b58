"""Feed images and label maps from a concept dataset to the engine through DataLoader workers.

The engine depends only on this small protocol of the dataset, so another backend (for example
a Hugging Face dataset) can stand in for :class:`concepts.broden.reader.ConceptDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from concepts.errors import DatasetFormatError, UsageError


class ConceptSource(Protocol):
    """What dissection needs from a concept dataset."""

    category_names: list[str]
    num_labels: int

    def label_names(self) -> list[str]: ...
    def load_image(self, sample: Any) -> np.ndarray: ...
    def load_labels(self, sample: Any, category: str) -> np.ndarray | list[int]: ...
    def primary_categories(self, categories: Sequence[str] | None = None) -> np.ndarray: ...
    def fingerprint(self) -> str: ...


@dataclass
class Item:
    """One image's tensors: the normalised image or its labels (pixel layers and image-level)."""

    index: int
    image: torch.Tensor | None
    layers: torch.Tensor | None  # L x sh x sw int64 (L may be 0)
    scalars: list[int]
    sh: int
    sw: int


class _Images(Dataset):
    def __init__(self, ds: ConceptSource, samples: Sequence[Any], categories: Sequence[str], mean_std, images: bool, labels: bool) -> None:
        self.ds, self.samples, self.categories = ds, list(samples), list(categories)
        self.mean_std, self.images, self.labels = mean_std, images, labels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Item:
        sample = self.samples[i]
        image = layers = None
        scalars: list[int] = []
        if self.images:
            rgb = torch.from_numpy(np.array(self.ds.load_image(sample), dtype=np.uint8)).permute(2, 0, 1).float()
            if self.mean_std is not None:
                mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in self.mean_std)
                rgb = (rgb - mean) / std
            image = rgb
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
            layers = torch.from_numpy(arr.astype(np.int64))
        return Item(i, image, layers, scalars, sample.sh, sample.sw)


def _collate(items: list[Item]) -> list[Item]:
    return items


def stack_images(items: Sequence[Item]) -> torch.Tensor:
    """Stack a batch's images, refusing mixed sizes (features must share one shape)."""
    shapes = {tuple(it.image.shape) for it in items}
    if len(shapes) > 1:
        raise UsageError(f"images of different sizes in one dataset ({', '.join(map(str, sorted(shapes)))}); dissection needs one image size")
    return torch.stack([it.image for it in items])


def loader(ds: ConceptSource, samples: Sequence[Any], categories: Sequence[str], *, mean_std=None, images: bool, labels: bool, batch_size: int, workers: int) -> DataLoader:
    """A DataLoader over ``samples`` in order, decoding in ``workers`` processes."""
    return DataLoader(
        _Images(ds, samples, categories, mean_std, images, labels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
