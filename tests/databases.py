"""Databases for tests: a PostgreSQL database of their own on the local server (created, then dropped),
and SQLite files. The server is this machine's PostgreSQL (``TRASHCAM_TEST_POSTGRES``, default
``postgresql+psycopg://postgres@127.0.0.1:5432``, trust auth), which ``make test`` expects running."""

import contextlib
import os
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from core.database import dispose_database

SERVER = os.environ.get("TRASHCAM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"trashcam_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as error:
        raise RuntimeError(
            f"the tests need PostgreSQL at {SERVER} (TRASHCAM_TEST_POSTGRES): {error}"
        ) from None
    url = f"{SERVER}/{name}"
    try:
        yield url
    finally:
        dispose_database(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
