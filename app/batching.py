"""Micro-batching: concurrent requests share one forward pass, off the event loop.

Requests wait at most ``max_wait`` seconds for company, and a batch holds at most ``max_size``
items. Items carry a key; only items with the same key share a batch (an /explain with Grad-CAM and
one with Score-CAM cannot). A batch runs on a free lane (:mod:`app.lanes`), which every batcher of
the service shares: while every lane is busy the requests wait and the next batch grows, and a lane
never runs two batches at once, so the event loop never waits on the model.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.lanes import InferenceLanes, Lane

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    key: Hashable
    item: Item
    future: asyncio.Future[Result] = field(repr=False)


class QueueFullError(RuntimeError):
    """More requests are waiting than the batcher accepts; the caller should retry later."""


class MicroBatcher(Generic[Item, Result]):
    """Collects submitted items into batches and runs ``process(lane, key, items) -> results`` on them,
    on the lane whose index it is given."""

    def __init__(
        self,
        process: Callable[[int, Hashable, list[Item]], list[Result]],
        *,
        max_size: int,
        max_wait: float,
        lanes: InferenceLanes,
        max_pending: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._process = process
        self.max_size = max_size
        self.max_wait = max_wait
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[Item, Result]] = asyncio.Queue()
        self._lanes = lanes
        self.max_pending = max_pending
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    async def submit(self, key: Hashable, item: Item) -> Result:
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self.max_pending:
            raise QueueFullError(f"{self._queue.qsize()} requests are already waiting; try again shortly")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(key, item, future))
        return await future

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _collect(self, first: _Pending[Item, Result]) -> list[_Pending[Item, Result]]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Take whatever is already waiting, without waiting longer.
                while len(batch) < self.max_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            # The lane is taken before the batch is formed, so requests that arrive while every lane
            # is busy join it; and no lane is held while there is nothing to run.
            lane = await self._lanes.take()
            try:
                pending = await self._collect(first)
            except BaseException:
                self._lanes.give_back(lane)
                raise
            batch = asyncio.get_running_loop().create_task(self._run_batch(lane, pending))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)

    async def _run_batch(self, lane: Lane, pending: list[_Pending[Item, Result]]) -> None:
        groups: dict[Hashable, list[_Pending[Item, Result]]] = {}
        for entry in pending:
            groups.setdefault(entry.key, []).append(entry)
        try:
            for key, group in groups.items():
                await self._run_group(lane, key, group)
        finally:
            self._lanes.give_back(lane)
            for _ in pending:
                self._queue.task_done()

    async def _run_group(self, lane: Lane, key: Hashable, group: list[_Pending[Item, Result]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._lanes.run(lane, self._process, lane.index, key, [e.item for e in group])
            if len(results) != len(group):
                raise RuntimeError(f"a batch of {len(group)} gave {len(results)} results")
        except Exception as error:
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        for entry, result in zip(group, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(len(group), time.perf_counter() - started)
