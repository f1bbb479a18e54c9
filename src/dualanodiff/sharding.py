"""Which share of a job this process does: an explicit ``--shard I/N``, the ranks of a launcher, or both.

A shard ``I/N`` owns the items ``i`` with ``i % N == I``. Launchers (``torchrun``, ``accelerate launch``
with several processes, ``mpirun``) say which rank a process is through environment variables, read here
directly rather than through a distributed backend: generation needs no process group, and on a machine
without GPUs Accelerate's own state reports every rank of a ``torchrun`` as a lone process. An explicit
shard (a Slurm array task, say) combines with the launcher's ranks: task ``I/N`` run by ``W`` ranks gives
rank ``r`` the shard ``I + N*r`` of ``N*W``, so the ranks split exactly that task's items.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import InputError

# (rank, world size) variables, in order of preference: torchrun and Accelerate's multi-process launchers
# set RANK / WORLD_SIZE; Open MPI and MPICH / Intel MPI (Accelerate's --mpirun_hostfile) their own.
LAUNCHER_VARIABLES = (
    ("RANK", "WORLD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the items ``i`` with ``i % count == index``. ``Shard(0, 1)`` is everything."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N")

    @classmethod
    def parse(cls, text: str, flag: str = "--shard") -> Shard:
        """``"I/N"`` (0-based I), e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not (int(match[2]) >= 1 and int(match[1]) < int(match[2])):
            raise InputError(f"{flag} {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return cls(int(match[1]), int(match[2]))

    @property
    def alone(self) -> bool:
        return self.count == 1

    def owns(self, item: int) -> bool:
        return item % self.count == self.index

    def split(self, ranks: Shard) -> Shard:
        """This shard's items divided between the ranks of a launcher: rank ``r`` of ``W`` takes every W-th."""
        return Shard(self.index + self.count * ranks.index, self.count * ranks.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def launcher_shard() -> Shard:
    """This process's rank among the processes a launcher started (``Shard(0, 1)`` when run directly)."""
    for rank_var, size_var in LAUNCHER_VARIABLES:
        rank, size = os.environ.get(rank_var), os.environ.get(size_var)
        if rank is not None and size is not None:
            try:
                return Shard(int(rank), int(size))
            except ValueError as err:
                raise InputError(f"launcher variables {rank_var}={rank} {size_var}={size}: {err}") from err
    return Shard()


def process_shard(explicit: Shard | str | None = None, ranks: Shard | None = None) -> Shard:
    """The share of this process: ``explicit`` (``--shard``) split between ``ranks`` (default: the launcher's,
    :func:`launcher_shard`)."""
    if isinstance(explicit, str):
        explicit = Shard.parse(explicit)
    return (explicit or Shard()).split(launcher_shard() if ranks is None else ranks)
