"""Inference lanes: threads that each run one batch at a time, so that batches run side by side.

On a CPU the service runs one lane per core, each forward pass on one thread, rather than one batch
at a time across every core: a forward pass on several threads waits at OpenMP's barriers, and a core
taken by request handling stalls every thread of its team, while single-threaded lanes start no team
and never wait for each other. A GPU runs one lane: its kernels queue on one device anyway. What it
gains is measured in docs/PERFORMANCE.md, "Inference lanes" (``python -m bench.lane_speed``).
"""

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from models.machine import usable_cores

Result = TypeVar("Result")

#: The most lanes chosen by themselves: each holds a batch's activations, and more than four one-core
#: lanes have not been measured.
MAX_AUTO_LANES = 4


@dataclass(frozen=True)
class LanePlan:
    """How many batches run at once (``lanes``) and on how many torch threads each (``threads``)."""

    lanes: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.lanes} lane{'s' if self.lanes > 1 else ''} x {self.threads} thread" + (
            "s" if self.threads > 1 else ""
        )


def plan_lanes(device: torch.device, *, lanes: int | None = None, threads: int | None = None) -> LanePlan:
    """Lanes and threads per lane for ``device``; None chooses: on a CPU one lane per core (at most
    :data:`MAX_AUTO_LANES`) with the cores shared out among them, on a GPU one lane."""
    cores = usable_cores()
    if lanes is None:
        lanes = 1 if device.type == "cuda" else min(cores, MAX_AUTO_LANES)
    if threads is None:
        threads = max(1, cores // lanes) if device.type == "cpu" else torch.get_num_threads()
    return LanePlan(lanes, threads)


@dataclass
class Lane:
    index: int
    executor: ThreadPoolExecutor
    #: CPU seconds its thread spent running batches (written by that thread alone).
    cpu_seconds: float = field(default=0.0)

    def timed(self, function: Callable[..., Result], *args: object) -> Result:
        """``function(*args)``, on this lane's thread, adding the CPU time it takes to :attr:`cpu_seconds`."""
        started = time.thread_time()
        try:
            return function(*args)
        finally:
            self.cpu_seconds += time.thread_time() - started


class InferenceLanes:
    """A fixed set of lanes, each a thread of its own; a batch takes a free lane and gives it back."""

    def __init__(self, plan: LanePlan) -> None:
        self.plan = plan
        # torch's thread count is per thread for OpenMP: each lane sets its own as it starts. Setting it
        # also sets the count that threads started later begin with, here the lanes' count for the
        # requests' own work too; shutting the lanes down puts back the count from before.
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(plan.threads)
        self._lanes = [
            Lane(
                index,
                ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix=f"inference-{index}",
                    initializer=torch.set_num_threads,
                    initargs=(plan.threads,),
                ),
            )
            for index in range(plan.lanes)
        ]
        self._free: asyncio.Queue[Lane] = asyncio.Queue()
        for lane in self._lanes:
            self._free.put_nowait(lane)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the lanes' own threads spent running batches: stacking and normalising inputs,
        torch's forward passes and scoring. Work on other threads is not counted: a compiled runtime's
        forward passes, and torch's worker threads where a lane has more than one thread."""
        return sum(lane.cpu_seconds for lane in self._lanes)

    @property
    def busy(self) -> int:
        return len(self._lanes) - self._free.qsize()

    async def take(self) -> Lane:
        """A free lane, waiting while every lane runs a batch; give it back with :meth:`give_back`."""
        return await self._free.get()

    def give_back(self, lane: Lane) -> None:
        self._free.put_nowait(lane)

    async def run(self, lane: Lane, function: Callable[..., Result], *args: object) -> Result:
        """``function(*args)`` on ``lane``'s thread, its CPU time counted."""
        return await asyncio.get_running_loop().run_in_executor(lane.executor, lane.timed, function, *args)

    def shutdown(self) -> None:
        for lane in self._lanes:
            lane.executor.shutdown(wait=True)
        torch.set_num_threads(self._threads_before)
