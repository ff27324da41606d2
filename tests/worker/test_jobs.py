import redis

from worker.jobs import KEY_PREFIX, JobStore


def test_a_job_survives_losing_its_redis_copy(jobs: JobStore) -> None:
    job = jobs.create("training", {"name": "x"})
    job.epoch, job.state = 3, "running"
    jobs.save(job)
    jobs.redis.delete(KEY_PREFIX + job.id)  # as after a Redis restart
    restored = jobs.get(job.id)
    assert (restored.state, restored.epoch) == ("running", 3)
    assert jobs.redis.exists(KEY_PREFIX + job.id)  # the read put it back


def test_a_job_is_readable_while_redis_is_down(jobs: JobStore) -> None:
    job = jobs.create("heatmaps", {})
    offline = JobStore(
        redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), jobs.jobs_dir
    )
    assert offline.get(job.id).id == job.id
    job.state = "running"
    offline.save(job)  # the file still records it
    assert jobs.get(job.id).state == "queued"  # Redis holds the older copy until the next save
    assert offline.get(job.id).state == "running"


def test_cancelling(jobs: JobStore) -> None:
    queued = jobs.create("training", {})
    assert jobs.request_cancel(queued.id).state == "cancelled"
    running = jobs.create("training", {})
    running.state = "running"
    jobs.save(running)
    after = jobs.request_cancel(running.id)
    assert (after.state, after.cancel_requested) == ("running", True)
    assert jobs.cancel_requested(running.id)


def test_locks_have_one_owner(jobs: JobStore) -> None:
    job = jobs.create("training", {})
    assert jobs.acquire(job.id, "a", 30)
    assert not jobs.acquire(job.id, "b", 30)
    assert not jobs.renew(job.id, "b", 30)
    assert jobs.renew(job.id, "a", 30)
    jobs.release(job.id, "b")
    assert jobs.locked(job.id)
    jobs.release(job.id, "a")
    assert not jobs.locked(job.id)


def test_orphans_are_jobs_nothing_works_on(jobs: JobStore) -> None:
    running_locked = jobs.create("training", {})
    running_locked.state = "running"
    jobs.save(running_locked)
    jobs.acquire(running_locked.id, "worker", 30)
    running_lost = jobs.create("training", {})
    running_lost.state = "running"
    jobs.save(running_lost)
    queued = jobs.create("heatmaps", {})
    jobs.mark_queued(queued)
    done = jobs.create("training", {})
    done.state = "succeeded"
    jobs.save(done)
    assert {job.id for job in jobs.orphans()} == {running_lost.id}

    jobs.redis.flushdb()  # a Redis restart: queues, locks and the instance id are gone
    assert {job.id for job in jobs.orphans()} == {running_locked.id, running_lost.id, queued.id}
    jobs.mark_queued(queued)  # resubmitted to the new instance
    assert queued.id not in {job.id for job in jobs.orphans()}
