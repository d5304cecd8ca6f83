"""Alembic's environment: runs migrations on the engine gradwire hands it (never a config file URL)."""

from __future__ import annotations

from alembic import context

from gradwire.storage.schema import Base

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()
