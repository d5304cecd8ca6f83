"""Connecting to the database, transactions, the database's clock, and keeping the schema at the
code's revision.

SQLite (the default, a file) is set up for a threaded server and for several processes on one
file: WAL journal, a busy timeout and foreign keys on every connection, and write transactions
that take the write lock when they begin (``BEGIN IMMEDIATE``), so a transaction that reads then
writes never fails half-way on another writer's commit. PostgreSQL URLs (``postgresql://...``)
use psycopg 3, with a bounded connect timeout; the pool tests a connection only where it sat
idle (:data:`PING_IDLE_SECONDS`), and blob chunks are read in binary (:data:`BINARY_OPTION`).

:class:`Database` hands out sessions: :meth:`Database.write` (one transaction: a use case's unit
of work, committed once), :meth:`Database.read` (reads that must agree with each other: a
transaction that never commits on SQLite, none on PostgreSQL: see
:data:`READS_WITHOUT_TRANSACTION`) and :meth:`Database.single` (no transaction: a read of one
statement, consistent by itself, spared the round trips that open and end one);
:meth:`Database.write_one` runs one statement that writes as a transaction of its own. A
database that cannot be reached raises :class:`Unavailable` from any of them.

Leases are measured on the database's clock (:class:`utcnow`, :func:`seconds_ago`), never on a
server's, so processes on different machines agree on who holds what.

:func:`open_store` upgrades an empty database to the current schema, accepts one at the current
revision, and refuses any other with :class:`SchemaOutOfDate`, naming the command that upgrades
it. Upgrades go through Alembic (:func:`upgrade`), batch mode on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    Engine,
    Executable,
    Row,
    create_engine,
    event,
    exc,
    inspect,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from .errors import SchemaOutOfDate, Unavailable

MIGRATIONS = Path(__file__).parent / "migrations"
UPGRADE_COMMAND = "gradwire db upgrade"
SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 5
POSTGRES_CONNECT = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,  # a peer that vanished without a word (no reset) is found out in seconds,
    "keepalives_idle": 10,  # not after the kernel's quarter of an hour of retransmissions
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: unacknowledged data on a dead link fails the call
}
"""libpq parameters: every wait on the database has a bound."""
WRITE_OPTION = "gradwire_write"
SINGLE_OPTION = "gradwire_single"
BINARY_OPTION = "gradwire_binary"
"""Execution options: a write transaction (SQLite: ``BEGIN IMMEDIATE``); no transaction at all;
results in PostgreSQL's binary format (see :func:`_binary_results`)."""
POSTGRES_ISOLATION = "READ COMMITTED"
"""PostgreSQL's default, set rather than assumed (a server's default may be another): guarded
updates and the janitor's deletes are written for it, and reads without a transaction
(:data:`READS_WITHOUT_TRANSACTION`) lose nothing at it."""
PING = text("SELECT 1")
"""The cheapest question a database answers: is it there."""
PING_IDLE_SECONDS = 1.0
"""A pooled PostgreSQL connection back in the pool this long is tested before it is handed out
again (the server restarted, or the link was cut, meanwhile: the pool then opens another); one
used more recently is trusted, so a use case that takes a connection every few milliseconds
does not pay a round trip for each. A connection lost since its last use fails its statement as
:class:`Unavailable`, as one lost during a transaction does, and the pool opens new ones."""
RETURNED_AT = "gradwire_returned_at"
"""The pool's record of a connection: when it last came back (``time.monotonic``)."""
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now'{})"
"""UTC now with microsecond digits, in the text form SQLAlchemy stores SQLite datetimes in."""


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # gradwire emits BEGIN itself (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA page_size=65536")  # takes effect on a new file only
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-512")  # KiB per connection: blobs pass through, nothing to keep
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Writers take the write lock at BEGIN; readers take none until they read; a single
    statement needs no BEGIN (the connection is in autocommit: see :func:`_sqlite_connect`)."""
    options = connection.get_execution_options()
    if options.get(SINGLE_OPTION, False):
        return
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE_OPTION, False) else "BEGIN")


def _binary_results(
    connection: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    """A statement run with :data:`BINARY_OPTION` gets its rows in PostgreSQL's binary format. In
    the text format, the default, each byte of a ``bytea`` comes as two hex digits the server
    writes and the driver parses: a blob's chunks, the bulk of what is read, arrive several
    times faster in binary (figures in docs/scaling.md). Only for statements whose columns read
    back the same either way (integers and bytes)."""
    if context is not None and context.execution_options.get(BINARY_OPTION, False):
        from psycopg.pq import Format

        cursor.format = Format.BINARY


def _returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[RETURNED_AT] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    """Test a connection idle for :data:`PING_IDLE_SECONDS` before it is handed out; where it fails,
    the pool opens another (on :class:`~sqlalchemy.exc.DisconnectionError`, which
    :class:`~sqlalchemy.exc.InvalidatePoolError` is, as its own pre-ping does)."""
    returned = record.info.get(RETURNED_AT)
    if returned is None or time.monotonic() - returned < PING_IDLE_SECONDS:
        return  # new, or back from a use a moment ago
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as error:
        # the server may have restarted: every connection older than this one is replaced too
        raise exc.InvalidatePoolError(f"a pooled connection failed its test: {error}") from error


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; other URLs pass unchanged."""
    parsed = make_url(
        url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, statement_timeout: float | None = None) -> Engine:
    """An engine for ``url``, with SQLite's pragmas; creates a SQLite file's folder.

    ``statement_timeout`` (seconds) bounds every statement on PostgreSQL, waits for locks
    included: past it the statement fails as :class:`Unavailable`, never waits on. A server sets
    it; ``gradwire db upgrade``, whose migrations may rightly take long, does not."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(
            url,
            isolation_level=POSTGRES_ISOLATION,
            pool_use_lifo=True,
            connect_args=_postgres_connect(parsed, statement_timeout),
        )
        event.listen(engine, "checkin", _returned)
        event.listen(engine, "checkout", partial(_ping_if_idle, engine.dialect))
        event.listen(engine, "before_cursor_execute", _binary_results)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def missing_file(url: str) -> Path | None:
    """The file of a SQLite URL where there is none yet (connecting would create it, empty);
    None where the database is a server's, in memory, or there."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).absolute()
    return None if path.exists() else path


def _postgres_connect(url: URL, statement_timeout: float | None) -> dict[str, Any]:
    """libpq parameters: :data:`POSTGRES_CONNECT`, and the statement timeout as a server option
    beside any the URL gives (``?options=-csearch_path=...``), which it must not replace."""
    if statement_timeout is None:
        return POSTGRES_CONNECT
    given = url.query.get("options", "")
    mine = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
    options = " ".join(filter(None, [given if isinstance(given, str) else " ".join(given), mine]))
    return {**POSTGRES_CONNECT, "options": options}


@contextmanager
def unavailable_on_connection_errors() -> Iterator[None]:
    """Database errors that say "not now" (no connection, locked, shutting down) become
    :class:`Unavailable`; the rest (integrity, programming errors) pass unchanged."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as error:
        raise Unavailable(f"the database is unavailable: {error.orig or error}") from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise Unavailable(f"the database connection was lost: {error.orig or error}") from error
        raise


class Database:
    """The engine and its sessions (see the module's docstring); sessions are never shared
    between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writes = sessionmaker(engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)
        self._single = engine.execution_options(**SINGLE.get(self.dialect, {}))
        self._singles = sessionmaker(self._single, expire_on_commit=False)
        self._reads = (
            self._singles
            if self.dialect in READS_WITHOUT_TRANSACTION
            else sessionmaker(engine, expire_on_commit=False)
        )
        for reads in {self._singles, self._reads}:  # without a transaction, a write would commit
            event.listen(reads, "before_flush", _read_only)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; it never writes (a flush raises). On SQLite a transaction, whose
        statements see one snapshot; on PostgreSQL none, each statement seeing its own (see
        :data:`READS_WITHOUT_TRANSACTION`): reads that must agree with each other are written to
        allow for what changed between them."""
        with unavailable_on_connection_errors(), self._reads() as session:
            yield session

    @contextmanager
    def single(self) -> Iterator[Session]:
        """A session for a read of one statement, outside any transaction: no BEGIN before it,
        no ROLLBACK after (PostgreSQL in autocommit; SQLite's connections are, but for the BEGIN
        :func:`_sqlite_begin` leaves out here). One statement sees one consistent state by
        itself; reads that must agree with each other take :meth:`read` (a few whose order alone
        matters may share one: see ``RunStore.watched``)."""
        with unavailable_on_connection_errors(), self._singles() as session:
            yield session

    def scalar(self, statement: Executable, **params: Any) -> Any:
        """The first value of one read, for hot paths (Predict asks one on every call): a
        connection without a session or a transaction, the statement compiled once (SQLAlchemy's
        cache), and seen by its events like every other."""
        with unavailable_on_connection_errors(), self._single.connect() as connection:
            return connection.execute(statement, params).scalar()

    def ping(self) -> None:
        """Raises :class:`Unavailable` unless the database answers :data:`PING` now; waits no
        longer than a connection's bounds (:data:`POSTGRES_CONNECT`). On SQLite, a file in this
        process, it fails only if a connection to the file cannot be opened."""
        self.scalar(PING)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with unavailable_on_connection_errors(), self._writes.begin() as session:
            yield session

    def write_one(self, statement: Executable, **params: Any) -> Row[Any] | None:
        """The first row of one statement that writes, run as a transaction of its own, which
        one statement is by itself: no BEGIN and no COMMIT to wait for. (On SQLite a statement
        that writes takes the write lock as it starts, as ``BEGIN IMMEDIATE`` does.)"""
        with unavailable_on_connection_errors(), self._single.connect() as connection:
            return connection.execute(statement, params).first()


READS_WITHOUT_TRANSACTION = ("postgresql",)
"""Where :meth:`Database.read` opens no transaction. PostgreSQL at READ COMMITTED (the level
:func:`make_engine` sets) gives each statement of a transaction a snapshot of its own, and reads
take no locks: a read transaction would buy nothing for its BEGIN and ROLLBACK, two round trips,
and each ROLLBACK also empties the driver's cache of prepared statements."""


def _read_only(session: Session, _context: Any, _instances: Any) -> None:
    raise RuntimeError("a read session never writes: use Database.write")


SINGLE: dict[str, dict[str, Any]] = {
    "postgresql": {"isolation_level": "AUTOCOMMIT"},
    "sqlite": {SINGLE_OPTION: True},
}
"""How each database reads one statement without a transaction. (SQLite's own AUTOCOMMIT level
would reset its connections on their way back to the pool, which undoes :func:`_sqlite_connect`.)"""


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite's come back naive, in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def maybe_utc(moment: datetime | None) -> datetime | None:
    """:func:`as_utc`, for a time that may be absent: what records hold, read back or built from
    what was just written alike."""
    return None if moment is None else as_utc(moment)


class utcnow(FunctionElement[Any]):  # noqa: N801 (a SQL function, named like one)
    """The database's current UTC time (not the transaction's start)."""

    type = DateTime(timezone=True)
    inherit_cache = True


class seconds_ago(FunctionElement[Any]):  # noqa: N801
    """The database's current UTC time less a number of seconds (a bound parameter)."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(utcnow, "postgresql")
def _pg_now(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "clock_timestamp()"


@compiles(utcnow, "sqlite")
def _sqlite_now(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW.format("")


@compiles(seconds_ago, "postgresql")
def _pg_ago(element: seconds_ago, compiler: SQLCompiler, **kw: Any) -> str:
    return f"clock_timestamp() - make_interval(secs => {compiler.process(element.clauses, **kw)})"


@compiles(seconds_ago, "sqlite")
def _sqlite_ago(element: seconds_ago, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW.format(f", printf('-%f seconds', {compiler.process(element.clauses, **kw)})")


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


def check_schema(engine: Engine, create: bool = True) -> None:
    """Refuse a database at another revision than this code's; upgrade an empty one if ``create``."""
    revision, head = current_revision(engine), head_revision()
    if revision == head:
        return
    if create and revision is None and not inspect(engine).get_table_names():
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {revision or 'none (tables without Alembic)'}, "
        f"this gradwire expects {head}: run `{UPGRADE_COMMAND}` with the same database URL"
    )


def open_database(url: str, statement_timeout: float | None = None, create: bool = True) -> Database:
    """A :class:`Database` on ``url``, its schema checked (and, with ``create``, made if the
    database is empty); on PostgreSQL no statement runs past ``statement_timeout`` seconds."""
    engine = make_engine(url, statement_timeout)
    with unavailable_on_connection_errors():
        check_schema(engine, create)
    return Database(engine)
