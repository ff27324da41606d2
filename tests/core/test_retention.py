import time
from pathlib import Path

import pytest

from core.jobs import JobStore
from core.retention import prune_finished_jobs, prune_job
from tests.core.conftest import training_params

DAY = 86400.0


def job_with_files(jobs: JobStore, state: str, finished_days_ago: float | None, outside: Path) -> str:
    job = jobs.create(training_params())
    job.state = state  # type: ignore[assignment]
    job.finished_at = None if finished_days_ago is None else time.time() - finished_days_ago * DAY
    jobs.save(job)
    folder = jobs.folder(job.id)
    (folder / "run" / "data" / "glass").mkdir(parents=True)
    (folder / "run" / "data" / "glass" / "a.jpg").write_bytes(b"x" * 1000)
    (folder / "run" / "data" / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "upload.zip").write_bytes(b"z" * 500)
    for name in ("best.pt", "final.pt", "resume.pt"):
        (folder / "run" / name).write_bytes(b"w" * 100)
    for name in ("config.json", "history.json", "report.json", "manifest.json"):
        (folder / "run" / name).write_text("{}")
    return job.id


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A data set under the data root that a job linked in: never removed through the link."""
    folder = tmp_path / "data-root" / "site-a"
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(b"keep me")
    return folder


def test_old_finished_jobs_lose_their_bulky_files_and_keep_their_record(
    jobs: JobStore, outside: Path
) -> None:
    old = job_with_files(jobs, "succeeded", 8, outside)
    recent = job_with_files(jobs, "failed", 1, outside)
    running = job_with_files(jobs, "running", None, outside)
    queued = job_with_files(jobs, "queued", None, outside)
    assert prune_finished_jobs(jobs, retention_seconds=7 * DAY) == [old]
    folder = jobs.folder(old)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "run/config.json",
        "run/history.json",
        "run/manifest.json",
        "run/report.json",
    ]
    assert jobs.get(old).pruned_at is not None
    assert (outside / "photo.jpg").read_bytes() == b"keep me"
    for untouched in (recent, running, queued):
        assert (jobs.folder(untouched) / "upload.zip").is_file()
        assert (jobs.folder(untouched) / "run" / "best.pt").is_file()
    # A pruned job is not pruned again.
    assert prune_finished_jobs(jobs, retention_seconds=7 * DAY) == []


def test_a_running_job_is_never_pruned(jobs: JobStore, outside: Path) -> None:
    running = jobs.get(job_with_files(jobs, "running", None, outside))
    with pytest.raises(ValueError, match="only finished jobs"):
        prune_job(jobs, running)
    assert (
        prune_job(jobs, jobs.get(job_with_files(jobs, "succeeded", 0, outside)), only=("run/data",)) == 1000
    )
