"""Names and ids are checked whole: a trailing newline is not part of any valid one."""

from pathlib import Path

import pytest

from core.jobs import JobNotFoundError, JobStore
from models.store import validate_name


@pytest.mark.parametrize("name", ["site-a\n", "site-a\n\n", "\nsite-a"])
def test_a_model_name_with_a_newline_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        validate_name(name)
    assert validate_name("site-a") == "site-a"


def test_a_job_id_with_a_newline_is_not_found(tmp_path: Path) -> None:
    jobs = JobStore.from_url("redis://127.0.0.1:6379/15", tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with pytest.raises(JobNotFoundError):
        jobs.get("0123456789abcdef0123456789abcdef\n")
