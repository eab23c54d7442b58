"""Accumulate truth, intersection and activation counts over a dataset, all units at once.

Per batch: unit-image pairs whose maximum is at or below the threshold are skipped, the rest
are upsampled (bilinear, pixel centres aligned) to the segmentation size and thresholded in
chunks, and intersections are counted with one ``bincount`` over ``unit * L + label`` keys
of the active pixels (all label layers at once, which is the same as one per layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dissect.data import Item

UNIONS = ("ndlite", "netdissect", "global")
_CHUNK = 1 << 22  # upsampled elements per chunk (16 MB): bounds memory whatever the batch size


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
        self.thresholds = torch.as_tensor(np.asarray(thresholds, np.float32), device=self.device)
        self.truth, self.inter, self.act_cat, self.act_units = self._zeros()
        self.images = 0
        self.committing = False

    def _zeros(self) -> list[torch.Tensor]:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.long, device=self.device)  # noqa: E731
        return [z(self.nl), z(self.units * self.nl), z(self.units, self.nc), z(self.units)]

    def _presence(self, keys_rows: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
        """``rows x C`` bool: which categories (by primary) the given labels of each row include."""
        cats = self.primary[labels]
        ok = cats >= 0
        keys = keys_rows[ok] * self.nc + cats[ok]
        return torch.bincount(keys, minlength=rows * self.nc).view(rows, self.nc) > 0

    def update(self, feats: torch.Tensor, items: Sequence[Item]) -> None:
        """Add one batch: ``feats`` is ``B x U x h x w`` for ``items`` in the same order."""
        feats = feats.to(self.device, torch.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for b, it in enumerate(items):
            groups.setdefault((it.sh, it.sw), []).append(b)
        delta = self._zeros()
        for (sh, sw), members in groups.items():
            self._update_group(delta, feats[members], [items[b] for b in members], sh, sw)
        self.committing = True
        for name, d in zip(_FIELDS, delta):
            getattr(self, name).add_(d)
        self.images += len(items)
        self.committing = False

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
        truth, inter, act_cat, act_units = delta
        dev, nl, nc = self.device, self.nl, self.nc
        B, npix = len(items), sh * sw
        depth = max(it.layers.shape[0] for it in items)
        labels = torch.zeros(B, max(depth, 1), npix, dtype=torch.long, device=dev)
        for b, it in enumerate(items):
            if it.layers.shape[0]:
                labels[b, : it.layers.shape[0]] = it.layers.reshape(it.layers.shape[0], -1).to(dev, non_blocking=True)
        flat = labels.view(B, -1)
        counts = torch.bincount(flat.reshape(-1), minlength=nl)
        counts[0] = 0
        truth += counts
        # Image-level labels: a count matrix, since a repeated number counts (and covers) twice.
        scal_b = torch.tensor([b for b, it in enumerate(items) for _ in it.scalars], dtype=torch.long, device=dev)
        scal_l = torch.tensor([n for it in items for n in it.scalars], dtype=torch.long, device=dev)
        has_scalars = len(scal_l) > 0
        if has_scalars:
            truth += torch.bincount(scal_l, minlength=nl) * npix
            img_counts = torch.zeros(B, nl, dtype=torch.long, device=dev)
            img_counts.index_put_((scal_b, scal_l), torch.ones_like(scal_l), accumulate=True)
            scal_cat = self._presence(scal_b, scal_l, B)
        else:
            scal_cat = torch.zeros(B, nc, dtype=torch.bool, device=dev)
        if self.union == "netdissect":
            rows = torch.arange(B, device=dev)[:, None].expand_as(flat)
            img_cat = self._presence(rows.reshape(-1), flat.reshape(-1), B) | scal_cat

        thr = self.thresholds
        # Bilinear upsampling never exceeds the map's maximum: pairs at or below it stay empty.
        hot = (feats.amax(dim=(2, 3)) > thr).nonzero()
        if not len(hot):
            return
        step = max(1, _CHUNK // npix)
        for s in range(0, len(hot), step):
            pb, pu = hot[s : s + step, 0], hot[s : s + step, 1]
            p = len(pb)
            up = F.interpolate(feats[pb, pu][:, None], size=(sh, sw), mode="bilinear", align_corners=False)
            j, pix = (up.view(p, npix) > thr[pu][:, None]).nonzero(as_tuple=True)
            n_act = torch.bincount(j, minlength=p)
            act_units.index_add_(0, pu, n_act)
            lab = labels[pb[j], :, pix]  # active pixels x label layers
            keys = (pu[j][:, None] * nl + lab).reshape(-1)
            inter += torch.bincount(keys, minlength=self.units * nl)
            if has_scalars:
                inter.view(self.units, nl).index_add_(0, pu, n_act[:, None] * img_counts[pb])
            if self.union == "ndlite":
                present = self._presence(j[:, None].expand_as(lab).reshape(-1), lab.reshape(-1), p) | scal_cat[pb]
            elif self.union == "netdissect":
                present = img_cat[pb]
            else:
                present = torch.ones(p, nc, dtype=torch.bool, device=dev)
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
