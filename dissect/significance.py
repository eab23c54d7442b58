"""Is a unit's label more than chance? A permutation null, bootstrap intervals and Benjamini-Hochberg, per layer.

After the main tally (which names each unit's label), one more pass over the cached features
counts, for every unit, each label under ``K + 1`` pairings of masks with labels:

- **Pairings.** The dataset order is cut into fixed chunks (:func:`chunks`: at most 256 chunks
  of a multiple of ``G`` images, at least ``G``; a last chunk of fewer than 2 joins the one
  before), which depend only on the number of images. Inside each chunk the images take a seeded
  random order (:attr:`Significance.order`, the order to feed them in, keeps every chunk in place)
  and are cut into blocks of ``G = 16`` (a last block of fewer than 2 joins the one before).
  Pairs therefore never cross a chunk, so a distributed run, whose shards are whole chunks
  (:meth:`concepts.dissect.distributed.Dist.shard_chunks`), counts each block on one rank and
  gets one process's pairings whatever the number of ranks. A partner comes from the same
  stretch of the dataset (256 consecutive images at Broden's size, 16 below 4,096 images):
  images of one source stay paired among themselves, which can only make the null stricter. In a block of ``G'`` images, image ``t`` gets the labels of image ``(t + d_s) mod G'``,
  ``d_s = 1 + (s - 1) mod (G' - 1)`` for shift ``s = 1..K``: ``K`` derangements, all different when
  ``K < G'`` (they cycle in smaller blocks). Pairing 0 is the observed one. The unit's masks stay
  those of its own image; only the labels under them are the partner's, read at the nearest
  pixel (``floor((y + 1/2) * h' / h)`` in exact integers, centres aligned) when the partner's
  label size differs, so every image has ``K`` partners whatever the sizes. The pairing depends
  only on the number of images, the seed, ``G`` and ``K``: not on batch size, feed order,
  workers or device. Each pairing is counted with the tally's rules (``truth`` is unchanged:
  every image's labels are used once per shift); pairing 0 equals the tally cell for cell.
- **Test.** The unit's statistic is its score, the largest IoU over all labels; a shift's null
  statistic is the largest null IoU over all labels, so that the choice of the best label among
  many is repeated on the null (testing only the chosen label against its own null gave p <= 0.05
  for 13% of units independent of the labels, 3,200 units in 400 runs). Under the null the observed
  score and the ``K`` null scores are equally distributed and, by the symmetry of the shifts,
  about equally correlated, so ``t = (score - mean) / (sd * sqrt(1 + 1/K))`` follows Student's t
  with ``K - 1`` degrees of freedom for normal scores (the prediction-interval statistic); the
  p-value is its upper tail and ``z = (score - mean) / sd`` is reported. With ``K = 8`` an
  empirical p-value is never below ``1/9``, and the normal tail of ``z`` ignores the error of an
  ``sd`` estimated from 8 values (p-values too small), hence t. Measured on units independent of
  the labels (3,200 units, 400 runs): p <= 0.05 for 5.1%, p <= 0.01 for 1.0%. The null scores were
  barely skewed there (mean skewness 0.1); a log or square-root scale changed nothing. A null
  with no spread (every shift gives the same score) has no scale: its p-value is the empirical
  ``(1 + #{null >= score}) / (K + 1)``.
- **Interval.** Each unit's candidate labels (its label first, then the next best by IoU, ``m = 3``)
  are also counted image by image (``inter_i``, ``act_i``, ``truth_i``; only entries with
  ``act_i > 0``), which gives a percentile bootstrap interval of their IoU by resampling images
  (Poisson(1) weights, seeded) with no further pass over the data.
- **Multiple testing.** Benjamini-Hochberg over all units of the layer; a unit is a significant
  detector when its IoU exceeds the IoU threshold and its adjusted p-value is at most ``alpha``.

Memory: the per-pairing counts are ``(K + 1) x U x L`` int64 (44 MB for 512 units and Broden's
1,198 labels); the per-image counts take 8 bytes an entry at Broden's scale (uint16 image, cell,
intersection and activation), about ``0.3 x 3 x`` hot unit-image pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import sparse, stats

from concepts.dissect.data import Item
from concepts.dissect.tally import Tally

SHIFTS = 8
BLOCK = 16
#: At most this many chunks of the dataset order (the pairing's unit of distribution, see :func:`chunks`).
CHUNKS = 256
CANDIDATES = 3
BOOTSTRAP = 1000
ALPHA = 0.05
LEVEL = 0.95
_BOOT_CHUNK = 50  # bootstrap samples per matrix product: memory ~ images x 50 float64 whatever B is
#: The columns appended to ``tally_{layer}.csv``, in this order.
COLUMNS = ("p-value", "z", "iou-low", "iou-high", "significant")
#: The per-image counts kept in the matrices file (``sig_`` keys), enough to recompute the intervals.
MATRIX_KEYS = ("sig_candidates", "sig_cell_image", "sig_cell", "sig_inter", "sig_act", "sig_truth_image", "sig_truth_label", "sig_truth", "sig_images")


def block_partners(num_images: int, seed: int, shifts: int = SHIFTS, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The seeded feed order of the images and ``partner[s, i]``, the image whose labels image ``i`` gets at shift ``s + 1``."""
    if num_images < 2:
        raise ValueError("the permutation null needs at least 2 images")
    if shifts < 1 or block < 2:
        raise ValueError("shifts must be at least 1 and the block size at least 2")
    order = feed_order(num_images, seed, block)
    partner = np.empty((shifts, num_images), np.int64)
    for start, size in _chunked_blocks(num_images, block):
        members = order[start : start + size]
        t = np.arange(size)
        for s in range(1, shifts + 1):
            d = 1 + (s - 1) % (size - 1)
            partner[s - 1, members] = members[(t + d) % size]
    return order, partner


def chunks(num_images: int, block: int = BLOCK) -> list[tuple[int, int]]:
    """``(start, size)`` of the fixed chunks of the dataset order that blocks never cross (they depend on the number of images only)."""
    size = block * max(1, -(-num_images // (block * CHUNKS)))
    return _blocks(num_images, size)


def feed_order(num_images: int, seed: int, block: int = BLOCK) -> np.ndarray:
    """The seeded feed order: each chunk's images shuffled in place, chunk after chunk (one generator, in dataset order)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([start + rng.permutation(size) for start, size in chunks(num_images, block)] or [np.zeros(0, np.int64)])


def _chunked_blocks(num_images: int, block: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each block of the feed order: blocks of ``block`` inside each chunk."""
    return [(c0 + b0, size) for c0, csize in chunks(num_images, block) for b0, size in _blocks(csize, block)]


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    """``(start, size)`` of each block of the feed order; a last block of fewer than 2 joins the one before."""
    starts = list(range(0, n, block))
    out = [(s, min(block, n - s)) for s in starts]
    if len(out) > 1 and out[-1][1] < 2:
        s, size = out.pop()
        out[-1] = (out[-1][0], out[-1][1] + size)
    return out


def candidate_labels(iou: np.ndarray, unit_label: np.ndarray, primary: np.ndarray, m: int = CANDIDATES) -> np.ndarray:
    """``U x m``: each unit's label (as the tally names it) then its next best labels by IoU, only labels with IoU > 0 (else -1)."""
    iou = np.where(np.asarray(primary)[None, :] >= 0, np.asarray(iou, np.float64), 0.0)
    units = iou.shape[0]
    out = np.full((units, m), -1, np.int64)
    u = np.arange(units)
    own = np.asarray(unit_label, np.int64)
    first = iou[u, own] > 0
    out[first, 0] = own[first]
    rest = iou.copy()
    rest[u, own] = 0
    # Stable order: ties go to the lower label number, as the tally's argmax does.
    ranked = np.argsort(-rest, axis=1, kind="stable")[:, : m - 1]
    vals = np.take_along_axis(rest, ranked, axis=1)
    nxt = np.where(vals > 0, ranked, -1)
    out[first, 1:] = nxt[first]
    return out


@dataclass
class Counts:
    """What the significance pass counted for one layer: every label's counts under each pairing, and per-image counts of the candidates."""

    candidates: np.ndarray  # U x m label numbers (-1: none); slot 0 is the unit's label
    primary: np.ndarray  # L: each label's primary category (-1: none)
    truth: np.ndarray  # L
    inter: np.ndarray  # (K + 1) x U x L: pairing 0 is the observed one (equal to the tally's), then the K shifts
    act_cat: np.ndarray  # (K + 1) x U x C
    # Per-image counts, only entries with act > 0, sorted by image then cell; every integer array
    # here in the smallest unsigned type that holds it (uint16 at Broden's scale).
    cell_image: np.ndarray  # image index
    cell: np.ndarray  # unit * m + slot
    cell_inter: np.ndarray
    cell_act: np.ndarray
    truth_image: np.ndarray  # per-image truth of the candidate labels (entries > 0): image index
    truth_label: np.ndarray
    truth_count: np.ndarray
    images: int

    def activation(self) -> np.ndarray:
        """``(K + 1) x U x L``: each label's activation count (its primary category's; 0 without one)."""
        prim = np.asarray(self.primary)
        return np.where(prim >= 0, np.take(self.act_cat, prim.clip(0), axis=2), 0)

    def iou(self) -> np.ndarray:
        """``(K + 1) x U x L`` IoU under each pairing, by the tally's formula (0 for labels without a category)."""
        out = _iou(self.inter, self.activation(), self.truth[None, None])
        return np.where(np.asarray(self.primary) >= 0, out, 0.0)

    def matrices(self) -> dict[str, np.ndarray]:
        """The arrays to keep in ``matrices_{layer}.npz`` (:data:`MATRIX_KEYS`): :func:`intervals_from_matrices` reads them back."""
        return {
            "sig_candidates": self.candidates.astype(np.int32),
            "sig_cell_image": self.cell_image,
            "sig_cell": self.cell,
            "sig_inter": self.cell_inter,
            "sig_act": self.cell_act,
            "sig_truth_image": self.truth_image,
            "sig_truth_label": self.truth_label,
            "sig_truth": self.truth_count,
            "sig_images": np.array(self.images),
        }


def _narrow(a: np.ndarray) -> np.ndarray:
    """Non-negative integers in the smallest of uint16, uint32 and int64 that holds them (8 bytes an entry at Broden's scale)."""
    top = int(a.max()) if a.size else 0
    return a.astype(np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.int64)


class Significance:
    """The significance pass of one layer: feed every image once (best in :attr:`order`), then :meth:`finish`.

    Images may come in any order and batches of any size; memory stays small when they come in
    :attr:`order`, since a block is counted and dropped as soon as its last image has arrived.
    """

    def __init__(
        self,
        units: int,
        primary: np.ndarray,
        num_categories: int,
        thresholds: np.ndarray,
        candidates: np.ndarray,
        num_images: int,
        *,
        union: str = "ndlite",
        shifts: int = SHIFTS,
        block: int = BLOCK,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self._tally = Tally(units, primary, num_categories, thresholds, union, device)
        self.device, self.union = self._tally.device, union
        self.units, self.nl, self.nc = units, len(primary), num_categories
        self.shifts, self.block, self.seed, self.num_images = shifts, block, seed, num_images
        cand = np.asarray(candidates, np.int64)
        if cand.ndim != 2 or cand.shape[0] != units or (cand >= self.nl).any():
            raise ValueError(f"candidates must be a {units} x m array of label numbers below {self.nl}")
        prim = np.asarray(primary, np.int64)
        self._primary = prim
        if ((cand >= 0) & (prim[cand.clip(0)] < 0)).any() or (cand == 0).any():
            raise ValueError("a candidate label has no primary category")
        self.m = cand.shape[1]
        self.order, partner = block_partners(num_images, seed, shifts, block)
        dev = self.device
        self._cand_np = cand
        self._cand = torch.as_tensor(cand, device=dev)
        self._valid = self._cand >= 0
        # Slot of each label among a unit's candidates (-1: none): one gather per active pixel and layer.
        slot = torch.full((units, self.nl), -1, dtype=torch.long, device=dev)
        uu, kk = (torch.as_tensor(v, device=dev) for v in np.nonzero(cand >= 0))
        slot[uu, self._cand[uu, kk]] = kk
        self._slot = slot.view(-1)
        self._cat = self._tally._cat.long()  # category per label, "none" as nc
        self._cand_cat = torch.where(self._valid, self._cat[self._cand.clamp(min=0)], self.nc)
        self._units = self._valid.any(1)
        self._is_cand = torch.zeros(self.nl, dtype=torch.bool, device=dev)
        self._is_cand[self._cand[self._valid]] = True
        # Blocks: each image's block and slot, and the partner slots per shift.
        self._block_of = np.empty(num_images, np.int64)
        self._slot_of = np.empty(num_images, np.int64)
        self._sizes: list[int] = []
        self._perm: list[torch.Tensor] = []  # (K + 1) x G' partner slots, row 0 the identity
        for b, (start, size) in enumerate(_chunked_blocks(num_images, block)):
            members = self.order[start : start + size]
            self._block_of[members] = b
            self._slot_of[members] = np.arange(size)
            rows = [np.arange(size)] + [self._slot_of[partner[s, members]] for s in range(shifts)]
            self._perm.append(torch.as_tensor(np.stack(rows), device=dev))
            self._sizes.append(size)
        self._pending: dict[int, dict[int, dict[str, Any]]] = {}
        self._seen = np.zeros(num_images, bool)
        z = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=dev)  # noqa: E731
        # Shift 0 is the observed pairing: its counts equal the tally's (a check of the whole pass).
        self._full_inter, self._full_act = z(shifts + 1, units, self.nl), z(shifts + 1, units, self.nc)
        self._truth = z(self.nl)
        self._cells: list[tuple[np.ndarray, ...]] = []
        self._truths: list[tuple[np.ndarray, ...]] = []
        self._by_pair: bool | None = None  # None: choose per block (tests force each way of counting)

    @property
    def images(self) -> int:
        """How many images have been fed."""
        return int(self._seen.sum())

    def update(self, feats: torch.Tensor, items: Sequence[Item]) -> None:
        """Add one batch: ``feats`` is ``B x U x h x w`` for ``items`` in the same order (as :meth:`Tally.update`)."""
        feats = feats.to(self.device, torch.float32)
        threads = torch.get_num_threads()
        single = self.device.type == "cpu" and threads > 1
        if single:
            torch.set_num_threads(1)  # many small steps: see Tally.update
        try:
            self._update(feats, items)
        finally:
            if single:
                torch.set_num_threads(threads)

    def _update(self, feats: torch.Tensor, items: Sequence[Item]) -> None:
        dev = self.device
        records: list[dict[str, Any]] = []
        for it in items:
            i = int(it.index)
            if not 0 <= i < self.num_images or self._seen[i]:
                raise ValueError(f"image {i} is outside the pass or was fed twice")
            self._seen[i] = True
            n, npix = it.layers.shape[0], it.sh * it.sw
            labels = it.layers.reshape(n, npix).to(dev, torch.long) if n else torch.zeros(0, npix, dtype=torch.long, device=dev)
            scal = torch.tensor(list(it.scalars), dtype=torch.long, device=dev)
            counts = torch.bincount(labels.reshape(-1), minlength=self.nl) if n else torch.zeros(self.nl, dtype=torch.long, device=dev)
            counts[0] = 0
            scal_counts = torch.bincount(scal, minlength=self.nl)
            counts = counts + scal_counts * npix
            self._truth += counts
            keep = (self._is_cand & (counts > 0)).nonzero()[:, 0]
            if len(keep):
                self._truths.append((_narrow(np.full(len(keep), i)), _narrow(keep.cpu().numpy()), _narrow(counts[keep].cpu().numpy())))
            rec = {"index": i, "labels": labels, "scal": scal_counts, "sh": it.sh, "sw": it.sw, "pieces": []}
            records.append(rec)
        groups: dict[tuple[int, int], list[int]] = {}
        for b, it in enumerate(items):
            groups.setdefault((it.sh, it.sw), []).append(b)
        for (sh, sw), members in groups.items():
            for pb, pu, j, pix in self._tally.active(feats[members], sh, sw, self._units):
                self._split(records, members, pb, pu, j, pix)
        for rec in records:
            i = rec["index"]
            b = int(self._block_of[i])
            block = self._pending.setdefault(b, {})
            block[int(self._slot_of[i])] = rec
            if len(block) == self._sizes[b]:
                self._count_block(b, self._pending.pop(b))

    def _split(self, records: list[dict[str, Any]], members: list[int], pb: torch.Tensor, pu: torch.Tensor, j: torch.Tensor, pix: torch.Tensor) -> None:
        """File a chunk's active pixels under their images: per image, its pairs' units and pixel counts and the pixels by pair."""
        j = j.long()
        by_pair = torch.argsort(j, stable=True)
        pix = pix.long().index_select(0, by_pair)
        n = torch.bincount(j, minlength=len(pb))
        # Pairs come sorted by image (row-major nonzero), so each image's pairs and pixels are one run.
        pair_end = torch.searchsorted(pb, torch.arange(1, len(members) + 1, device=pb.device)).tolist()
        pix_end = torch.cumsum(n, 0).tolist()
        p0 = 0
        for local, p1 in enumerate(pair_end):
            if p1 > p0:
                x0 = pix_end[p0 - 1] if p0 else 0
                records[members[local]]["pieces"].append((pu[p0:p1], n[p0:p1], pix[x0 : pix_end[p1 - 1]]))
            p0 = p1

    def _count_block(self, b: int, block: dict[int, dict[str, Any]]) -> None:
        """Count a complete block: the observed pairing, then each shift's."""
        dev, nl, nc, m, U = self.device, self.nl, self.nc, self.m, self.units
        recs = [block[t] for t in range(self._sizes[b])]
        size = len(recs)
        depth = torch.tensor([r["labels"].shape[0] for r in recs], device=dev)
        sh = torch.tensor([r["sh"] for r in recs], device=dev)
        sw = torch.tensor([r["sw"] for r in recs], device=dev)
        npix = sh * sw
        dmax = max(1, int(depth.max()))
        same_size = bool((sh == sh[0]).all() and (sw == sw[0]).all())
        if same_size:
            # One G' x dmax x npix array (absent layers read 0): a partner's labels are one offset away.
            n0 = int(npix[0])
            flat = torch.zeros(size, dmax, n0, dtype=torch.long, device=dev)
            for t, r in enumerate(recs):
                flat[t, : r["labels"].shape[0]] = r["labels"]
            flat = flat.view(-1)
        else:
            # Every slot's label layers in one flat buffer, then a 0 read for layers a slot lacks.
            lens = depth * npix
            offset = torch.cumsum(lens, 0) - lens
            flat = torch.cat([r["labels"].reshape(-1) for r in recs] + [torch.zeros(1, dtype=torch.long, device=dev)])
            sentinel = len(flat) - 1
        layer = torch.arange(dmax, device=dev)[:, None]
        scal = torch.stack([r["scal"] for r in recs])  # G' x L
        has_scal = bool(scal.any())
        if has_scal:
            # Each slot's image-level labels and their counts, padded (label 0, count 0): few per image,
            # so a pair adds them by index rather than through a dense row of every label.
            width = int((scal > 0).sum(1).max())
            scal_cnt, scal_lab = scal.topk(width, dim=1)
        scal_cat = (scal > 0).float() @ self._tally._label_cat > 0  # G' x (C + 1): categories of the image-level labels
        if self.union == "netdissect":
            present_any = torch.stack([torch.bincount(self._cat.index_select(0, r["labels"].reshape(-1)), minlength=nc + 1) > 0 for r in recs]) | scal_cat
        pair_slot, pair_unit, pair_n, pixels = [], [], [], []
        for t, r in enumerate(recs):
            for pu, n, pix in r["pieces"]:
                pair_slot.append(torch.full_like(pu, t))
                pair_unit.append(pu)
                pair_n.append(n)
                pixels.append(pix)
        if not pair_unit:
            return
        pair_slot, pair_unit, pair_n, pix = (torch.cat(v) for v in (pair_slot, pair_unit, pair_n, pixels))
        P = len(pair_unit)
        pix_pair = torch.repeat_interleave(torch.arange(P, device=dev), pair_n)
        pix_unit = pair_unit.index_select(0, pix_pair)
        cand = self._cand.index_select(0, pair_unit)  # P x m
        valid = self._valid.index_select(0, pair_unit)
        cand_cat = self._cand_cat.index_select(0, pair_unit)
        if not same_size:
            own_sh, own_sw = sh.index_select(0, pair_slot).index_select(0, pix_pair), sw.index_select(0, pair_slot).index_select(0, pix_pair)
            y, x = pix // own_sw, pix % own_sw
        # Few pairs and labels: count per pair and label once, as the tally does.
        by_pair = P * nl <= dmax * len(pix) if self._by_pair is None else self._by_pair
        perms = self._perm[b]
        for s in range(self.shifts + 1):
            ps_pair = perms[s].index_select(0, pair_slot)
            if same_size:
                at = (ps_pair * (dmax * n0)).index_select(0, pix_pair) + pix + layer * n0
            else:
                ps = ps_pair.index_select(0, pix_pair)
                mp = pix
                if s:
                    # The partner's label at the nearest pixel, centres aligned: floor((y + 1/2) * sh' / sh).
                    psh, psw = sh.index_select(0, ps), sw.index_select(0, ps)
                    yp = torch.minimum((2 * y + 1) * psh // (2 * own_sh), psh - 1)
                    xp = torch.minimum((2 * x + 1) * psw // (2 * own_sw), psw - 1)
                    mp = yp * psw + xp
                base, pdepth, pnpix = offset.index_select(0, ps), depth.index_select(0, ps), npix.index_select(0, ps)
                at = torch.where(layer < pdepth, base + layer * pnpix + mp, sentinel)
            lab = flat.index_select(0, at.reshape(-1)).view(dmax, -1)  # dmax x pixels
            # Every label's intersection (the whole labelling procedure is repeated on the null).
            if by_pair:
                pair_lab = torch.bincount((pix_pair * nl + lab).reshape(-1), minlength=P * nl).view(P, nl)
                full = torch.zeros(U, nl, dtype=torch.long, device=dev).index_add_(0, pair_unit, pair_lab)
                under = (pair_lab > 0).float() @ self._tally._label_cat > 0
            else:
                full = torch.bincount((pix_unit * nl + lab).reshape(-1), minlength=U * nl).view(U, nl)
                if self.union == "ndlite":
                    cats = self._cat.index_select(0, lab.reshape(-1)).view(dmax, -1)
                    under = torch.bincount((pix_pair * (nc + 1) + cats).reshape(-1), minlength=P * (nc + 1)).view(P, nc + 1) > 0
            if has_scal:
                keys = pair_unit[:, None] * nl + scal_lab.index_select(0, ps_pair)
                full.view(-1).index_add_(0, keys.view(-1), (pair_n[:, None] * scal_cnt.index_select(0, ps_pair)).view(-1))
            if self.union == "ndlite":
                present = (under | scal_cat.index_select(0, ps_pair))[:, :nc]
            elif self.union == "netdissect":
                present = present_any.index_select(0, ps_pair)[:, :nc]
            else:
                present = torch.ones(P, nc, dtype=torch.bool, device=dev)
            self._full_inter[s] += full
            self._full_act[s].index_add_(0, pair_unit, pair_n[:, None] * present)
            if s == 0:
                # The observed counts of each pair's candidates, kept per image for the bootstrap.
                if by_pair:
                    inter = pair_lab.gather(1, cand.clamp(min=0)) * valid
                else:
                    k = self._slot.index_select(0, (pix_unit * nl + lab).reshape(-1)).view(dmax, -1)
                    inter = torch.bincount((pix_pair * m + k)[k >= 0], minlength=P * m).view(P, m)
                inter = inter + pair_n[:, None] * scal[ps_pair[:, None], cand.clamp(min=0)] * valid
                act = pair_n[:, None] * (present.gather(1, cand_cat.clamp(max=nc - 1)) & valid)
                cell = (pair_unit[:, None] * m + torch.arange(m, device=dev)).reshape(-1)
                keep = (act.reshape(-1) > 0).nonzero()[:, 0]
                image = torch.tensor([r["index"] for r in recs], device=dev).index_select(0, pair_slot)
                self._cells.append(tuple(_narrow(v.index_select(0, keep).cpu().numpy()) for v in (image.repeat_interleave(m), cell, inter.reshape(-1), act.reshape(-1))))

    def finish(self, dist: Any = None) -> Counts:
        """The counts, once every image has been fed (with ``dist``, a :class:`~concepts.dissect.distributed.Dist`: by some rank).

        Each rank feeds whole chunks (its blocks complete on it), then the ranks' counts are summed
        and their per-image counts joined, so every rank holds one process's counts.
        """
        seen = self.images
        if dist is not None and dist.world > 1:
            seen = int(dist.sum_(torch.tensor([seen], dtype=torch.long))[0])
        if self._pending or seen != self.num_images or (dist is None and not self._seen.all()):
            raise ValueError(f"the significance pass saw {seen} of {self.num_images} images")
        def cat(parts: list[tuple[np.ndarray, ...]], n: int) -> list[np.ndarray]:
            out = [np.concatenate([p[c] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64) for c in range(n)]
            return [dist.concat(v) for v in out] if dist is not None and dist.world > 1 else out

        ci, cc, cin, cact = cat(self._cells, 4)
        ti, tl, tc = cat(self._truths, 3)
        if dist is not None and dist.world > 1:
            for t in (self._full_inter, self._full_act, self._truth):
                dist.sum_(t)
        # Images in order, then cells: a deterministic layout whatever the feed order.
        o = np.lexsort((cc.astype(np.int64), ci.astype(np.int64)))
        t = np.lexsort((tl.astype(np.int64), ti.astype(np.int64)))
        inter = self._full_inter.cpu().numpy()
        inter[:, :, 0] = 0  # label 0 is never a concept
        return Counts(
            candidates=self._cand_np,
            primary=self._primary,
            truth=self._truth.cpu().numpy(),
            inter=inter,
            act_cat=self._full_act.cpu().numpy(),
            cell_image=_narrow(ci[o]),
            cell=_narrow(cc[o]),
            cell_inter=_narrow(cin[o]),
            cell_act=_narrow(cact[o]),
            truth_image=_narrow(ti[t]),
            truth_label=_narrow(tl[t]),
            truth_count=_narrow(tc[t]),
            images=self.num_images,
        )


def _iou(inter: np.ndarray, act: np.ndarray, truth: np.ndarray) -> np.ndarray:
    inter, act, truth = (np.asarray(v, np.float64) for v in (inter, act, truth))
    return inter / (act + truth - inter + 1e-10)


def null_test(observed: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``z`` and the one-sided p-value of ``observed`` (any shape) against ``null`` (``K`` x that shape); see the module docstring."""
    null = np.asarray(null, np.float64)
    K = null.shape[0]
    mean = null.mean(0)
    sd = null.std(0, ddof=1)
    diff = observed - mean
    flat = sd <= 1e-12 * np.maximum(np.abs(mean), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(flat, np.sign(diff) * np.inf, diff / np.where(flat, 1.0, sd))
        z = np.where(flat & (diff == 0), 0.0, z)
        p = stats.t.sf(z / np.sqrt(1 + 1 / K), K - 1)
    empirical = (1 + (null >= observed[None]).sum(0)) / (K + 1)
    return z, np.where(flat, empirical, p)


def bootstrap_intervals(
    candidates: np.ndarray, cell_image: np.ndarray, cell: np.ndarray, inter: np.ndarray, act: np.ndarray,
    truth_image: np.ndarray, truth_label: np.ndarray, truth: np.ndarray, images: int,
    samples: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (``U x m`` low and high) of each candidate's IoU, resampling images by Poisson(1) weights."""
    cand = np.asarray(candidates, np.int64)
    U, m = cand.shape
    cells = U * m
    shape = (cells, images)
    cell, cell_image, truth_image, truth_label = (np.asarray(v, np.int64) for v in (cell, cell_image, truth_image, truth_label))
    A_inter = sparse.csr_matrix((np.asarray(inter, np.float64), (cell, cell_image)), shape=shape)
    A_act = sparse.csr_matrix((np.asarray(act, np.float64), (cell, cell_image)), shape=shape)
    nl = int(max(cand.max(initial=0), np.max(truth_label, initial=0))) + 1
    T = sparse.csr_matrix((np.asarray(truth, np.float64), (truth_label, truth_image)), shape=(nl, images))
    # Each cell's truth row: the candidate label's (an empty row for no candidate).
    pick = sparse.csr_matrix((np.ones(int((cand >= 0).sum())), (np.nonzero(cand.reshape(-1) >= 0)[0], cand.reshape(-1)[cand.reshape(-1) >= 0])), shape=(cells, nl))
    A_truth = (pick @ T).tocsr()
    rng = np.random.default_rng(seed)
    boot = np.empty((cells, samples))
    for s in range(0, samples, _BOOT_CHUNK):
        n = min(_BOOT_CHUNK, samples - s)
        w = rng.poisson(1.0, (images, n)).astype(np.float64)
        si, sa, st = A_inter @ w, A_act @ w, A_truth @ w
        boot[:, s : s + n] = si / (sa + st - si + 1e-10)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail], axis=1)
    none = cand.reshape(-1) < 0
    low[none] = high[none] = np.nan
    return low.reshape(U, m), high.reshape(U, m)


def intervals_from_matrices(matrices: Mapping[str, np.ndarray], samples: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Recompute the bootstrap intervals (``U x m``) from the ``sig_`` arrays of a matrices file."""
    missing = [k for k in MATRIX_KEYS if k not in matrices]
    if missing:
        raise ValueError(f"the matrices file lacks {', '.join(missing)}: it was written without significance")
    g = {k: np.asarray(matrices[k]) for k in MATRIX_KEYS}
    return bootstrap_intervals(g["sig_candidates"], g["sig_cell_image"], g["sig_cell"], g["sig_inter"], g["sig_act"],
                               g["sig_truth_image"], g["sig_truth_label"], g["sig_truth"], int(g["sig_images"]), samples, seed, level)


@dataclass
class Result:
    """Per unit (0-based arrays; the CSV numbers units from 1) and per candidate slot."""

    iou: np.ndarray  # U: the unit's score (its label's IoU)
    z: np.ndarray  # U (NaN for a unit with score 0)
    p: np.ndarray  # U, before adjustment (1 for a unit with score 0)
    p_adjusted: np.ndarray  # U, Benjamini-Hochberg
    low: np.ndarray  # U: the interval of the label's IoU (NaN without a label)
    high: np.ndarray  # U
    significant: np.ndarray  # U bool
    null_mean: np.ndarray  # U: mean and sd of the K null scores
    null_sd: np.ndarray
    # Per candidate slot (U x m), each label against its own null: no correction for the choice of label.
    cand_iou: np.ndarray = field(repr=False)
    cand_z: np.ndarray = field(repr=False)
    cand_p: np.ndarray = field(repr=False)
    cand_low: np.ndarray = field(repr=False)
    cand_high: np.ndarray = field(repr=False)

    def columns(self) -> dict[int, dict[str, Any]]:
        """Per unit, numbered from 1 as in ``tally_{layer}.csv``: the :data:`COLUMNS` to append to its row (empty where undefined)."""
        out = {}
        for u in range(len(self.p)):
            vals = {"p-value": float(self.p[u]), "z": float(self.z[u]), "iou-low": float(self.low[u]), "iou-high": float(self.high[u])}
            row: dict[str, Any] = {k: ("" if np.isnan(v) else v) for k, v in vals.items()}
            row["significant"] = int(bool(self.significant[u]))
            out[u + 1] = row
        return out

    def matrices(self) -> dict[str, np.ndarray]:
        """The statistics to keep beside :meth:`Counts.matrices` in the matrices file: per unit, then per candidate (``U x m``)."""
        return {"sig_null_mean": self.null_mean, "sig_null_sd": self.null_sd, "sig_p_adjusted": self.p_adjusted,
                "sig_cand_iou": self.cand_iou, "sig_cand_z": self.cand_z, "sig_cand_p": self.cand_p,
                "sig_cand_iou_low": self.cand_low, "sig_cand_iou_high": self.cand_high}


def evaluate(counts: Counts, iou_threshold: float, alpha: float = ALPHA, samples: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> Result:
    """Null test, bootstrap intervals and Benjamini-Hochberg for one layer's counts.

    The unit's statistic is its score, the largest IoU over all labels, and each shift's null
    statistic is the largest null IoU over all labels: the choice of the best label is repeated
    on the null, so that choosing it among many labels does not pass for significance.
    """
    cand = np.asarray(counts.candidates)
    valid = cand >= 0
    U = cand.shape[0]
    iou_all = counts.iou()  # (K + 1) x U x L
    score = iou_all.max(axis=2)  # (K + 1) x U
    z, p = null_test(score[0], score[1:])
    has = score[0] > 0
    z, p = np.where(has, z, np.nan), np.where(has, p, 1.0)
    u = np.arange(U)[:, None]
    cand_all = iou_all[:, u, cand.clip(0)]  # (K + 1) x U x m
    cand_iou = np.where(valid, cand_all[0], np.nan)
    cz, cp = null_test(np.nan_to_num(cand_iou), cand_all[1:])
    cz, cp = np.where(valid, cz, np.nan), np.where(valid, cp, 1.0)
    low, high = bootstrap_intervals(cand, counts.cell_image, counts.cell, counts.cell_inter, counts.cell_act,
                                    counts.truth_image, counts.truth_label, counts.truth_count, counts.images, samples, seed, level)
    adjusted = stats.false_discovery_control(p, method="bh") if U else p
    significant = has & (score[0] > iou_threshold) & (adjusted <= alpha)
    return Result(score[0], z, p, adjusted, low[:, 0], high[:, 0], significant, score[1:].mean(0), score[1:].std(0, ddof=1),
                  cand_iou=cand_iou, cand_z=cz, cand_p=cp, cand_low=low, cand_high=high)


def add_to_summary(summary: dict[str, Any], significant: np.ndarray, unit_label: np.ndarray, best: np.ndarray, categories: Sequence[str]) -> dict[str, Any]:
    """Add ``significant_detectors`` and ``significant_unique_concepts`` to a layer's summary (as ``write_layer`` returns it), overall and per category."""
    sig = np.asarray(significant, bool)
    lab = np.asarray(unit_label)
    summary["significant_detectors"] = int(sig.sum())
    summary["significant_unique_concepts"] = len(set(lab[sig].tolist()))
    for c, cat in enumerate(categories):
        sel = sig & (np.asarray(best) == c)
        entry = summary.setdefault("categories", {}).setdefault(cat, {})
        entry["significant_detectors"] = int(sel.sum())
        entry["significant_unique_concepts"] = len(set(lab[sel].tolist()))
    return summary
