import asyncio
import threading
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.batching import MicroBatcher, QueueFullError


async def hold(event: asyncio.Event) -> None:
    await event.wait()


def test_a_full_queue_refuses_instead_of_growing() -> None:
    release = asyncio.Event()

    def process(key: Hashable, items: list[int]) -> list[int]:
        return items

    async def run() -> None:
        executor = ThreadPoolExecutor(max_workers=1)
        batcher: MicroBatcher[int, int] = MicroBatcher(
            process, max_size=1, max_wait=0.0, executor=executor, max_pending=2
        )
        # Without a running loop task nothing is taken off the queue, so it fills up.
        batcher._task = asyncio.get_running_loop().create_task(hold(release))
        waiting = [asyncio.create_task(batcher.submit("k", i)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="2 requests are already waiting"):
            await batcher.submit("k", 3)
        release.set()
        for task in waiting:
            task.cancel()
        executor.shutdown()

    asyncio.run(run())


def test_a_failing_batch_fails_its_requests_and_the_batcher_lives_on() -> None:
    calls: list[list[int]] = []

    def process(key: Hashable, items: list[int]) -> list[int]:
        calls.append(items)
        if key == "bad":
            raise ValueError("cannot explain this layer")
        return [item * 10 for item in items]

    async def run() -> tuple[BaseException | int, int]:
        executor = ThreadPoolExecutor(max_workers=1)
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait=0.01, executor=executor)
        batcher.start()
        bad, good = await asyncio.gather(
            batcher.submit("bad", 1), batcher.submit("good", 2), return_exceptions=True
        )
        later = await batcher.submit("good", 3)
        await batcher.stop()
        executor.shutdown()
        assert isinstance(good, int)
        return bad, later

    bad, later = asyncio.run(run())
    assert isinstance(bad, ValueError)
    assert later == 30


def test_an_idle_model_takes_a_request_at_once_and_a_busy_one_batches_what_arrives() -> None:
    """With no wait for company, a lone request runs alone, and the requests that arrive while a
    batch runs form the next batch, all together."""
    running = threading.Event()
    release = threading.Event()
    batches: list[list[int]] = []

    def process(key: Hashable, items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            running.set()
            release.wait(5)
        return items

    async def run() -> list[int]:
        executor = ThreadPoolExecutor(max_workers=1)
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait=0.0, executor=executor)
        batcher.start()
        first = asyncio.create_task(batcher.submit("k", 0))
        await asyncio.to_thread(running.wait, 5)
        rest = [asyncio.create_task(batcher.submit("k", i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        release.set()
        results = [await first, *[await task for task in rest]]
        await batcher.stop()
        executor.shutdown()
        return results

    assert asyncio.run(run()) == [0, 1, 2, 3, 4, 5]
    assert batches == [[0], [1, 2, 3, 4, 5]]
