"""Each unit's top-k activation maps, kept by the forward pass so the report needs no model.

``topmaps_{layer}.npz`` holds, for every unit, the low-resolution maps (``h x w``) of its top-k
images in the order of ``topk_{layer}.csv`` (rank 1 first), with the image indices and peaks
that identify them and the layer's thresholds in float64 (``thresholds_{layer}.npy`` keeps
float32). Arrays, unit-major:

- ``maps``: ``U x k x h x w`` float16 (float32 when a value would overflow float16);
- ``image_index``: ``U x k`` int64 (-1 where a unit has fewer than k images);
- ``max_activation``: ``U x k`` float32, each map's maximum as the forward pass saw it;
- ``thresholds``: ``U`` float64.

The report upsamples a map to the segmentation size with bilinear interpolation, pixel centres
aligned (the tally's rule, DISSECTION.md step 2) and compares it with the float64 threshold.
float16 storage moves values by at most 2**-11 relative, so a mask may differ from the tally's
by pixels whose value lies that close to the threshold. Nothing here imports torch.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from concepts.errors import UsageError

#: The largest magnitude float16 holds (beyond it values would become infinities).
_F16_MAX = float(np.finfo(np.float16).max)


def save_topmaps(path: Path, maps: np.ndarray, index: np.ndarray, values: np.ndarray, thresholds: np.ndarray) -> None:
    """Write a layer's top-k maps (``k x U x h x w`` as the forward pass keeps them) atomically."""
    from concepts.dissect.results import atomic_write

    maps = np.asarray(maps, np.float32)
    if maps.ndim != 4:  # a layer without top-k images: an empty file of the right shape
        maps = np.zeros((0, len(thresholds), 1, 1), np.float32)
    small = maps.size == 0 or float(np.abs(maps).max()) <= _F16_MAX
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        maps=np.ascontiguousarray(maps.transpose(1, 0, 2, 3)).astype(np.float16 if small else np.float32),
        image_index=np.ascontiguousarray(np.asarray(index, np.int64).reshape(maps.shape[0], -1).T),
        max_activation=np.ascontiguousarray(np.asarray(values, np.float32).reshape(maps.shape[0], -1).T),
        thresholds=np.asarray(thresholds, np.float64).reshape(-1),
    )
    atomic_write(path, buf.getvalue())


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` of the ranks' top-k lists (``values``, ``image index``, ``maps``; ``k' x U ...`` each), given in rank order.

    Ranks hold contiguous shards in dataset order and each list is ordered by value descending,
    ties by image index ascending (the forward pass's stable sort); a stable sort of their
    concatenation in rank order keeps that rule, so the result is one process's lists.
    """
    values = np.concatenate([np.asarray(p[0]) for p in parts])
    index = np.concatenate([np.asarray(p[1]) for p in parts])
    maps = np.concatenate([np.asarray(p[2]) for p in parts])
    if values.ndim != 2 or not len(values):
        return values, index, maps
    order = np.argsort(-values, axis=0, kind="stable")[:k]
    pick = order.reshape(order.shape + (1,) * (maps.ndim - 2))
    return np.take_along_axis(values, order, 0), np.take_along_axis(index, order, 0), np.take_along_axis(maps, pick, 0)


@dataclass
class TopMaps:
    """One layer's stored top-k maps (see the module docstring for the arrays)."""

    maps: np.ndarray
    image_index: np.ndarray
    max_activation: np.ndarray
    thresholds: np.ndarray

    @property
    def units(self) -> int:
        """How many units the layer has."""
        return int(self.maps.shape[0])


def load_topmaps(path: Path) -> TopMaps:
    """Read a ``topmaps_*.npz`` (never unpickled), refusing arrays of the wrong shapes in one line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("maps", "image_index", "max_activation", "thresholds") if k not in z.files]
            if missing:
                raise UsageError(f"top-k maps file has no array(s) {', '.join(missing)}", path=path)
            out = TopMaps(z["maps"], z["image_index"], z["max_activation"], z["thresholds"])
    except FileNotFoundError:
        raise UsageError("top-k maps file is missing", path=path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"cannot read top-k maps: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
    m = out.maps
    ok = m.ndim == 4 and m.dtype.kind == "f" and out.image_index.shape == m.shape[:2] and out.max_activation.shape == m.shape[:2]
    ok = ok and out.image_index.dtype.kind in "iu" and out.max_activation.dtype.kind == "f" and out.thresholds.dtype.kind == "f"
    if not ok or out.thresholds.shape != (m.shape[0],):
        raise UsageError(f"top-k maps file holds arrays of shapes {m.shape}, {out.image_index.shape}, {out.thresholds.shape}, expected U x k x h x w, U x k, U", path=path)
    return out


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``n_out x n_in`` matrix of bilinear weights with pixel centres aligned (align_corners=False)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``... x h x w`` maps to ``... x H x W`` in float64 (pixel centres aligned)."""
    h, w = maps.shape[-2:]
    wh, ww = _weights(h, size[0]), _weights(w, size[1])
    return wh @ np.asarray(maps, np.float64) @ ww.T


def masks(maps: np.ndarray, thresholds: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``N x H x W`` unit masks: ``N x h x w`` maps upsampled to ``size`` and compared with ``N`` thresholds (strict)."""
    out = np.empty((len(maps), *size), bool)
    step = max(1, (1 << 21) // max(1, size[0] * size[1]))  # bounds the float64 temporaries to about 16 MB
    for i in range(0, len(maps), step):
        out[i : i + step] = upsample(maps[i : i + step], size) > np.asarray(thresholds[i : i + step], np.float64)[:, None, None]
    return out


__all__ = ["TopMaps", "load_topmaps", "masks", "merge_topk", "save_topmaps", "upsample"]
