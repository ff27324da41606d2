"""Every kind of job has one entry that says how it runs: its task, its queue and its workers' pool."""

from app.cli import worker_command
from core.jobs import JOB_KINDS
from core.queue import KINDS_OF_JOBS, create_celery, queue_of
from core.settings import Settings


def test_every_kind_of_job_has_its_task_queue_and_pool(settings: Settings) -> None:
    assert tuple(KINDS_OF_JOBS) == JOB_KINDS
    routes = create_celery(settings).conf.task_routes
    assert {routes[spec.task]["queue"] for spec in KINDS_OF_JOBS.values()} == {
        queue_of(kind, settings) for kind in JOB_KINDS
    }
    assert len({spec.task for spec in KINDS_OF_JOBS.values()}) == len(JOB_KINDS)
    for kind, spec in KINDS_OF_JOBS.items():
        command = worker_command(kind)
        assert command[command.index("-Q") + 1] == queue_of(kind, Settings())
        assert " ".join(spec.pool) in " ".join(command)
