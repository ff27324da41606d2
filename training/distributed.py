"""Training in several processes: the world a process trains in, each rank's share of the batches, and
the launcher that starts the processes with torchrun.

``trashcam-train train --nproc-per-node N`` starts N processes of the same command under
``torch.distributed.run`` (torchrun; its multi-node flags pass through). Each process joins the group
(gloo on CPUs, NCCL on GPUs, a GPU per process), trains its share of every batch, and DDP averages the
gradients, so an epoch with a global batch of B photos takes the optimiser steps that one process
with batch B takes. Rank 0 alone splits the data, reports progress and writes the run's files; every
rank reads the same resume file, so a resumed run goes on where all of them stopped.

Where N processes differ from one (a stated tolerance, not a bug):
- batch norms keep statistics per process (SyncBatchNorm runs on GPUs only; on GPUs it is used);
- the sums of the averaged gradients run in another order (float rounding);
- an epoch's last batch, when it is smaller than the global batch, is split as evenly as the
  processes allow, and dropped when it has fewer photos than processes;
- dropout and batch mixing draw from each process's own generator.
"""

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from models.machine import usable_cores
from training.data import EpochShuffleSampler

#: The flags of ``trashcam-train train/resume`` that say how to start the processes, not what to train.
LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files and reports its progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join_world(device: torch.device) -> World:
    """The process group that torchrun started this process in (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``), joined; a world of one when there is none. On GPUs each process takes its own
    (by local rank) before it joins, so that no collective lands on GPU 0 for every rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    local_rank = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: its own GPU (by local rank) when the run trains on GPUs."""
    if device.type != "cuda" or not world.distributed:
        return device
    return torch.device("cuda", world.local_rank)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def leave_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _exchanged(values: Sequence[float], device: torch.device) -> torch.Tensor:
    # NCCL moves tensors on the GPU only; gloo on the CPU.
    return torch.tensor(list(values), dtype=torch.float64, device=device)


def sum_over_ranks(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """Each value summed over every rank (the values themselves in a world of one)."""
    if not world.distributed:
        return list(values)
    tensor = _exchanged(values, device)
    dist.all_reduce(tensor)
    return [float(value) for value in tensor.tolist()]


def from_writer(values: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """Rank 0's ``values`` on every rank, so that every rank decides as rank 0 does."""
    if not world.distributed:
        return values
    keys = sorted(values)
    tensor = _exchanged([values[key] for key in keys], device)
    dist.broadcast(tensor, src=0)
    return dict(zip(keys, (float(value) for value in tensor.tolist()), strict=True))


def share_buffers(model: nn.Module, world: World) -> None:
    """Rank 0's buffers (batch norms' running statistics) on every rank: each ran its own batches."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` under DDP when the world has several processes (the module itself otherwise). The
    parameters DDP reduces are those that train when it is made: wrap again after freezing some."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_batch_norms(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """Batch norms that average their statistics over the processes, where torch can (GPUs)."""
    if world.distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


class RankShard(EpochShuffleSampler):
    """This rank's share of ``sampler``'s draws: of every global batch of ``batch_size`` draws, those
    at positions ``rank, rank + size, ...``. Every rank gets the same number of batches of
    ``batch_size / size`` draws, so the ranks take their optimiser steps together."""

    def __init__(self, sampler: EpochShuffleSampler, world: World, batch_size: int) -> None:
        super().__init__(len(sampler), seed=sampler.seed)
        self.sampler, self.world, self.batch_size = sampler, world, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def _chunks(self) -> list[int]:
        """The sizes of the global batches that are kept."""
        full, rest = divmod(len(self.sampler), self.batch_size)
        return [self.batch_size] * full + ([rest] if rest >= self.world.size else [])

    def __len__(self) -> int:
        return sum(len(range(self.world.rank, size, self.world.size)) for size in self._chunks())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draws = list(self.sampler)
        start = 0
        for size in self._chunks():
            yield from draws[start : start + size][self.world.rank :: self.world.size]
            start += size


def rank_batch_size(batch_size: int, world: World) -> int:
    """Each rank's share of the global batch; refuses a batch that does not split evenly."""
    if batch_size % world.size:
        raise ValueError(
            f"batch_size {batch_size} does not split over {world.size} processes: "
            f"give a multiple of {world.size}"
        )
    return batch_size // world.size


def without_launch_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` less :data:`LAUNCH_FLAGS` and their values, as each started process runs it."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


@dataclass(frozen=True)
class Launch:
    """How to start the processes of one run with torchrun: ``nproc_per_node`` here, and as many on
    each of ``nnodes`` hosts, which meet at rank 0's ``master_addr:master_port``."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def command(self, argv: Sequence[str]) -> list[str]:
        """The torchrun command that runs ``trashcam-train ARGV`` (less :data:`LAUNCH_FLAGS`)."""
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
            "-m",
            "training.cli",
            *without_launch_flags(argv),
        ]

    def environment(self) -> dict[str, str]:
        """This process's environment for the processes torchrun starts: each computes on its share of
        the usable cores (torchrun would give each one thread), unless ``OMP_NUM_THREADS`` is set."""
        environment = dict(os.environ)
        environment.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // self.nproc_per_node)))
        return environment

    def run(self, argv: Sequence[str]) -> int:
        """Run ``trashcam-train ARGV`` under torchrun; its exit status."""
        return subprocess.run(self.command(argv), env=self.environment(), check=False).returncode


def launched() -> bool:
    """Whether this process was started by torchrun (and so trains as one rank of several)."""
    return "LOCAL_RANK" in os.environ
