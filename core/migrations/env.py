"""Alembic's environment: migrations run on the connection that ``core.database.upgrade`` opened."""

from alembic import context

from core.database import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through core.database.upgrade (`trashcam db upgrade`)")
# render_as_batch: SQLite alters a table by copying it, which Alembic's batch mode does.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
