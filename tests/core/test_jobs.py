import math
import threading
import time
from typing import Any

import pytest
import redis

from core.jobs import (
    LOCK_PREFIX,
    HeartbeatRow,
    HeatmapParams,
    JobNotFoundError,
    JobStore,
    TrainingParams,
)
from tests.core.conftest import HEATMAPS, insert_record, store_record, stored_record, training_params


def test_a_job_survives_a_redis_restart(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    job.epoch, job.state = 3, "running"
    jobs.save(job)
    jobs.redis.flushdb()  # Redis keeps nothing on disk: a restart loses every key
    restored = jobs.get(job.id)
    assert (restored.state, restored.epoch) == ("running", 3)


def test_a_job_is_saved_while_redis_is_down(jobs: JobStore) -> None:
    job = jobs.create(HEATMAPS)
    offline = JobStore(
        redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2),
        jobs.jobs_dir,
        jobs.database.url,
    )
    job.state = "running"
    offline.save(job)  # the database, which every reader uses, is up to date
    assert jobs.get(job.id).state == "running"


def test_an_unreadable_record_is_skipped_not_fatal(jobs: JobStore) -> None:
    good = jobs.create(training_params())
    broken = jobs.create(training_params())
    store_record(jobs, broken.id, "{not json")
    assert [job.id for job in jobs.all()] == [good.id]
    assert [job.id for job in jobs.page("training", limit=10)[0]] == [good.id]
    with pytest.raises(JobNotFoundError, match="unreadable record"):
        jobs.get(broken.id)


def test_fields_from_another_version_are_ignored(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    store_record(jobs, job.id, stored_record(jobs, job.id).replace('"attempts"', '"priority": 5, "attempts"'))
    assert jobs.get(job.id).id == job.id


def test_cancelling(jobs: JobStore) -> None:
    queued = jobs.create(training_params())
    assert jobs.request_cancel(queued.id).state == "cancelled"
    running = jobs.create(training_params())
    running.state = "running"
    jobs.save(running)
    lease = jobs.lease(running.id, 30)
    assert lease.acquire()
    after = jobs.request_cancel(running.id)
    assert (after.state, after.cancel_requested) == ("running", True)
    running.metrics = {"train_loss": 1.0}
    jobs.save(running)  # a worker saving progress cannot undo the request
    assert jobs.get(running.id).cancel_requested
    lease.release()


def test_a_lease_has_one_holder_and_a_heartbeat(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    first, second = jobs.lease(job.id, 1), jobs.lease(job.id, 1)
    assert first.acquire()
    assert not second.acquire()
    time.sleep(2.5)  # past the TTL: only the heartbeat keeps it
    assert jobs.locked(job.id)
    assert not second.acquire()
    first.release()
    assert not jobs.locked(job.id)
    assert second.acquire()
    second.release()


def test_a_lease_taken_by_another_worker_is_lost(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    lease = jobs.lease(job.id, 1)
    assert lease.acquire()
    # Another worker holds the lock for an instant (it refuses the job: this lease's heartbeat is fresh):
    # the lease is not lost for that, and takes its lock back once it is free.
    jobs.redis.set(LOCK_PREFIX + job.id, "someone-else")
    time.sleep(0.5)
    assert not lease.lost.is_set()
    jobs.redis.delete(LOCK_PREFIX + job.id)
    time.sleep(0.5)
    assert jobs.locked(job.id)
    assert lease.holds()
    # Another worker takes the job over (the lock and its own heartbeat, which it writes on every beat
    # as a holder does; a beat of this lease already under way may write over its first): this lease
    # is lost.
    jobs.redis.set(LOCK_PREFIX + job.id, "someone-else")
    heartbeat = HeartbeatRow(jobs.database, job.id)
    deadline = time.monotonic() + 3
    while not lease.lost.is_set() and time.monotonic() < deadline:
        heartbeat.write("someone-else", 30)
        lease.lost.wait(0.1)
    assert lease.lost.is_set()
    assert not lease.holds()
    lease.release()
    assert jobs.redis.get(LOCK_PREFIX + job.id) == b"someone-else"  # not released by the loser
    beat = jobs.heartbeat(job.id)  # nor the new holder's heartbeat
    assert beat is not None
    assert beat.holder == "someone-else"


def test_orphans_are_jobs_nothing_works_on(jobs: JobStore) -> None:
    running_locked = jobs.create(training_params())
    running_locked.state = "running"
    jobs.save(running_locked)
    lease = jobs.lease(running_locked.id, 30)
    assert lease.acquire()
    running_lost = jobs.create(training_params())
    running_lost.state = "running"
    jobs.save(running_lost)
    queued = jobs.create(HEATMAPS)
    jobs.mark_queued(queued)
    done = jobs.create(training_params())
    done.state = "succeeded"
    jobs.save(done)
    assert {job.id for job in jobs.orphans()} == {running_lost.id}

    jobs.redis.flushdb()  # a Redis restart: queues, locks and the instance id are gone
    # The running job's worker still beats: its heartbeat, not the lost lock, says so.
    assert {job.id for job in jobs.orphans()} == {running_lost.id, queued.id}
    jobs.mark_queued(queued)  # resubmitted to the new instance
    assert queued.id not in {job.id for job in jobs.orphans()}
    lease.release()


def test_a_worker_that_stops_beating_leaves_an_orphan(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    job.state = "running"
    jobs.save(job)
    lease = jobs.lease(job.id, 1)
    assert lease.acquire()
    lease._stop.set()  # the worker dies: no more beats, neither to Redis nor to the database
    jobs.redis.flushdb()
    assert jobs.orphans() == []  # its heartbeat is still fresh
    time.sleep(1.2)
    assert [orphan.id for orphan in jobs.orphans()] == [job.id]


def test_a_second_worker_never_holds_a_job_whose_holder_still_beats(jobs: JobStore) -> None:
    """After a Redis restart the lock is gone but the first worker still runs the job: a redelivered
    message must not start a second run before the first takes its lock back."""
    job = jobs.create(training_params())
    first = jobs.lease(job.id, 3)
    assert first.acquire()
    jobs.redis.flushdb()
    second = jobs.lease(job.id, 3)
    assert not second.acquire()
    assert not jobs.locked(job.id)  # the refused lease did not keep the lock either
    time.sleep(1.5)  # the first worker's next beat takes the lock back
    assert jobs.locked(job.id)
    assert not first.lost.is_set()
    first.release()
    assert jobs.heartbeat(job.id) is None
    assert second.acquire()  # released: the next holder is welcome
    second.release()


def test_a_record_from_before_typed_parameters_still_reads(jobs: JobStore) -> None:
    """A record whose kind stood beside untyped parameters, as the service wrote it before."""
    old: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef",
        "kind": "training",
        "state": "succeeded",
        "epoch": 2,
        "epochs": 2,
        "params": {
            "name": "tiny",
            "recipe": "strong",
            "options": {"model": "simple_cnn", "model_kwargs": {"width": 4}, "epochs": 8},
            "data": "/data/photos",
            "source": "data_root:photos",
            "make_default": True,
        },
    }
    insert_record(jobs, old)
    job = jobs.get(old["id"])
    assert isinstance(job.params, TrainingParams)
    assert (job.kind, job.state, job.params.name, job.params.make_default) == (
        "training",
        "succeeded",
        "tiny",
        True,
    )
    config = job.params.config
    assert (config.recipe, config.epochs, config.data) == ("strong", 8, "/data/photos")
    heatmaps = {
        **old,
        "id": "f" * 32,
        "kind": "heatmaps",
        "params": {"method": "layercam", "alpha": 0.4, "colormap": "jet"},
    }
    insert_record(jobs, heatmaps)
    assert jobs.get(heatmaps["id"]).params == HeatmapParams(method="layercam", alpha=0.4, colormap="jet")


def test_a_diverged_runs_nan_metrics_read_back(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    job.metrics = {"train_loss": float("nan"), "train_accuracy": 0.1}
    job.history = [{"epoch": 1, "train_loss": float("inf")}]
    jobs.save(job)
    again = jobs.get(job.id)
    assert math.isnan(again.metrics["train_loss"])
    assert again.history[0]["train_loss"] == float("inf")
    assert [j.id for j in jobs.all()] == [job.id]


def test_a_superseded_lease_leaves_the_new_holders_heartbeat_and_lock(jobs: JobStore) -> None:
    """A worker that stalled past the time to live, and whose job another worker then took: when it
    wakes after a Redis restart it must not take the lock back, nor remove the new holder's heartbeat."""
    job = jobs.create(training_params())
    first = jobs.lease(job.id, 1)
    assert first.acquire()
    first._stop.set()  # the worker stalls: its beats stop
    assert first._heartbeat is not None
    first._heartbeat.join()
    time.sleep(1.2)  # its lock and its heartbeat expire
    second = jobs.lease(job.id, 30)
    assert second.acquire()
    jobs.redis.flushdb()  # Redis restarts: the new holder's lock is gone too
    assert not first.holds()
    first._stop.clear()  # the stalled worker wakes and beats again
    threading.Thread(target=first._beat, daemon=True).start()
    assert first.lost.wait(2)
    assert not jobs.locked(job.id)  # it did not take the lock back
    first.release()
    beat = jobs.heartbeat(job.id)
    assert beat is not None
    assert beat.holder == second.holder
    assert second.holds()
    second.release()
    assert jobs.heartbeat(job.id) is None


def test_a_queued_job_a_worker_took_before_losing_the_database_is_an_orphan(jobs: JobStore) -> None:
    """Its worker took the message, wrote its heartbeat, then lost the database (and the message with
    it) before it could mark the job running: the stale heartbeat says so."""
    job = jobs.create(HEATMAPS)
    jobs.mark_queued(job)
    HeartbeatRow(jobs.database, job.id).write("a-worker-that-is-gone", 0.5)
    assert jobs.orphans() == []  # its heartbeat is fresh: the worker may still mark it running
    time.sleep(0.6)
    assert [orphan.id for orphan in jobs.orphans()] == [job.id]
