"""Accumulate truth, intersection and activation counts over a dataset, all units at once.

Per batch: unit-image pairs whose maximum is at or below the threshold are skipped. For the
rest, the active pixels (bilinear upsampling, pixel centres aligned, above the threshold) are
found without upsampling whole maps: output rows that interpolate from the same pair of source
rows form a tile row (likewise columns), so each output tile is interpolated from 4 source
cells and can only exceed the threshold where the largest of them does. Only those tiles, and
in them only the rows and columns whose edge values reach the threshold, are interpolated,
with the weights read off the device's own ``F.interpolate`` and in its order of operations.
A pixel whose value is within rounding of the threshold (where kernels may disagree) is
computed again with the reference's own arithmetic (PIL's two-pass bilinear resize of an ``F``
image, :func:`pil_values`) and compared with the float64 threshold, so the counts are exactly
those of the reference upsampling every map in full (DISSECTION.md, bit-exact agreement).
Intersections are counted with one ``bincount`` over ``unit * L + label`` keys of the active
pixels (all label layers at once, which is the same as one per layer), or over
``pair * L + label`` keys when there are few labels, which also gives each pair's categories.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from concepts.dissect.data import Item

UNIONS = ("ndlite", "netdissect", "global")
_CHUNK = 1 << 22  # upsampled elements per chunk (16 MB): bounds memory whatever the batch size
# Guard band, relative to the magnitudes interpolated (the weighted sum of the 4 cells' absolute
# values): with the same weights, two float32 evaluations of the bilinear formula in different
# orders differ by a few units of 2**-24 of it (at most 4.3 measured on CPU kernels); this is 32.
_KAPPA = 2.0**-19
_INT32 = 2**31  # index values below this are kept in int32, much faster than int64 in these small steps


class _Axis(NamedTuple):
    """One axis of an upsampling, by tile (the output indices that interpolate from source ``t`` and ``t + 1``)."""

    start: torch.Tensor  # n_in: the first output index of each tile
    w0: torch.Tensor  # size x n_in float32: weight of source t at each output index of tile t (NaN past its end)
    w1: torch.Tensor  # size x n_in float32: weight of source t + 1 (0 where only t counts; NaN past the end)
    exists: torch.Tensor  # n_in bool: tiles holding at least one output index
    count: torch.Tensor  # n_in: the number of output indices of each tile
    size: int  # the largest tile
    ok: bool  # the weights have the bilinear form (else upsample in full)


def _read_axis(n_in: int, n_out: int, dim: int, device: torch.device) -> _Axis:
    """The source indices and weights of one axis, read off ``F.interpolate`` on the device, so that they are the kernel's own."""
    eye = torch.eye(n_in, device=device)
    x, size = (eye[:, None, :, None], (n_out, 1)) if dim == 0 else (eye[:, None, None, :], (1, n_out))
    # Shrinking reads antialiased weights (more than two per output), which sends the axis to full upsampling.
    wts = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=n_out < n_in).reshape(n_in, n_out)
    nz = wts != 0
    first = nz.int().argmax(0)
    last = n_in - 1 - nz.flip(0).int().argmax(0)
    out = torch.arange(n_out, device=device)
    w0 = wts[first, out]
    # A lone weight is either an exact source index or both ends clamped to the edge, where the
    # kernel adds two weights of the same cell; their sum is within rounding of that (the guard's job).
    w1 = torch.where(last > first, wts[last, out], torch.zeros((), device=device))
    ok = bool((nz.any(0) & (last - first <= 1)).all() and (first[1:] >= first[:-1]).all())
    count = torch.bincount(first, minlength=n_in)
    size = int(count.max())
    start = torch.cumsum(count, 0) - count
    pos = torch.arange(size, device=device)
    at = (start + pos[:, None]).clamp(max=n_out - 1)
    # NaN weights past a tile's end make every comparison false, so no mask is needed.
    past = pos[:, None] >= count
    return _Axis(start, w0[at].masked_fill(past, float("nan")), w1[at].masked_fill(past, float("nan")), count > 0, count, size, ok)


def below_float32(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold: ``v > T32`` equals ``v > T64`` for every float32 ``v``."""
    t64 = np.asarray(thresholds, np.float64)
    with np.errstate(over="ignore"):
        t32 = t64.astype(np.float32)
    # Round to nearest went up: step down once (never more than one float32 apart).
    return np.where(t32.astype(np.float64) > t64, np.nextafter(t32, np.float32(-np.inf)), t32)


def _bilinear(x: float) -> float:
    x = -x if x < 0.0 else x
    return 1.0 - x if x < 1.0 else 0.0


@functools.lru_cache(maxsize=64)
def _pil_axis_np(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """First source index and float64 weights per output index of PIL's bilinear resize along one axis.

    The same operations, in the same order, as Pillow's ``precompute_coeffs`` (libImaging/Resample.c),
    whose coefficients are doubles normalised to sum 1.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale
    first = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, ksize), np.float64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), n_in) - xmin
        k = [_bilinear((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        if ww != 0.0:
            k = [w / ww for w in k]
        first[xx] = xmin
        weights[xx, : len(k)] = k
    return first, weights


def _pil_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    first, weights = _pil_axis_np(n_in, n_out)
    return torch.from_numpy(first).to(device), torch.from_numpy(weights).to(device)


def pil_values(maps: torch.Tensor, j: torch.Tensor, pix: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """The values PIL's bilinear resize of ``maps[j]`` (as ``F`` images) to ``sh x sw`` gives at flat pixels ``pix``.

    Pillow resizes in two passes, along the width first; each output value sums its taps in
    order in double precision with double weights and is stored as float32 after each pass.
    Reproduced here per pixel, in float64 with separate multiplies and adds (no fused
    multiply-add), for the few pixels whose value is within rounding of a threshold.
    """
    _, h, w = maps.shape
    dev = maps.device
    j, pix = j.long(), pix.long()
    y, x = pix // sw, pix % sw
    ry, ky = _pil_axis(h, sh, dev)
    rx, kx = _pil_axis(w, sw, dev)
    rows = (ry.index_select(0, y)[:, None] + torch.arange(ky.shape[1], device=dev)).clamp(max=h - 1)
    cols = (rx.index_select(0, x)[:, None] + torch.arange(kx.shape[1], device=dev)).clamp(max=w - 1)
    # Taps past a window have weight 0 and a clamped index: adding 0 * value changes no sum.
    at = (j * (h * w))[:, None, None] + rows[:, :, None] * w + cols[:, None, :]
    vals = maps.reshape(-1).index_select(0, at.reshape(-1)).view(at.shape).to(torch.float64)
    wx, wy = kx.index_select(0, x), ky.index_select(0, y)
    across = torch.zeros(vals.shape[:2], dtype=torch.float64, device=dev)
    for b in range(vals.shape[2]):
        across = across + vals[:, :, b] * wx[:, b, None]
    across = across.to(torch.float32).to(torch.float64)
    out = torch.zeros(len(j), dtype=torch.float64, device=dev)
    for a in range(vals.shape[1]):
        out = out + across[:, a] * wy[:, a]
    return out.to(torch.float32)


def _decide_near(maps: torch.Tensor, thr64: torch.Tensor, j: torch.Tensor, pix: torch.Tensor, active: torch.Tensor, near: torch.Tensor, sh: int, sw: int) -> None:
    """Set ``active`` at the ``near`` pixels from the reference's arithmetic and the float64 thresholds."""
    if near.any():
        at = near.nonzero()[:, 0]
        jn = j.index_select(0, at)
        active[at] = pil_values(maps, jn, pix.index_select(0, at), sh, sw).to(torch.float64) > thr64.index_select(0, jn.long())


def _full_active(maps: torch.Tensor, thr: torch.Tensor, thr64: torch.Tensor, sh: int, sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Active pixels ``(map index, pixel)`` of ``maps`` (``P x h x w``) upsampled in full to ``sh x sw``.

    ``thr`` is ``thr64`` rounded down to float32; pixels within rounding of it are decided by :func:`pil_values`.
    """
    npix = sh * sw
    step = max(1, _CHUNK // npix)
    js, pixs = [], []
    for s in range(0, len(maps), step):
        part = maps[s : s + step]
        # Shrinking, PIL (the reference) widens the filter to cover every source cell: antialias does the same.
        shrink = sh < maps.shape[1] or sw < maps.shape[2]
        up = F.interpolate(part[:, None], size=(sh, sw), mode="bilinear", align_corners=False, antialias=shrink).view(-1, npix)
        t = thr[s : s + step, None]
        band = (2 * _KAPPA) * part.abs().amax(dim=(1, 2))[:, None]
        near = (up - t).abs() < band
        j, pix = (up > t).nonzero(as_tuple=True)
        if near.any():
            # The doubtful pixels, decided afresh, replace the kernel's answer at those pixels.
            nj, npx = near.nonzero(as_tuple=True)
            keep = ~near[j, pix]
            j, pix = j[keep], pix[keep]
            decided = torch.zeros(len(nj), dtype=torch.bool, device=maps.device)
            _decide_near(part, thr64[s : s + step], nj, npx, decided, torch.ones_like(decided), sh, sw)
            j, pix = torch.cat([j, nj[decided]]), torch.cat([pix, npx[decided]])
        js.append(j + s)
        pixs.append(pix)
    return torch.cat(js), torch.cat(pixs)


def _pairs_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The larger of each entry and the next one along ``dim`` (the last entry kept)."""
    n = x.shape[dim]
    return torch.cat([torch.maximum(x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)), x.narrow(dim, n - 1, 1)], dim)


def _hot_tiles(maps: torch.Tensor, thr: torch.Tensor, rows: _Axis, cols: _Axis) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(map, tile row, tile column)`` of the tiles whose 4 source cells reach the threshold (less the rounding margin), sorted by map."""
    hi = _pairs_max(_pairs_max(maps, 1), 2)
    # The margin for rounding, from the map's largest magnitude rather than each tile's: looser, cheaper.
    low = thr - _KAPPA * maps.abs().amax(dim=(1, 2))
    sel = (hi > low[:, None, None]) & (rows.exists[:, None] & cols.exists)  # the small mask first: one pass over the maps
    k, t, s = sel.nonzero(as_tuple=True)
    return k, t, s


def _span(ok: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and length (of type ``dtype``) of the smallest interval holding each column's true entries (length 0 when none)."""
    n = ok.shape[0]
    # Small integer types: their elementwise products and reductions are many times faster here.
    small = torch.uint8 if n < 255 else torch.int32
    rank = torch.arange(1, n + 1, dtype=small, device=ok.device)[:, None]
    okn = ok.to(small)
    end = (okn * rank).amax(0).to(dtype)  # last + 1, or 0
    from_end = (okn * (n + 1 - rank)).amax(0).to(dtype)  # n - first, or 0
    return n - from_end, (end + from_end - n).clamp(min=0)


def _expand(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``n[i]`` entries per item ``i``: each entry's item and its position among the item's entries (in ``n``'s type)."""
    end = torch.cumsum(n, 0, dtype=n.dtype)
    total = int(end[-1]) if len(n) else 0
    start = end - n
    # Each entry's item is the number of items starting at or before it, less one (items with
    # no entries share their start with the next). In int32 this is several times faster than
    # repeat_interleave, which works in int64.
    item = torch.cumsum(torch.bincount(start, minlength=total + 1)[:total], 0, dtype=n.dtype) - 1
    pos = torch.arange(total, dtype=n.dtype, device=n.device) - start.index_select(0, item)
    return item, pos


def _tile_active(maps: torch.Tensor, thr: torch.Tensor, thr64: torch.Tensor, tiles: Sequence[torch.Tensor], p0: int, rows: _Axis, cols: _Axis, sh: int, sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Active pixels ``(map index, pixel)`` of ``maps`` upsampled to ``sh x sw``, computed only in ``tiles`` (maps numbered from ``p0``).

    Equal to :func:`_full_active` on the same maps: a pixel within rounding of its threshold
    is decided by :func:`pil_values` in both.
    """
    P, h, w = maps.shape
    K = len(tiles[0])
    # int32 indices where they fit: gathers, arithmetic and counting run several times faster.
    idx = torch.int32 if max(maps.numel(), K * rows.size * cols.size, sh * sw) < _INT32 else torch.long
    k, t, s = (v.to(idx) for v in tiles)
    k = k - p0
    flat = maps.reshape(-1)
    t0 = k * (h * w) + t * w
    t1 = t0 + (t < h - 1).to(idx) * w  # the next source row, or the same one at the edge
    s1 = s + (s < w - 1).to(idx)
    a, b, c, d = (flat.index_select(0, i) for i in (t0 + s, t0 + s1, t1 + s, t1 + s1))
    T = thr.index_select(0, k)
    mag = torch.maximum(torch.maximum(a.abs(), b.abs()), torch.maximum(c.abs(), d.abs()))
    low = T - _KAPPA * mag
    # Tables are position x tile, so that reductions over a tile's positions run across tiles.
    h0, h1 = rows.w0.index_select(1, t), rows.w1.index_select(1, t)
    w0, w1 = cols.w0.index_select(1, s), cols.w1.index_select(1, s)
    # Along the width first, as the kernels do. A row (column) of a tile interpolates between
    # its two end values, so it can only exceed the threshold where one of them nearly does:
    # the pixels to compute lie in a box of rows and columns.
    top, bottom = a * w0 + b * w1, c * w0 + d * w1
    x0, nx = _span(torch.maximum(top, bottom) > low, idx)
    y0, ny = _span(torch.maximum(a * h0 + c * h1, b * h0 + d * h1) > low, idx)
    ny = torch.where(nx > 0, ny, 0)
    # The boxes' rows, then their pixels (flat tables are indexed position * K + tile).
    rt, dy = _expand(ny)
    jy = y0.index_select(0, rt) + dy
    fy = jy * K + rt
    hr0, hr1 = h0.view(-1).index_select(0, fy), h1.view(-1).index_select(0, fy)
    tile_k = torch.arange(K, dtype=idx, device=maps.device)
    fx0 = (x0 * K + tile_k).index_select(0, rt)
    pix0 = (rows.start.to(idx).index_select(0, t) * sw + cols.start.to(idx).index_select(0, s) + x0).index_select(0, rt) + jy * sw
    Tr, band = T.index_select(0, rt), ((2 * _KAPPA) * mag).index_select(0, rt)
    r, dx = _expand(nx.index_select(0, rt))
    fx = fx0.index_select(0, r) + dx * K
    v = top.view(-1).index_select(0, fx) * hr0.index_select(0, r) + bottom.view(-1).index_select(0, fx) * hr1.index_select(0, r)
    Tq = Tr.index_select(0, r)
    active = v > Tq
    j = k.index_select(0, rt).index_select(0, r)
    pix = pix0.index_select(0, r) + dx
    # Rounding is bounded relative to the interpolated magnitudes: outside this band every
    # evaluation order, the reference's included, puts the pixel on the same side.
    _decide_near(maps, thr64, j, pix, active, (v - Tq).abs() < band.index_select(0, r), sh, sw)
    keep = active.nonzero()[:, 0]
    return j.index_select(0, keep), pix.index_select(0, keep)


_FIELDS = ("truth", "inter", "act_cat", "act_units")


class Tally:
    """Counts for one layer: ``truth[L]``, ``inter[U, L]``, ``act_cat[U, C]``, ``act_units[U]``.

    :meth:`update` computes a batch's counts apart and adds them in one short step at the end,
    so the totals always cover whole batches (:attr:`images` of them) and can be checkpointed
    at any moment outside that step (:attr:`committing`).
    """

    def __init__(self, units: int, primary: np.ndarray, num_categories: int, thresholds: np.ndarray, union: str = "ndlite", device: str | torch.device = "cpu") -> None:
        if union not in UNIONS:
            raise ValueError(f"union must be one of {UNIONS}")
        self.units, self.union, self.device = units, union, torch.device(device)
        self.nl, self.nc = len(primary), num_categories
        self.primary = torch.as_tensor(primary, dtype=torch.long, device=self.device)
        # Category per label with "none" as an extra last category, so presence needs no masking.
        self._cat = torch.where(self.primary >= 0, self.primary, self.nc).to(torch.int32)
        self._label_cat = torch.zeros(self.nl, self.nc + 1, device=self.device)
        self._label_cat[torch.arange(self.nl, device=self.device), self._cat] = 1
        # Label buffer, reused from batch to batch, in the smallest type that holds every label
        # (the loader checks them): the active pixels' labels are gathered from it long after it
        # was written, and the smaller it is, the more of it is still in cache.
        self._label_type = torch.uint8 if self.nl <= 256 else torch.int16 if self.nl <= 2**15 else torch.int32
        self._labels = torch.zeros(0, dtype=self._label_type, device=self.device)
        # float64 as given (the reference compares float32 values with float64 thresholds); the
        # float32 copy is rounded down so that the fast float32 comparisons agree with it exactly.
        self.thresholds64 = torch.as_tensor(np.asarray(thresholds, np.float64), device=self.device)
        self.thresholds = torch.as_tensor(below_float32(thresholds), device=self.device)
        self.truth, self.inter, self.act_cat, self.act_units = self._zeros()
        self.images = 0
        self.committing = False
        self._axes: dict[tuple[int, int, int], _Axis] = {}
        self._full = False  # True: upsample every hot map in full (the plain method, kept to check the tiled one)
        self._by_pair = False  # True: always count by pair and label (tests reach both ways of counting)

    def _zeros(self) -> list[torch.Tensor]:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=self.device)  # noqa: E731
        return [z(self.nl), z(self.units * self.nl), z(self.units, self.nc), z(self.units)]

    def _presence(self, keys_rows: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
        """``rows x C`` bool: which categories (by primary) the given labels of each row include."""
        keys = keys_rows * (self.nc + 1) + self._cat.index_select(0, labels)
        return torch.bincount(keys, minlength=rows * (self.nc + 1)).view(rows, self.nc + 1)[:, : self.nc] > 0

    def update(self, feats: torch.Tensor, items: Sequence[Item]) -> None:
        """Add one batch: ``feats`` is ``B x U x h x w`` for ``items`` in the same order.

        Label numbers must lie in ``0..len(primary) - 1``, as :func:`dissect.data.loader` checks.
        """
        feats = feats.to(self.device, torch.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for b, it in enumerate(items):
            groups.setdefault((it.sh, it.sw), []).append(b)
        delta = self._zeros()
        # The work is many small steps: on a CPU, OpenMP's fan-out and barriers cost more than
        # they save, and far more when the loader's workers keep the other cores busy.
        threads = torch.get_num_threads()
        single = self.device.type == "cpu" and threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            for (sh, sw), members in groups.items():
                self._update_group(delta, feats[members], [items[b] for b in members], sh, sw)
        finally:
            if single:
                torch.set_num_threads(threads)
        self.committing = True
        for name, d in zip(_FIELDS, delta):
            getattr(self, name).add_(d)
        self.images += len(items)
        self.committing = False

    def reduce(self, dist: Any) -> None:
        """Sum the ranks' counts (each rank tallied its own images): every rank then holds the totals."""
        if dist is None or dist.world == 1:
            return
        for name in _FIELDS:
            dist.sum_(getattr(self, name))
        images = torch.tensor([self.images], dtype=torch.long)
        self.images = int(dist.sum_(images)[0])

    def state(self) -> dict[str, np.ndarray]:
        """The running totals, for a checkpoint."""
        return {name: getattr(self, name).cpu().numpy() for name in _FIELDS} | {"images": np.array(self.images)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from a checkpoint written by :meth:`state`."""
        for name in _FIELDS:
            t = torch.as_tensor(np.asarray(state[name]), dtype=torch.long, device=self.device)
            if t.shape != getattr(self, name).shape:
                raise ValueError(f"checkpoint {name} has shape {tuple(t.shape)}")
            setattr(self, name, t)
        self.images = int(state["images"])

    def _update_group(self, delta: list[torch.Tensor], feats: torch.Tensor, items: Sequence[Item], sh: int, sw: int) -> None:
        dev, nl, nc = self.device, self.nl, self.nc
        B, npix = len(items), sh * sw
        depth = max(it.layers.shape[0] for it in items)
        depth = max(depth, 1)
        if self._labels.numel() < B * npix * depth:
            self._labels = torch.empty(B * npix * depth, dtype=self._label_type, device=dev)
        labels = self._labels[: B * npix * depth].view(B, depth, npix)
        per_image = torch.zeros(B, nl, dtype=torch.long, device=dev)
        for b, it in enumerate(items):
            n = it.layers.shape[0]
            if n:
                labels[b, :n] = it.layers.reshape(n, -1).to(dev, non_blocking=True)
                per_image[b] = torch.bincount(labels[b, :n].view(-1), minlength=nl)  # while the copy is in cache
            if n < depth:
                labels[b, n:] = 0
        counts = per_image.sum(0)
        counts[0] = 0
        delta[0] += counts
        # Image-level labels: a count matrix, since a repeated number counts (and covers) twice.
        scal_b = torch.tensor([b for b, it in enumerate(items) for _ in it.scalars], dtype=torch.long, device=dev)
        scal_l = torch.tensor([n for it in items for n in it.scalars], dtype=torch.long, device=dev)
        img_counts = None
        if len(scal_l):
            delta[0] += torch.bincount(scal_l, minlength=nl) * npix
            img_counts = torch.zeros(B, nl, dtype=torch.long, device=dev)
            img_counts.index_put_((scal_b, scal_l), torch.ones_like(scal_l), accumulate=True)
            scal_cat = self._presence(scal_b, scal_l, B)
        else:
            scal_cat = torch.zeros(B, nc, dtype=torch.bool, device=dev)
        img_cat = None
        if self.union == "netdissect":
            img_cat = ((per_image > 0).float() @ self._label_cat)[:, :nc] > 0
            img_cat |= scal_cat
        ctx = (labels, img_counts, scal_cat, img_cat)

        for pb, pu, j, pix in self.active(feats, sh, sw):
            self._count(delta, ctx, pb, pu, j, pix)

    def active(self, feats: torch.Tensor, sh: int, sw: int, units: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Active pixels of ``feats`` (``B x U x h x w``, float32 on the device) upsampled to ``sh x sw``, by chunks of pairs.

        Yields ``(pb, pu, j, pix)``: the chunk's image-unit pairs (``pb`` indexes ``feats``, ``pu``
        units) and its active pixels, pair ``j`` (into ``pb``) and flat pixel ``pix``, exactly those
        the counts use. ``units`` (bool per unit) restricts the pairs to those units.
        """
        thr = self.thresholds
        # Bilinear upsampling never exceeds the map's maximum: pairs at or below it stay empty.
        hot_mask = feats.amax(dim=(2, 3)) > thr
        if units is not None:
            hot_mask &= units.to(self.device)[None, :]
        hot = hot_mask.nonzero()
        if not len(hot):
            return
        npix = sh * sw
        h, w = feats.shape[2:]
        rows_ax, cols_ax = self._axis(h, sh, 0), self._axis(w, sw, 1)
        if self._full or not (rows_ax.ok and cols_ax.ok):
            step = max(1, _CHUNK // npix)
            for s in range(0, len(hot), step):
                pb, pu = hot[s : s + step, 0], hot[s : s + step, 1]
                j, pix = _full_active(feats[pb, pu], thr[pu], self.thresholds64[pu], sh, sw)
                yield pb, pu, j, pix
            return
        dev = self.device
        step = max(1, _CHUNK // (8 * h * w))
        for s in range(0, len(hot), step):
            pb, pu = hot[s : s + step, 0], hot[s : s + step, 1]
            maps, t, t64 = feats[pb, pu], thr[pu], self.thresholds64[pu]
            tiles = _hot_tiles(maps, t, rows_ax, cols_ax)
            # Parts of whole pairs whose selected tiles hold at most about _CHUNK pixels, to bound
            # memory: a tile's pixels, or its tables' entries if more (edge tiles can be short).
            tile_map, tile_row, tile_col = tiles
            tile_cost = torch.clamp(rows_ax.count.index_select(0, tile_row) * cols_ax.count.index_select(0, tile_col), min=rows_ax.size + cols_ax.size)
            cost = torch.zeros(len(pb), dtype=torch.long, device=dev).index_add_(0, tile_map, tile_cost)
            part = (torch.cumsum(cost, 0) - cost) // _CHUNK
            p0 = 0
            for n in torch.unique_consecutive(part, return_counts=True)[1].tolist():
                p1 = p0 + n
                t0, t1 = torch.searchsorted(tiles[0], torch.tensor([p0, p1], device=dev)).tolist()
                j, pix = _tile_active(maps[p0:p1], t[p0:p1], t64[p0:p1], [v[t0:t1] for v in tiles], p0, rows_ax, cols_ax, sh, sw)
                yield pb[p0:p1], pu[p0:p1], j, pix
                p0 = p1

    def _axis(self, n_in: int, n_out: int, dim: int) -> _Axis:
        key = (n_in, n_out, dim)
        if key not in self._axes:
            self._axes[key] = _read_axis(n_in, n_out, dim, self.device)
        return self._axes[key]

    def _count(self, delta: list[torch.Tensor], ctx: tuple, pb: torch.Tensor, pu: torch.Tensor, j: torch.Tensor, pix: torch.Tensor) -> None:
        """Add the counts of the active pixels ``pix`` of pairs ``j`` (indices into images ``pb``, units ``pu``)."""
        _, inter, act_cat, act_units = delta
        labels, img_counts, scal_cat, img_cat = ctx
        nl, nc, p = self.nl, self.nc, len(pb)
        # int32 throughout where it fits: int64 gathers, broadcasts and bincounts are several
        # times slower here.
        depth, npix = labels.shape[1:]
        idx = torch.int32 if max(labels.numel(), max(p, self.units) * max(nl, nc + 1)) < _INT32 else torch.long
        j = j.to(idx)
        n_act = torch.bincount(j, minlength=p)
        act_units.index_add_(0, pu, n_act)
        at = pb.to(idx).index_select(0, j) * (depth * npix) + pix.to(idx)
        # Label layers x active pixels: broadcasting along the long axis is the fast way round.
        layer = torch.arange(0, depth * npix, npix, dtype=idx, device=self.device)
        lab = labels.view(-1).index_select(0, (layer[:, None] + at).view(-1)).view(depth, -1)
        inter2 = inter.view(self.units, nl)
        if p * nl <= lab.numel() or self._by_pair:
            # Few pairs and labels: count per pair and label once, which gives both the
            # intersections and the categories present under each pair's active pixels.
            by_pair = torch.bincount((lab + j * nl).view(-1), minlength=p * nl).view(p, nl)
            inter2.index_add_(0, pu, by_pair)
            under = ((by_pair > 0).float() @ self._label_cat)[:, :nc] > 0
        else:
            inter += torch.bincount((lab + pu.to(idx).index_select(0, j) * nl).view(-1), minlength=self.units * nl)
            under = self._presence(j.expand_as(lab).reshape(-1), lab.view(-1).to(idx), p) if self.union == "ndlite" else None
        if img_counts is not None:
            inter2.index_add_(0, pu, n_act[:, None] * img_counts[pb])
        if self.union == "ndlite":
            present = under | scal_cat[pb]
        elif self.union == "netdissect":
            present = img_cat[pb]
        else:
            present = torch.ones(p, nc, dtype=torch.bool, device=self.device)
        act_cat.index_add_(0, pu, n_act[:, None] * present)

    def arrays(self) -> dict[str, np.ndarray]:
        """The counts as numpy arrays; ``act`` is per label (via its primary category)."""
        inter = self.inter.view(self.units, self.nl).clone()
        inter[:, 0] = 0
        primary = self.primary.clone()
        valid = primary >= 0
        act = torch.zeros(self.units, self.nl, dtype=torch.long, device=self.device)
        act[:, valid] = self.act_cat[:, primary[valid]]
        return {
            "truth": self.truth.cpu().numpy(),
            "intersection": inter.cpu().numpy(),
            "activation": act.cpu().numpy(),
            "activation_category": self.act_cat.cpu().numpy(),
            "active_pixels": self.act_units.cpu().numpy(),
        }


def iou(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``inter / (act + truth - inter + 1e-10)`` per unit and label (the reference's formula)."""
    inter = arrays["intersection"].astype(np.float64)
    return inter / (arrays["activation"] + arrays["truth"][None, :] - inter + 1e-10)
