"""Exact per-unit quantiles of activations in a few streaming passes with bounded memory.

Pass 1 (fused with the forward pass) finds each unit's count, min and max. Each later pass
histograms the values inside a per-unit range known to hold the two order statistics that
numpy's linear interpolation needs; once the bins holding them are small enough, one more pass
keeps only the values in those bins, which are sorted to read the order statistics exactly.
When the two statistics fall in different bins they are the largest value of the first bin and
the smallest of the second, read in one more pass. Ties collapse the range to one value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from concepts.errors import ModelError

_HIST, _COLLECT, _EDGE, _DONE = 0, 1, 2, 3


class ExactQuantile:
    """Streams ``B x U x h x w`` activations; :meth:`result` equals ``numpy.quantile(a_k, level)``."""

    def __init__(self, units: int, level: float, *, bins: int = 2048, cap: int = 1 << 14, max_passes: int = 40, dist: Any = None) -> None:
        self.units, self.level, self.bins, self.cap = units, float(level), bins, cap
        #: A :class:`concepts.dissect.distributed.Dist` when each rank streams its own share of the images.
        self.dist = dist
        self.max_passes = max_passes
        self.n = 0
        self.min = torch.full((units,), np.inf, dtype=torch.float64)
        self.max = torch.full((units,), -np.inf, dtype=torch.float64)
        self.first = True  # the min/max pass
        self.passes = 0
        self.values = np.zeros(units, np.float64)

    # -- streaming ------------------------------------------------------------------------------
    def update(self, x: torch.Tensor) -> None:
        """Feed one batch of a pass (all batches of the dataset, in any order, once per pass)."""
        xu = x.detach().transpose(0, 1).reshape(self.units, -1)
        step = max(1, (1 << 22) // max(1, self.units))
        for s in range(0, xu.shape[1], step):
            self._update(xu[:, s : s + step])

    def _update(self, xu: torch.Tensor) -> None:
        dev = xu.device
        if self.first:
            self.n += xu.shape[1]
            self.min = torch.minimum(self.min.to(dev), xu.amin(1).double())
            self.max = torch.maximum(self.max.to(dev), xu.amax(1).double())
            return
        live = self.mode != _DONE
        if not bool(live.any()):
            return
        idx = live.nonzero()[:, 0]
        v = xu[idx].double()
        lo, hi = self.lo[idx, None], self.hi[idx, None]
        width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        self.below[idx] += (v < lo).sum(1)
        inr = (v >= lo) & (v <= hi)
        pos = ((v - lo) / width * self.bins).floor().clamp_(0, self.bins - 1).long()
        keys = (torch.arange(len(idx), device=dev)[:, None] * self.bins + pos)[inr]
        self.hist[idx] += torch.bincount(keys, minlength=len(idx) * self.bins).view(len(idx), self.bins)
        inf = torch.tensor(np.inf, dtype=torch.float64, device=dev)
        self.inmin[idx] = torch.minimum(self.inmin[idx], torch.where(inr, v, inf).amin(1))
        self.inmax[idx] = torch.maximum(self.inmax[idx], torch.where(inr, v, -inf).amax(1))
        edge = (self.mode[idx] == _EDGE)[:, None] & inr
        if bool(edge.any()):
            lo_bin = edge & (pos == self.b0[idx, None])
            hi_bin = edge & (pos == self.b1[idx, None])
            self.edge_lo[idx] = torch.maximum(self.edge_lo[idx], torch.where(lo_bin, v, -inf).amax(1))
            self.edge_hi[idx] = torch.minimum(self.edge_hi[idx], torch.where(hi_bin, v, inf).amin(1))
        want = (self.mode[idx] == _COLLECT)[:, None] & inr & (pos >= self.b0[idx, None]) & (pos <= self.b1[idx, None])
        if bool(want.any()):
            rows, _ = want.nonzero(as_tuple=True)
            self.kept_units.append(idx[rows].cpu().numpy())
            self.kept_values.append(v[want].cpu().numpy())

    def needs_pass(self) -> bool:
        """Whether another pass over the data is needed before :meth:`result`."""
        return self.first or bool((self.mode != _DONE).any())

    def end_pass(self) -> None:
        """Finish a pass: narrow the ranges, or read the order statistics from kept values."""
        if self.dist is not None and self.dist.world > 1:
            self._sync()
        if self.first:
            self._start()
            return
        self.passes += 1
        dev = self.hist.device
        cum = self.below[:, None] + self.hist.cumsum(1)
        b0 = (cum > self.k0).long().argmax(1)
        b1 = (cum > self.k1).long().argmax(1)
        before = torch.where(b0 > 0, cum.gather(1, (b0 - 1).clamp(min=0)[:, None])[:, 0], self.below)
        count = cum.gather(1, b1[:, None])[:, 0] - before
        ok = (self.below <= self.k0) & (cum[:, -1] > self.k1)
        if bool(((self.mode != _DONE) & ~ok).any()):
            raise ModelError("the layer's activations changed between passes over the data, so exact thresholds "
                             "cannot be found", hint="raise --cache-gb so features are cached, not recomputed, "
                             "or make the model deterministic (eval mode, no dropout)")
        collect = self.mode == _COLLECT
        if bool(collect.any()):
            self._read(collect, before)
        edge = self.mode == _EDGE
        if bool(edge.any()):
            which = edge.cpu().numpy()
            self.values[which] = _lerp(self.edge_lo[edge].cpu().numpy(), self.edge_hi[edge].cpu().numpy(), self.frac)
            self.mode[edge] = _DONE
        tie = (self.mode == _HIST) & (self.inmin == self.inmax)
        self.values[tie.cpu().numpy()] = self.inmin[tie].cpu().numpy()
        self.mode[tie] = _DONE
        hist = self.mode == _HIST
        split = hist & (b0 != b1)
        self.mode[split] = _EDGE
        small = hist & ~split & (count <= self.cap)
        self.mode[small] = _COLLECT
        self.b0 = torch.where(hist, b0, self.b0)
        self.b1 = torch.where(hist, b1, self.b1)
        narrow = hist & ~small & ~split
        if bool(narrow.any()):
            if self.passes >= self.max_passes:
                raise ModelError(f"exact thresholds not found in {self.max_passes} passes over the data",
                                 hint="the activations may hold NaN or change between passes; try --thresholds FILE")
            step = (self.hi - self.lo) / self.bins
            margin = step * 1e-3
            new_lo = torch.maximum(self.lo + b0 * step - margin, self.lo)
            new_hi = torch.minimum(self.lo + (b0 + 1) * step + margin, self.hi)
            self.lo = torch.where(narrow, new_lo, self.lo)
            self.hi = torch.where(narrow, new_hi, self.hi)
        self._reset_counts(dev)

    # -- internals ------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Combine the ranks' counts, extrema and kept values: every rank then holds the one-process state."""
        d = self.dist
        if self.first:
            n = torch.tensor([self.n], dtype=torch.long)
            self.n = int(d.sum_(n)[0])
            d.min_(self.min)
            d.max_(self.max)
            return
        for t in (self.below, self.hist):
            d.sum_(t)
        for t in (self.inmin, self.edge_hi):
            d.min_(t)
        for t in (self.inmax, self.edge_lo):
            d.max_(t)
        units = np.concatenate(self.kept_units) if self.kept_units else np.zeros(0, np.int64)
        values = np.concatenate(self.kept_values) if self.kept_values else np.zeros(0)
        # Kept values are sorted before they are read, so their order across ranks does not matter.
        self.kept_units, self.kept_values = [d.concat(units.astype(np.int64))], [d.concat(values.astype(np.float64))]

    def _start(self) -> None:
        self.first = False
        if self.n == 0:
            raise ModelError("the layer produced no activations (no images, or empty feature maps)")
        dev = self.min.device
        rank = (self.n - 1) * self.level
        self.k0 = int(np.floor(rank))
        self.k1 = min(self.k0 + 1, self.n - 1)
        self.frac = rank - self.k0
        self.lo, self.hi = self.min.clone(), self.max.clone()
        self.mode = torch.full((self.units,), _HIST, dtype=torch.long, device=dev)
        const = self.lo == self.hi
        self.values[const.cpu().numpy()] = self.lo[const].cpu().numpy()
        self.mode[const] = _DONE
        self.b0 = torch.zeros(self.units, dtype=torch.long, device=dev)
        self.b1 = torch.zeros(self.units, dtype=torch.long, device=dev)
        self._reset_counts(dev)

    def _reset_counts(self, dev: torch.device) -> None:
        self.below = torch.zeros(self.units, dtype=torch.long, device=dev)
        self.hist = torch.zeros(self.units, self.bins, dtype=torch.long, device=dev)
        self.inmin = torch.full((self.units,), np.inf, dtype=torch.float64, device=dev)
        self.inmax = torch.full((self.units,), -np.inf, dtype=torch.float64, device=dev)
        self.edge_lo = torch.full((self.units,), -np.inf, dtype=torch.float64, device=dev)
        self.edge_hi = torch.full((self.units,), np.inf, dtype=torch.float64, device=dev)
        self.kept_units: list[np.ndarray] = []
        self.kept_values: list[np.ndarray] = []

    def _read(self, collect: torch.Tensor, before: torch.Tensor) -> None:
        units = np.concatenate(self.kept_units) if self.kept_units else np.zeros(0, np.int64)
        vals = np.concatenate(self.kept_values) if self.kept_values else np.zeros(0)
        order = np.lexsort((vals, units))
        units, vals = units[order], vals[order]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(units, minlength=self.units))])
        which = collect.cpu().numpy()
        base = offsets[:-1] - before.cpu().numpy()
        v0 = vals[(base + self.k0)[which]]
        v1 = vals[(base + self.k1)[which]]
        self.values[which] = _lerp(v0, v1, self.frac)
        self.mode[collect] = _DONE

    def result(self) -> np.ndarray:
        """The per-unit quantiles in float64 (kept so: a float32 copy would move values at the threshold)."""
        if self.needs_pass():
            raise RuntimeError("more passes are needed")
        return self.values.copy()


def _lerp(a: np.ndarray, b: np.ndarray, frac: float) -> np.ndarray:
    """numpy.quantile's own interpolation between neighbouring order statistics, in float64 like the reference's percentiles."""
    pair = np.stack([a, b]).astype(np.float64)
    return np.quantile(pair, frac, axis=0)
