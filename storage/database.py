"""Connecting to the database, and keeping its schema at the code's revision.

SQLite (the default, a file) is set up for a threaded server: WAL journal, a busy timeout and
foreign keys on every connection. PostgreSQL URLs (``postgresql://...``) use psycopg 3.

:func:`open_store` upgrades an empty database to the current schema, accepts one at the current
revision, and refuses any other with :class:`SchemaOutOfDate`, naming the command that upgrades
it. Upgrades go through Alembic (:func:`upgrade`), batch mode on SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

from .errors import SchemaOutOfDate
from .store import Store

MIGRATIONS = Path(__file__).parent / "migrations"
UPGRADE_COMMAND = "gradwire db upgrade"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; other URLs pass unchanged."""
    parsed = make_url(
        url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """An engine for ``url``, with SQLite's pragmas; creates a SQLite file's folder."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config(None)).get_current_head()  # type: ignore[arg-type]
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the head revision (``gradwire db upgrade``)."""
    command.upgrade(_config(engine), "head")


def check_schema(engine: Engine) -> None:
    """Upgrade an empty database; refuse one at another revision than this code's."""
    revision, head = current_revision(engine), head_revision()
    if revision == head:
        return
    if revision is None and not inspect(engine).get_table_names():
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {revision or 'none (tables without Alembic)'}, "
        f"this gradwire expects {head}: run `{UPGRADE_COMMAND}` with the same database URL"
    )


def open_store(url: str) -> Store:
    """A :class:`Store` on ``url``, its schema checked (and created if the database is empty)."""
    engine = make_engine(url)
    check_schema(engine)
    return Store(engine)
