"""Shared fixtures and data generators for the test suite."""

from __future__ import annotations

import os
import select
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

os.environ["GRADWIRE_HTTP_ADDRESS"] = "127.0.0.1:0"
"""Every ``gradwire serve`` the tests start serves HTTP on a free port, not on the default one:
several run at once."""


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


STRAY_SECONDS = 15.0
"""How long a test's child processes may take to exit once the test and its fixtures are done."""


def live_children() -> dict[int, str]:
    """This process's children that still run (pid: command line), read from /proc (none where
    there is no /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)"
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue  # it ended while being read
    return found


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    """Fails a test that leaves a process running (a server that failed to start and kept its
    workers, a child nobody stopped): a stray would go on using the machine and the databases of
    later tests. The strays are killed, so one leak fails one test."""
    before = set(live_children())
    yield
    deadline = time.monotonic() + STRAY_SECONDS
    strays = {pid: argv for pid, argv in live_children().items() if pid not in before}
    for pid in list(strays):
        if exited_by(pid, deadline):
            del strays[pid]
    if strays:
        pytest.fail(f"the test left processes running (killed now): {strays}")


def exited_by(pid: int, deadline: float) -> bool:
    """Whether process ``pid`` exits before ``deadline`` (time.monotonic()); if not, it is killed."""
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return True  # gone already
    try:
        poller = select.poll()
        poller.register(handle, select.POLLIN)  # readable once the process has exited
        if poller.poll(max(deadline - time.monotonic(), 0.0) * 1000):
            return True
        signal.pidfd_send_signal(handle, signal.SIGKILL)
        return False
    finally:
        os.close(handle)


POSTGRES_URL = os.environ.get("GRADWIRE_TEST_POSTGRES_URL", "")
POSTGRES_SKIP = (
    "PostgreSQL tests need GRADWIRE_TEST_POSTGRES_URL, a database they may create schemas in "
    "(.ci/run creates a fresh one and sets it)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the current schema, holding nothing: a SQLite file, or a fresh schema in the
    PostgreSQL test database. Each is made by what the migrations did once in this session (the
    SQLite file copied, the statements sent to PostgreSQL replayed): running them for each test
    took ~0.15 s of every server's start. :func:`empty_database_url` tests the migrations."""
    if request.param == "sqlite":
        path = tmp_path / "gradwire.db"
        shutil.copyfile(request.getfixturevalue("sqlite_at_head"), path)
        yield f"sqlite:///{path}"
        return
    with postgres_schema(request, request.getfixturevalue("migration_statements")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables): a SQLite file, or a fresh schema in the PostgreSQL test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gradwire.db'}"
        return
    with postgres_schema(request, []) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_at_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file the migrations brought to the current schema, its connections closed (so its
    write-ahead log is folded in)."""
    from gradwire.storage.database import open_database

    path = tmp_path_factory.mktemp("schema") / "gradwire.db"
    open_database(f"sqlite:///{path}").engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    if not POSTGRES_URL:
        pytest.skip(POSTGRES_SKIP)
    from sqlalchemy import create_engine

    from gradwire.storage.database import normalise_url

    admin = create_engine(normalise_url(POSTGRES_URL))
    yield admin
    admin.dispose()


CHANGES = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "COMMENT")
"""The statements that change a database, by their first word (the rest only read)."""


@pytest.fixture(scope="session")
def migration_statements(request: pytest.FixtureRequest) -> list[tuple[str, Any]]:
    """The statements (and their parameters) by which the migrations change an empty PostgreSQL
    schema, recorded once from a real run of them."""
    from sqlalchemy import event

    from gradwire.storage.database import check_schema, make_engine

    recorded: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        assert not many, "a migration sent many rows at once: replay them with executemany"
        if statement.split(None, 1)[0].upper() in CHANGES:
            recorded.append((statement, parameters or None))

    with postgres_schema(request, []) as url:
        engine = make_engine(url)
        event.listen(engine, "before_cursor_execute", record)
        check_schema(engine)
        engine.dispose()
    return recorded


@contextmanager
def postgres_schema(request: pytest.FixtureRequest, statements: list[tuple[str, Any]]) -> Iterator[str]:
    """A fresh schema in the PostgreSQL test database, ``statements`` sent to it; its URL (the
    schema first on the search path). Dropped afterwards."""
    admin: Engine = request.getfixturevalue("postgres_admin")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        connection.exec_driver_sql(f"SET LOCAL search_path TO {schema}")
        for statement, parameters in statements:
            connection.exec_driver_sql(statement, parameters)
    url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


class Outage:
    """A database of the test's own on the test PostgreSQL server, that it can take away by
    PostgreSQL's own means (no new connections, the open ones ended) and give back."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        from gradwire.storage.database import normalise_url

        self.name = f"gradwire_outage_{uuid.uuid4().hex[:12]}"
        self.admin = create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT")
        self._run(f"CREATE DATABASE {self.name}")
        self.url = make_url(normalise_url(admin_url)).set(database=self.name).render_as_string(False)

    def _run(self, *statements: str) -> None:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            for statement in statements:
                connection.execute(text(statement), {"name": self.name})

    def refuse(self) -> None:
        self._run(
            f"ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS false",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name",
        )

    def restore(self) -> None:
        self._run(f"ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS true")

    def drop(self) -> None:
        self.restore()
        self._run(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        self.admin.dispose()


@pytest.fixture
def outage() -> Iterator[Outage]:
    """A PostgreSQL database that the test can take away and give back (skipped without one)."""
    if not POSTGRES_URL:
        pytest.skip(POSTGRES_SKIP)
    made = Outage(POSTGRES_URL)
    try:
        yield made
    finally:
        made.drop()
