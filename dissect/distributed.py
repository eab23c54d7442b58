"""One dissection over several processes with ``torch.distributed`` (``torchrun``), or one process.

:func:`current` reads the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``...) or one the caller initialised, and returns a :class:`Dist` whose collectives are
no-ops in a single process, so the engine has one code path. Images are split into contiguous,
deterministic shards (rank ``r`` of ``w`` gets ``[r n / w, (r + 1) n / w)``; a dissection shards
whole chunks of the significance pairing, :meth:`Dist.shard_chunks`); every reduction is of
integer counts, extrema or exactly kept values, so the results are those of one process, whatever
the number of ranks. gloo serves CPU runs and NCCL CUDA runs; every collective has a timeout, so a
lost rank ends the run instead of hanging it. :func:`on_main` runs a step on rank 0 alone and
tells every rank how it went; :func:`fail_point` is the test hook that stops one rank at a stage.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from concepts.errors import ConceptsError

#: Seconds a collective may wait for the other ranks (CONCEPTS_DIST_TIMEOUT overrides).
DEFAULT_TIMEOUT_S = 1800


class DistributedError(ConceptsError, RuntimeError):
    """A rank failed or a collective timed out: the run cannot continue."""


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world``; collectives are no-ops when ``world`` is 1."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collective tensors live (CUDA for NCCL)

    @property
    def main(self) -> bool:
        """Whether this rank writes the results."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def shard_chunks(self, chunks: list[tuple[int, int]]) -> range:
        """This rank's contiguous share of whole ``(start, size)`` chunks of the dataset order, as image positions."""
        mine = self.shard(len(chunks))
        if not len(mine):
            return range(0, 0)
        first, last = chunks[mine.start], chunks[mine.stop - 1]
        return range(first[0], last[0] + last[1])

    def _reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        if self.world == 1:
            return t
        buf = t.to(self.device)
        try:
            dist.all_reduce(buf, op=op)
        except RuntimeError as e:
            raise _lost(self.rank, e) from None
        t.copy_(buf.to(t.device))
        return t

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise minimum of ``t`` over the ranks, in place."""
        return self._reduce(t, dist.ReduceOp.MIN)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum of ``t`` over the ranks, in place."""
        return self._reduce(t, dist.ReduceOp.MAX)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small), in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, obj)
        except RuntimeError as e:
            raise _lost(self.rank, e) from None
        return out

    def concat(self, array: np.ndarray) -> np.ndarray:
        """The ranks' arrays joined in rank order (so in dataset order for contiguous shards)."""
        parts = self.gather(np.ascontiguousarray(array))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            try:
                dist.barrier()
            except RuntimeError as e:
                raise _lost(self.rank, e) from None

    def agree(self, value: Any, what: str) -> None:
        """Fail on every rank, in one line, when the ranks hold different ``value`` s (arguments, datasets)."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            differ = next(r for r, v in enumerate(values) if v != values[0])
            raise DistributedError(f"rank {differ} has a different {what} than rank 0; every rank must run the same command on the same data")


def on_main(d: Dist, what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 alone; every rank then returns its value, or fails in one line when it failed on rank 0.

    The other ranks wait meanwhile (a gather is their barrier), so nothing they do can race with it.
    """
    value, error, line = None, None, None
    if d.main:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - told to every rank, then raised here as it was
            error, line = e, (str(e).splitlines() or [type(e).__name__])[0]
    if d.world == 1:
        if error is not None:
            raise error
        return value
    shared = d.gather((line, value) if d.main else None)[0]
    if error is not None:
        raise error
    if shared[0] is not None:
        raise DistributedError(f"rank 0 failed while {what}: {shared[0]}")
    return shared[1]


#: The test hook: CONCEPTS_TEST_FAIL_RANK=R and CONCEPTS_TEST_FAIL_STAGE=NAME stop rank R when it reaches stage NAME.
STAGES = ("start", "features", "thresholds", "tally", "significance", "write")


def fail_point(d: Dist, stage: str) -> None:
    """Stop this rank here when the test hook asks for it (an error, or ``NAME:exit``: the process dies at once)."""
    rank = os.environ.get("CONCEPTS_TEST_FAIL_RANK", "").strip()
    name, _, how = os.environ.get("CONCEPTS_TEST_FAIL_STAGE", "").partition(":")
    if rank != str(d.rank) or name != stage:
        return
    if how == "exit":
        os._exit(1)  # a crash: no clean-up, no message, as when the machine or the process dies
    raise DistributedError(f"stopped at stage {stage} by the test hook CONCEPTS_TEST_FAIL_RANK={rank}")


def _lost(rank: int, e: BaseException) -> DistributedError:
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return DistributedError(f"rank {rank}: a collective failed, another rank has stopped or timed out ({first})",
                            hint="the failed rank's own error line says why; rerun the same command to resume")


def timeout() -> datetime.timedelta:
    """The collective timeout (CONCEPTS_DIST_TIMEOUT seconds, default 30 minutes)."""
    text = os.environ.get("CONCEPTS_DIST_TIMEOUT", "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = DEFAULT_TIMEOUT_S
    return datetime.timedelta(seconds=max(1.0, seconds))


def current(device: torch.device | str = "cpu") -> Dist:
    """This process's :class:`Dist`: the initialised process group, the one torchrun describes, or a single process."""
    device = torch.device(device)
    if not dist.is_available():
        return Dist(device=device)
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return Dist(device=device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and device.index is None:
            # One GPU per rank, as torchrun numbers them on each node.
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(backend=backend, timeout=timeout())
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"cannot join the process group ({backend}): {(str(e).splitlines() or [''])[0][:200]}",
                                   hint="start with torchrun; see the README's distributed section") from None
    rank, world = dist.get_rank(), dist.get_world_size()
    coll = device if dist.get_backend() == "nccl" else torch.device("cpu")
    return Dist(rank=rank, world=world, device=coll if world > 1 else device)
