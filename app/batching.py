"""Micro-batching: concurrent requests share one forward pass, off the event loop.

Requests wait at most ``max_wait`` seconds for company, and a batch holds at most ``max_size``
items. Items carry a key; only items with the same key share a batch (an /explain with Grad-CAM and
one with Score-CAM cannot). Batches run on the given executor: with a single worker thread shared by
every batcher of a model, the event loop never waits on the model and the model never runs twice at
once.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
    """Collects submitted items into batches and runs ``process(key, items) -> results`` on them."""

    def __init__(
        self,
        process: Callable[[Hashable, list[Item]], list[Result]],
        *,
        max_size: int,
        max_wait: float,
        executor: ThreadPoolExecutor,
        max_pending: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._process = process
        self.max_size = max_size
        self.max_wait = max_wait
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[Item, Result]] = asyncio.Queue()
        self._executor = executor
        self.max_pending = max_pending
        self._task: asyncio.Task[None] | None = None

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

    async def _collect(self) -> list[_Pending[Item, Result]]:
        first = await self._queue.get()
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
        loop = asyncio.get_running_loop()
        while True:
            pending = await self._collect()
            groups: dict[Hashable, list[_Pending[Item, Result]]] = {}
            for entry in pending:
                groups.setdefault(entry.key, []).append(entry)
            for key, group in groups.items():
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._process, key, [entry.item for entry in group]
                    )
                    if len(results) != len(group):
                        raise RuntimeError(f"a batch of {len(group)} gave {len(results)} results")
                except Exception as error:
                    for entry in group:
                        if not entry.future.done():
                            entry.future.set_exception(error)
                else:
                    for entry, result in zip(group, results, strict=True):
                        if not entry.future.done():
                            entry.future.set_result(result)
                    if self._on_batch is not None:
                        self._on_batch(len(group), time.perf_counter() - started)
            for _ in pending:
                self._queue.task_done()
