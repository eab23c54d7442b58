"""``torchrun -m concepts dissect`` on 2 CPU processes (gloo): the same files as one process, one-line failures, resume per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from concepts.dissect.distributed import Dist
from concepts.dissect.significance import block_partners, chunks, feed_order
from concepts.dissect.topmaps import merge_topk
from hostile import Outcome, assert_one_error
from synth import toy_dataset

TESTS = Path(__file__).parent
N = 40  # three chunks of the pairing (16, 16, 8): rank 0 takes the first, rank 1 the other two
# red_unit_net: every image's red square is the same size, so top-k values tie and the tie rule matters.
ARGS = ["--model", "synth:red_unit_net", "--layer", "pool", "--layer", "conv", "--normalize", "none",
        "--quantile", "0.1,0.2", "--baseline", "random", "--bootstrap", "50", "--top-k", "3",
        "--batch-size", "6", "--workers", "0"]
#: run.json entries that may differ between the runs compared: timings, the number of ranks, the output path.
VARIES = ("timings", "world_size")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCEPTS_TEST_FAIL")}
    return env | {"CONCEPTS_NO_PROGRESS": "1", "CONCEPTS_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"} | extra


def _run(cmd: list[str], env: dict[str, str] | None = None) -> Outcome:
    done = subprocess.run(cmd, cwd=TESTS, env=env or _env(), capture_output=True, text=True, timeout=120)
    return Outcome(done.returncode, done.stdout, done.stderr)


def _one(ds: Path, out: Path) -> Outcome:
    return _run([sys.executable, "-m", "concepts", "dissect", str(ds), *ARGS, "-o", str(out)])


def _torchrun(ds: Path, out: Path, env: dict[str, str] | None = None, logs: Path | None = None) -> Outcome:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    if logs is not None:
        launch += ["--log-dir", str(logs), "--redirects", "3"]  # each rank's streams in its own files
    return _run([*launch, "-m", "concepts", "dissect", str(ds), *ARGS, "-o", str(out)], env)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != "run.json"}


def _record(out: Path, resumed: bool = False) -> dict:
    record = json.loads((out / "run.json").read_text())
    for key in VARIES + (("resumed", "significance_restarted") if resumed else ()):
        record.pop(key, None)
    record["args"].pop("out")
    return record


def _same(got: Path, want: Path, resumed: bool = False) -> None:
    assert not (got / ".partial").exists()
    a, b = _files(got), _files(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name] == b[name], f"{name} differs from the one-process run"
    assert _record(got, resumed) == _record(want, resumed)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    ds = toy_dataset(root / "ds", n=N)
    out = _one(ds, root / "one")
    assert out.code == 0, out.stderr[-3000:]
    assert json.loads((root / "one" / "run.json").read_text())["world_size"] == 1
    return ds, root / "one"


def test_two_ranks_write_the_files_of_one_process(single, tmp_path):
    ds, one = single
    out = _torchrun(ds, tmp_path / "two")
    assert out.code == 0, out.stderr[-3000:]
    assert out.stdout.count("results in") == 1  # rank 0 alone reports
    _same(tmp_path / "two", one)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    assert not list((tmp_path / "two").glob(".concepts-ranks-check"))


def test_failed_rank_is_one_line_and_the_same_command_resumes(single, tmp_path):
    ds, one = single
    out, logs = tmp_path / "out", tmp_path / "logs"
    failed = _torchrun(ds, out, _env(CONCEPTS_TEST_FAIL_RANK="1", CONCEPTS_TEST_FAIL_STAGE="tally"), logs)
    assert failed.code != 0
    streams = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert set(streams) == {"0", "1"}
    rank1 = Outcome(failed.code, "", streams["1"])
    assert_one_error(rank1, "rank 1:", "stopped at stage tally")
    assert "Traceback" not in streams["0"]  # rank 0 is stopped by torchrun or by the lost collective, in one line
    assert len([line for line in streams["0"].splitlines() if line.startswith(("error:", "terminated"))]) <= 1
    assert (out / ".partial" / "rank-1" / "state.json").is_file()

    # Another number of processes is refused in one line, and the partial work is kept.
    other = _one(ds, out)
    assert_one_error(other, ".partial", "on 2 process(es)", "this run has 1", code=2)
    assert (out / ".partial" / "world.json").is_file()

    resumed = _torchrun(ds, out)
    assert resumed.code == 0, resumed.stderr[-3000:]
    _same(out, one, resumed=True)
    assert json.loads((out / "run.json").read_text())["resumed"]["thresholds"] is True


def test_a_rank_that_dies_stops_the_run_without_hanging(single, tmp_path):
    ds, _ = single
    died = _torchrun(ds, tmp_path / "out", _env(CONCEPTS_TEST_FAIL_RANK="1", CONCEPTS_TEST_FAIL_STAGE="features:exit"), tmp_path / "logs")
    assert died.code != 0  # within the subprocess timeout: no hang
    streams = {p.parent.name: p.read_text() for p in (tmp_path / "logs").rglob("stderr.log")}
    assert all("Traceback" not in s for s in streams.values())


def test_top_k_merge_orders_as_one_process():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, (23, 5)).astype(np.float32)  # many ties
    maps = rng.standard_normal((23, 5, 2, 3)).astype(np.float32)
    index = np.repeat(np.arange(23)[:, None], 5, 1)
    k = 6
    # One process: value descending, ties by image index ascending (the forward pass's stable sort).
    order = torch.sort(torch.from_numpy(values), dim=0, descending=True, stable=True).indices[:k].numpy()
    want = [np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 0) for a in (values, index, maps)]
    for world in (2, 3, 5):
        parts = []
        for r in range(world):
            rows = Dist(rank=r, world=world).shard(23)
            v, i, m = values[rows.start : rows.stop], index[rows.start : rows.stop], maps[rows.start : rows.stop]
            o = torch.sort(torch.from_numpy(v), dim=0, descending=True, stable=True).indices[:k].numpy()
            parts.append(tuple(np.take_along_axis(a, o.reshape(o.shape + (1,) * (a.ndim - 2)), 0) for a in (v, i, m)))
        for got, exp in zip(merge_topk(parts, k), want):
            np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize("n", [17, 40, 4097, 70000])
def test_pairing_blocks_stay_inside_the_chunks_ranks_take(n):
    parts = chunks(n)
    assert parts[0][0] == 0 and sum(size for _, size in parts) == n and len(parts) <= 256
    assert all(size >= 16 for _, size in parts[:-1]) and parts[-1][1] >= 2
    order, partner = block_partners(n, seed=3)
    np.testing.assert_array_equal(order, feed_order(n, 3))
    chunk_of = np.repeat(np.arange(len(parts)), [size for _, size in parts])
    assert (chunk_of[order] == chunk_of).all()  # the feed order keeps every chunk in place
    assert (chunk_of[partner] == chunk_of[None]).all()  # partners never cross a chunk
    for world in sorted({1, 2, 3, 7} & set(range(1, len(parts) + 1))):  # more ranks than chunks is refused
        shards = [Dist(rank=r, world=world).shard_chunks(parts) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        starts = {start for start, _ in parts} | {n}
        assert all(s.start in starts and s.stop in starts for s in shards)
