import asyncio
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.batching import MicroBatcher, QueueFullError
from app.lanes import InferenceLanes, LanePlan


async def hold(event: asyncio.Event) -> None:
    await event.wait()


def one_lane() -> InferenceLanes:
    return InferenceLanes(LanePlan(lanes=1, threads=1))


def test_a_full_queue_refuses_instead_of_growing() -> None:
    release = asyncio.Event()

    def process(lane: int, key: Hashable, items: list[int]) -> list[int]:
        return items

    async def run() -> None:
        lanes = one_lane()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            process, max_size=1, max_wait=0.0, lanes=lanes, max_pending=2
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
        lanes.shutdown()

    asyncio.run(run())


def test_a_failing_batch_fails_its_requests_and_the_batcher_lives_on() -> None:
    calls: list[list[int]] = []

    def process(lane: int, key: Hashable, items: list[int]) -> list[int]:
        calls.append(items)
        if key == "bad":
            raise ValueError("cannot explain this layer")
        return [item * 10 for item in items]

    async def run() -> tuple[BaseException | int, int]:
        lanes = one_lane()
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait=0.01, lanes=lanes)
        batcher.start()
        bad, good = await asyncio.gather(
            batcher.submit("bad", 1), batcher.submit("good", 2), return_exceptions=True
        )
        later = await batcher.submit("good", 3)
        await batcher.stop()
        assert lanes.busy == 0, "a failed batch gave its lane back"
        lanes.shutdown()
        assert isinstance(good, int)
        return bad, later

    bad, later = asyncio.run(run())
    assert isinstance(bad, ValueError)
    assert later == 30


def test_an_idle_model_takes_a_request_at_once_and_a_busy_one_batches_what_arrives() -> None:
    """With no wait for company, a lone request runs alone, and the requests that arrive while the only
    lane runs a batch form the next batch, all together."""
    running = threading.Event()
    release = threading.Event()
    batches: list[list[int]] = []

    def process(lane: int, key: Hashable, items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            running.set()
            release.wait(5)
        return items

    async def run() -> list[int]:
        lanes = one_lane()
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait=0.0, lanes=lanes)
        batcher.start()
        first = asyncio.create_task(batcher.submit("k", 0))
        await asyncio.to_thread(running.wait, 5)
        rest = [asyncio.create_task(batcher.submit("k", i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        release.set()
        results = [await first, *[await task for task in rest]]
        await batcher.stop()
        lanes.shutdown()
        return results

    assert asyncio.run(run()) == [0, 1, 2, 3, 4, 5]
    assert batches == [[0], [1, 2, 3, 4, 5]]


def test_two_lanes_run_two_batches_at_once_each_on_its_own_thread() -> None:
    """A second batch starts on the free lane while the first still runs; once both lanes are busy,
    what arrives waits and forms one batch."""
    started: list[tuple[int, list[int], str]] = []
    both_running = threading.Barrier(2, timeout=5)
    release = threading.Event()

    def process(lane: int, key: Hashable, items: list[int]) -> list[int]:
        started.append((lane, items, threading.current_thread().name))
        if len(started) <= 2:
            both_running.wait()  # fails (BrokenBarrierError) unless the two batches overlap
            release.wait(5)
        return [item * 10 for item in items]

    async def run() -> list[int]:
        lanes = InferenceLanes(LanePlan(lanes=2, threads=1))
        batcher: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait=0.0, lanes=lanes)
        batcher.start()
        first = asyncio.create_task(batcher.submit("k", 0))
        while not started:
            await asyncio.sleep(0.005)
        second = asyncio.create_task(batcher.submit("k", 1))
        while len(started) < 2:
            await asyncio.sleep(0.005)
        assert lanes.busy == 2
        rest = [asyncio.create_task(batcher.submit("k", i)) for i in range(2, 6)]
        await asyncio.sleep(0.05)
        release.set()
        results = [await first, await second, *[await task for task in rest]]
        await batcher.stop()
        assert lanes.busy == 0
        lanes.shutdown()
        return results

    assert asyncio.run(run()) == [0, 10, 20, 30, 40, 50]
    assert sorted(lane for lane, _, _ in started[:2]) == [0, 1]
    assert started[2][1] == [2, 3, 4, 5], "what waited for a lane ran as one batch"
    threads = {lane: name for lane, _, name in started}
    assert threads[0] != threads[1]
    assert all(name.startswith("inference-") for name in threads.values())


def test_batchers_sharing_one_lane_never_run_at_once() -> None:
    """Classify, explain and fingerprint batchers take lanes from one set: with one lane, the model
    never runs two batches at once, whichever batchers they come from."""
    active = 0
    most = 0
    guard = threading.Lock()

    def process(lane: int, key: Hashable, items: list[int]) -> list[int]:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        threading.Event().wait(0.01)
        with guard:
            active -= 1
        return items

    async def run() -> None:
        lanes = one_lane()
        batchers: list[MicroBatcher[int, int]] = [
            MicroBatcher(process, max_size=2, max_wait=0.0, lanes=lanes) for _ in range(3)
        ]
        for batcher in batchers:
            batcher.start()
        await asyncio.gather(*(batcher.submit("k", i) for i in range(12) for batcher in batchers))
        for batcher in batchers:
            await batcher.stop()
        lanes.shutdown()

    asyncio.run(run())
    assert most == 1


def test_plans_choose_one_lane_per_core_on_a_cpu_and_one_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from app import lanes

    monkeypatch.setattr(lanes, "usable_cores", lambda: 2)
    assert lanes.plan_lanes(torch.device("cpu")) == LanePlan(lanes=2, threads=1)
    assert lanes.plan_lanes(torch.device("cpu"), lanes=1) == LanePlan(lanes=1, threads=2)
    assert lanes.plan_lanes(torch.device("cpu"), threads=2) == LanePlan(lanes=2, threads=2)
    assert lanes.plan_lanes(torch.device("cuda")).lanes == 1
    monkeypatch.setattr(lanes, "usable_cores", lambda: 16)
    assert lanes.plan_lanes(torch.device("cpu")) == LanePlan(lanes=lanes.MAX_AUTO_LANES, threads=4)
    assert LanePlan(2, 1).name == "2 lanes x 1 thread"


def test_a_lane_runs_torch_on_its_own_thread_count() -> None:
    import torch

    async def run() -> int:
        lanes = InferenceLanes(LanePlan(lanes=1, threads=1))
        lane = await lanes.take()
        try:
            return await lanes.run(lane, torch.get_num_threads)
        finally:
            lanes.give_back(lane)
            lanes.shutdown()

    def new_thread_count() -> int:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(torch.get_num_threads).result()

    before, new_before = torch.get_num_threads(), new_thread_count()
    assert asyncio.run(run()) == 1
    assert torch.get_num_threads() == before, "the lane's count stays in the lane's thread"
    assert new_thread_count() == new_before, "threads started after the lanes stop get the old count"


def test_lanes_count_the_cpu_their_batches_take_and_not_the_time_they_wait() -> None:
    def busy(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    async def run() -> float:
        lanes = InferenceLanes(LanePlan(lanes=1, threads=1))
        lane = await lanes.take()
        try:
            await lanes.run(lane, busy, 0.2)
            await lanes.run(lane, time.sleep, 0.3)  # waiting costs no CPU
            return lanes.cpu_seconds
        finally:
            lanes.give_back(lane)
            lanes.shutdown()

    assert 0.2 <= asyncio.run(run()) < 0.3
