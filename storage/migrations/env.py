"""Alembic's environment: runs migrations on the engine gradwire hands it (never a config file URL).

On SQLite, foreign keys are switched off while migrating: batch mode alters a table by copying
it, and dropping the old copy would otherwise cascade deletes into the tables that refer to it.
SQLite ignores that pragma inside a transaction, so it is set on the raw connection first.
"""

from __future__ import annotations

from alembic import context

from gradwire.storage.schema import Base

engine = context.config.attributes["engine"]
sqlite = engine.dialect.name == "sqlite"

with engine.connect() as connection:
    if sqlite:
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        with connection.begin():
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=sqlite,  # SQLite alters tables by copying them
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
