"""Distributed pieces on 2 CPU processes (gloo): each rank streams its own images, the results are one process's."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from concepts.dissect.data import Item
from concepts.dissect.distributed import Dist, current
from concepts.dissect.tally import Tally
from concepts.dissect.thresholds import ExactQuantile

PRIMARY = np.array([-1, 0, 0, 1, 1, 1, -1, 2, 2])


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((11, 5, 6, 7)).astype(np.float32)
    x[:, 2] = np.round(x[:, 2] * 2) / 2  # ties
    x[:, 4] = 1.5  # constant
    items = []
    for i in range(len(x)):
        layers = np.stack([rng.choice([0, 1, 2], (24, 28)), rng.choice([0, 3, 4, 5], (24, 28))])
        items.append(Item(i, None, torch.from_numpy(layers.astype(np.int32)), [[7], [], [8, 7]][i % 3], 24, 28))
    return x, items


def _quantiles(x: np.ndarray, d: Dist | None, level: float, rows: range) -> np.ndarray:
    q = ExactQuantile(x.shape[1], level, bins=8, cap=5, dist=d)
    while q.needs_pass():
        for i in range(rows.start, rows.stop, 3):
            q.update(torch.from_numpy(x[i : min(i + 3, rows.stop)]))
        q.end_pass()
    return q.result()


def _tally(x, items, thresholds, d: Dist | None, rows: range) -> dict[str, np.ndarray]:
    t = Tally(x.shape[1], PRIMARY, 3, thresholds, "ndlite")
    for i in range(rows.start, rows.stop, 4):
        j = min(i + 4, rows.stop)
        t.update(torch.from_numpy(x[i:j]), items[i:j])
    t.reduce(d)
    return t.arrays() | {"images": np.array(t.images)}


def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        d = current()
        assert (d.rank, d.world) == (rank, world)
        x, items = _data()
        rows = d.shard(len(x))
        result = {level: _quantiles(x, d, level, rows) for level in (0.995, 0.9, 0.5)}
        result["tally"] = _tally(x, items, result[0.9], d, rows)
        result["concat"] = d.concat(np.arange(rows.start, rows.stop))
        Path(f"{out}.{rank}").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_one_process_results(tmp_path: Path, world: int) -> None:
    mp.spawn(_rank, args=(world, f"file://{tmp_path / 'init'}", str(tmp_path / "out")), nprocs=world, join=True)
    x, items = _data()
    flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).astype(np.float64)
    single = {level: _quantiles(x, None, level, range(len(x))) for level in (0.995, 0.9, 0.5)}
    tally = _tally(x, items, single[0.9], None, range(len(x)))
    for rank in range(world):
        got = pickle.loads((tmp_path / f"out.{rank}").read_bytes())
        for level in (0.995, 0.9, 0.5):
            np.testing.assert_array_equal(got[level], single[level])
            np.testing.assert_array_equal(got[level], np.quantile(flat, level, axis=1))
        for name, want in tally.items():
            np.testing.assert_array_equal(got["tally"][name], want, err_msg=name)
        np.testing.assert_array_equal(got["concat"], np.arange(len(x)))


def test_shards_are_contiguous_and_cover_everything() -> None:
    for n in (0, 1, 7, 100):
        for world in (1, 2, 3, 8):
            shards = [Dist(rank=r, world=world).shard(n) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))


def test_one_process_has_no_group() -> None:
    d = current()
    assert (d.rank, d.world, d.main) == (0, 1, True)
    t = torch.tensor([3, 4])
    assert d.sum_(t) is t and t.tolist() == [3, 4]
