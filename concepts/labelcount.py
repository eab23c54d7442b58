"""Pixel counts of label layers, computed once per layer.

A builder needs the ids present in a layer (to name them) and the unifier needs each id's pixel
count (for coverage, FORMATS.md A.8). Both ask :func:`label_counts`, which remembers its answer
for the layer *object* it was given, so a full-resolution layer is histogrammed once per build
rather than twice. Count a layer only once it is final: the answer is not recomputed if the array
is modified afterwards. The memory is small and bounded (the last :data:`REMEMBERED` layers) and
the unifier clears it after each item with :func:`forget`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: How many layers' counts are kept (a record has a handful of layers).
REMEMBERED = 64
#: Largest scratch index buffer kept between calls (elements; 128 MiB of intp).
SCRATCH_KEPT = 1 << 24

_MEMO: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_SCRATCH: list[np.ndarray] = []


def intp_scratch(values: np.ndarray) -> np.ndarray:
    """``values`` as an intp array in per-process scratch memory, valid until the next call.

    ``np.bincount`` and ``np.take`` convert any other index type to a fresh intp array: for
    full-size label layers that is megabytes of newly faulted-in memory per call, which cost
    more than the counting itself. Reusing one buffer avoids it.
    """
    values = np.asarray(values)
    if values.size > SCRATCH_KEPT:
        return values.astype(np.intp)
    if not _SCRATCH or _SCRATCH[0].size < values.size:
        _SCRATCH[:] = [np.empty(max(values.size, 1 << 18), dtype=np.intp)]
    out = _SCRATCH[0][: values.size].reshape(values.shape)
    np.copyto(out, values, casting="unsafe")
    return out


def _histogram(layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = layer.reshape(-1)
    if layer.dtype == np.uint8 and layer.ndim == 2 and layer.size:
        # PIL's 8-bit histogram is a plain C loop; np.bincount would widen every pixel to intp first.
        counts = np.asarray(Image.fromarray(np.ascontiguousarray(layer), "L").histogram(), dtype=np.int64)
    elif layer.dtype.kind in "ui" and flat.size and int(flat.min()) >= 0 and int(flat.max()) < 1 << 20:
        counts = np.bincount(flat if flat.dtype == np.intp else intp_scratch(flat))
    else:
        ids, counts = np.unique(flat, return_counts=True)
        keep = ids > 0
        return ids[keep], counts[keep]
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    return ids, counts[ids]


def label_counts(layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-zero ids of an integer layer (ascending) and their pixel counts."""
    hit = _MEMO.get(id(layer))
    if hit is not None and hit[0] is layer:
        return hit[1], hit[2]
    ids, counts = _histogram(np.asarray(layer))
    if len(_MEMO) >= REMEMBERED:
        del _MEMO[next(iter(_MEMO))]
    # Holding the layer keeps its id from being reused by another array while remembered.
    _MEMO[id(layer)] = (layer, ids, counts)
    return ids, counts


def present_ids(layer: np.ndarray) -> list[int]:
    """The distinct non-zero ids of a layer, ascending (counted once with :func:`label_counts`)."""
    return label_counts(layer)[0].tolist()


def forget() -> None:
    """Drop every remembered count."""
    _MEMO.clear()
