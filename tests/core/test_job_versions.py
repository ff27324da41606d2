"""Job records of several versions of the service side by side (a rolling deploy): every record says its
format, an older version neither runs nor rewrites a newer record, and past records stay readable after
today's limits are tightened."""

import json
from pathlib import Path
from typing import Any

import pytest

from core.jobs import JOB_FORMAT, UNVERSIONED_FORMAT, Job, JobStore, NewerRecordError, TrainingParams
from core.recovery import recover_orphans
from core.retention import prune_finished_jobs
from tests.core.conftest import store_record, stored_record, training_params


def stored(jobs: JobStore, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(stored_record(jobs, job_id))
    return data


def rewrite(jobs: JobStore, job_id: str, **changes: Any) -> None:
    """The record as another version of the service would have written it."""
    store_record(jobs, job_id, {**stored(jobs, job_id), **changes}, state=changes.get("state"))


def newer_record(jobs: JobStore, **changes: Any) -> str:
    """A queued training job whose record a newer version wrote: a format ahead of this one, a field and
    a training option that this version does not know."""
    job = jobs.create(training_params())
    record = stored(jobs, job.id)
    record["params"]["config"]["stochastic_depth"] = 0.1
    rewrite(jobs, job.id, format=JOB_FORMAT + 1, priority="high", params=record["params"], **changes)
    return job.id


def test_every_record_says_its_format(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    assert job.format == JOB_FORMAT
    assert stored(jobs, job.id)["format"] == JOB_FORMAT
    assert Job(id="a" * 32, params=training_params()).format == JOB_FORMAT


def test_a_newer_record_this_version_cannot_parse_is_the_newer_versions_not_lost(jobs: JobStore) -> None:
    readable = jobs.create(training_params())
    job_id = newer_record(jobs, state="paused")  # a state this version does not know
    with pytest.raises(NewerRecordError):
        jobs.get(job_id)
    # Listings and recovery go on without it.
    assert [job.id for job in jobs.all()] == [readable.id]
    assert [job.id for job in jobs.page("training", limit=10)[0]] == [readable.id]
    assert recover_orphans(jobs, lambda job: None) == [readable.id]  # never queued: resubmitted


def test_a_record_without_a_format_is_of_the_first_and_saved_in_todays(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    record = stored(jobs, job.id)
    del record["format"]
    store_record(jobs, job.id, record)
    old = jobs.get(job.id)
    assert old.format == UNVERSIONED_FORMAT
    jobs.save(old)
    assert stored(jobs, job.id)["format"] == JOB_FORMAT


def test_a_newer_record_reads_but_is_never_rewritten(jobs: JobStore) -> None:
    job_id = newer_record(jobs)
    before = stored_record(jobs, job_id)
    job = jobs.get(job_id)
    assert (job.format, job.state) == (JOB_FORMAT + 1, "queued")
    with pytest.raises(NewerRecordError, match=f"format {JOB_FORMAT + 1}, newer than this version's"):
        jobs.save(job)
    # A cancel sets its flag, which the newer version's worker heeds, and leaves the record as it was.
    assert jobs.request_cancel(job_id).cancel_requested
    assert stored_record(jobs, job_id) == before


def test_a_record_a_newer_version_rewrote_since_it_was_read_is_not_overwritten(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    read_before = jobs.get(job.id)
    rewrite(jobs, job.id, format=JOB_FORMAT + 1, epoch=7)  # a newer worker saved it meanwhile
    read_before.epoch = 1
    with pytest.raises(NewerRecordError):
        jobs.save(read_before)
    assert stored(jobs, job.id)["epoch"] == 7


def test_an_older_version_neither_recovers_nor_prunes_a_newer_record(jobs: JobStore) -> None:
    # Queued on a Redis instance that is gone: an orphan, for the version that wrote it.
    job_id = newer_record(jobs, queued_on="an earlier redis")
    resubmitted: list[str] = []
    assert recover_orphans(jobs, lambda job: resubmitted.append(job.id)) == []
    assert resubmitted == []
    finished = newer_record(jobs, state="succeeded", finished_at=1.0)
    before = stored_record(jobs, finished)
    assert prune_finished_jobs(jobs, retention_seconds=0) == []
    assert stored_record(jobs, finished) == before
    assert stored(jobs, job_id)["format"] == JOB_FORMAT + 1


def test_a_limit_tightened_since_never_makes_a_past_job_unreadable(jobs: JobStore) -> None:
    job = jobs.create(training_params(epochs=40))
    record = stored(jobs, job.id)
    # Written when epochs went to 5,000 and a job could ask for 128 processes; today's limits are lower.
    record["params"]["config"]["epochs"] = 5000
    record["params"]["processes"] = 128
    rewrite(jobs, job.id, params=record["params"], state="succeeded")
    past = jobs.get(job.id)
    assert isinstance(past.params, TrainingParams)
    assert (past.params.config.epochs, past.params.processes, past.state) == (5000, 128, "succeeded")
    assert past.params.public()["config"]["epochs"] == 5000
    assert [listed.id for listed in jobs.all()] == [job.id]
    # New jobs still meet today's limits.
    with pytest.raises(ValueError, match="epochs"):
        training_params(epochs=5000)


def test_what_is_not_a_job_record_stays_unreadable(jobs: JobStore, tmp_path: Path) -> None:
    job = jobs.create(training_params())
    rewrite(jobs, job.id, params={"kind": "training", "name": "x"})  # no config at all
    assert [listed.id for listed in jobs.all()] == []
