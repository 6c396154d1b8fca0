"""Many processes on one grid: torchrun ranks and job-array shards, by a static partition.

A grid's work units are its rows (one y value of one direction pair of one epoch) and its centre
values (one per epoch). With `--shard I/N` (a job array: SLURM `--array`, Kubernetes indexed jobs)
or under torchrun (RANK / WORLD_SIZE), process I of N computes exactly the units the partition
gives it (`Share.owns_row`, `Share.owns_center`) and nothing else: the rows need no file lock,
so filesystems that refuse `flock` are fine for them. Rows are spread round-robin in the grid's
own order (epoch index, pair, row), so every process gets work from every epoch and the share of
a unit never depends on which epochs a command asked for. Each epoch's centre belongs to one
process, so no chunk is ever written by two processes.

Under torchrun rank 0 prepares the grid (directions, Zarr arrays, grid.json) while the others wait;
an error anywhere in that phase is sent to every rank, which all end with the same one line. A
process that dies loses only the rows it had not finished: the same command, or `--resume` from
one process, computes what is missing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from landscape_cli.errors import LandscapeError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Share:
    """Process `index` of `count` (count 1: the whole grid); `how` is "single", "shard" or "rank"."""

    index: int = 0
    count: int = 1
    how: str = "single"

    @property
    def partial(self) -> bool:
        return self.count > 1

    def owns_row(self, ei: int, p: int, y: int, pairs: int, rows: int) -> bool:
        return ((ei * pairs + p) * rows + y) % self.count == self.index

    def owns_center(self, ei: int) -> bool:
        return ei % self.count == self.index

    def describe(self) -> str:
        if self.how == "rank":
            return f"rank {self.index} of {self.count}"
        if self.how == "shard":
            return f"shard {self.index}/{self.count}"
        return "one process"


def parse_shard(text: str) -> Share:
    """`I/N` -> shard I of N (0 <= I < N)."""
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--shard {text}: give I/N, this process's index I of N shards (e.g. 0/4 to 3/4)") from None
    if count < 1:
        raise UsageError(f"--shard {text}: the number of shards N must be at least 1")
    if not 0 <= index < count:
        raise UsageError(f"--shard {text}: the index I must be 0 to {count - 1} for {count} shards "
                         f"(SLURM: --shard $SLURM_ARRAY_TASK_ID/{count} with --array=0-{count - 1})")
    return Share(index, count, "shard")


@dataclass(frozen=True)
class Ranks:
    """What torchrun tells a worker about itself."""

    rank: int
    world: int
    local_rank: int
    local_world: int


def torchrun_ranks(env: dict[str, str] | None = None) -> Ranks | None:
    """This process's place among torchrun's workers (None when not started by torchrun)."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env or ("TORCHELASTIC_RUN_ID" not in env and "MASTER_ADDR" not in env):
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (as torchrun sets them)") \
            from None
    return Ranks(rank, world, local_rank, local_world)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Session:
    """The processes computing one grid together: one alone, a shard, or torchrun's ranks."""

    def __init__(self, share: Share, ranks: Ranks | None = None) -> None:
        self.share = share
        self.ranks = ranks
        self._group: Any = None

    @property
    def leader(self) -> bool:
        """Whether this process prepares the grid and reports (every process but torchrun's ranks > 0)."""
        return self.ranks is None or self.ranks.rank == 0

    def device(self, device: Any) -> Any:
        """A rank's device: `cuda:LOCAL_RANK` where it would use CUDA (`device`: a torch.device)."""
        if self.ranks is None or device.type != "cuda":
            return device
        import torch

        if torch.cuda.device_count() <= self.ranks.local_rank:
            raise UsageError(f"rank {self.ranks.rank} has local rank {self.ranks.local_rank} but this node has "
                             f"{torch.cuda.device_count()} GPUs: start at most that many processes per node")
        torch.cuda.set_device(self.ranks.local_rank)
        return torch.device("cuda", self.ranks.local_rank)

    def lead(self, prepare: Callable[[], T]) -> T:
        """Run `prepare` on the leader while the other ranks wait, and give every rank what it returned; an
        error there ends every rank with its one line."""
        if self.ranks is None:
            return prepare()
        result: Any = None
        original: BaseException | None = None
        if self.leader:
            try:
                result = prepare()
            except Exception as e:
                original = e
        failure, result = self._broadcast((_portable(original), result if original is None else None))
        if original is not None:
            raise original
        if failure is not None:
            raise failure
        return result  # type: ignore[no-any-return]

    def agree(self, error: BaseException | None) -> None:
        """Every rank's error (or None) is compared: the first rank's error ends them all, with its line."""
        if self.ranks is None:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        errors: list[Any] = [None] * self.ranks.world
        dist.all_gather_object(errors, _portable(error), group=self._group)
        for e in errors:
            if e is not None:
                raise e

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (just [value] for one process)."""
        if self.ranks is None:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.ranks.world
        dist.all_gather_object(values, value, group=self._group)
        return values

    def _broadcast(self, value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]


def _portable(error: BaseException | None) -> BaseException | None:
    """An error that unpickles on another rank (with the same one-line message)."""
    if error is None or isinstance(error, LandscapeError):
        return error
    return RuntimeError(f"rank failed: {type(error).__name__}: {error}")


@contextlib.contextmanager
def session(shard: str | None = None, env: dict[str, str] | None = None) -> Iterator[Session]:
    """The session this process is part of: `--shard I/N`, torchrun's ranks, or one process alone.

    Under torchrun the process group is made here (gloo on CPU, NCCL with it on GPUs; control
    messages always travel by gloo) and torch's threads are set to the cores divided among this
    node's ranks, so that ranks never oversubscribe the CPU.
    """
    ranks = torchrun_ranks(env)
    if shard is not None and ranks is not None:
        raise UsageError("--shard splits a grid among independent jobs; under torchrun the ranks split it: "
                         "give one or the other")
    if ranks is None:
        yield Session(parse_shard(shard) if shard is not None else Share())
        return
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, cores() // max(1, ranks.local_world)))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    s = Session(Share(ranks.rank, ranks.world, "rank"), ranks)
    s._group = dist.new_group(backend="gloo") if torch.cuda.is_available() else None
    try:
        yield s
    finally:
        dist.destroy_process_group()
