"""The workers' tests use the job store of the core's tests."""

from tests.core.conftest import jobs, settings

__all__ = ["jobs", "settings"]
