"""The workers' tests use the job store of the core's tests, on the default database (SQLite): the
stores' own tests run on PostgreSQL too."""

import pytest

from tests.core.conftest import jobs, settings

__all__ = ["database_url", "jobs", "settings"]


@pytest.fixture
def database_url() -> None:
    return None
