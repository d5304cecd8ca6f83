"""The commands that run the server or work on its database: ``serve``, ``db upgrade``, and the
operator's ``keys`` and ``tenants`` (:mod:`.admin`).

They need the server's dependencies (``gradwire[server]``: SQLAlchemy, Alembic, the PostgreSQL
driver, ...), so :mod:`.cli` imports this module only when one of them is asked for; the base
install, the SDK and the client commands, runs without it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from gradwire.client.cli import EXIT_FAILED, EXIT_USAGE, CommandError, reason
from gradwire.storage import (
    NotFound,
    SchemaOutOfDate,
    Unavailable,
    make_engine,
    missing_file,
    open_store,
    upgrade,
)

from ..core.errors import StartupError
from ..core.logformat import log_to_stderr
from ..core.settings import Limits, SettingError, Settings, variable
from ..core.tuning import return_freed_memory
from ..transport import tls as listener
from ..transport.server import create_server, operations, stop_server
from .admin import ADMIN_COMMANDS, READ_ONLY
from .cli import LOG_LEVELS, flag

LISTENING = {
    listener.PLAINTEXT: "in plaintext",
    listener.TLS: "over TLS",
    listener.MUTUAL_TLS: "over mutual TLS",
}
"""The startup line's words for what the listener speaks."""


START_FAILURES: dict[type[BaseException], tuple[int, str]] = {
    StartupError: (EXIT_USAGE, "{reason}"),  # its message says why (e.g. the address is taken)
    SchemaOutOfDate: (EXIT_USAGE, "database {database}: {reason}"),  # it names `gradwire db upgrade`
    sa_exc.ArgumentError: (EXIT_USAGE, "database {database}: {reason}"),  # an unknown dialect
    ImportError: (EXIT_USAGE, "database {database}: the URL's driver is not installed: {reason}"),
    Unavailable: (EXIT_FAILED, "database {database}: {reason}"),
    sa_exc.SQLAlchemyError: (EXIT_FAILED, "database {database}: {reason}"),  # e.g. not a database file
    OSError: (EXIT_FAILED, "database {database}: {reason}"),  # e.g. its folder cannot be made
}
"""How each failure to open the database or start the server ends the command: exit code, line.
The most specific class of an exception decides."""


def shown_url(url: str) -> str | None:
    """A database URL as it may be printed or logged: its password hidden; None if it does not
    parse (then nothing of it is shown: it may be all password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        return None


@contextmanager
def _database(url: str) -> Iterator[str]:
    """Yields ``url`` as it may be shown; a failure to open it (or to start on it) in the block
    stops the command in one line naming it, the reason stripped of the password."""
    database = shown_url(url)
    if database is None:
        raise CommandError(
            "the database URL (--database-url, GRADWIRE_DATABASE_URL) does not parse: "
            "expected dialect://user:password@host:port/database",
            EXIT_USAGE,
        )
    password = make_url(url).password
    try:
        yield database
    except tuple(START_FAILURES) as exc:
        status, line = next(START_FAILURES[c] for c in type(exc).__mro__ if c in START_FAILURES)
        why = reason(exc)
        if password:  # drivers do not repeat it, as a rule; this line never shows it, by rule
            why = why.replace(password, "***")
        raise CommandError(line.format(database=database, reason=why), status) from None


def _given_as(name: str, args: argparse.Namespace) -> str:
    """Where a setting's value came from, written as it was given: flag, variable, or default."""
    if getattr(args, name, None) is not None:
        return f"{flag(name)} {getattr(args, name)}"
    if variable(name) in os.environ:
        return f"{variable(name)}={os.environ[variable(name)]!r:.60}"
    return f"{name} (the default; set {flag(name)} or {variable(name)})"


def _settings(args: argparse.Namespace) -> Settings:
    names = [f.name for f in (*fields(Settings), *fields(Limits)) if f.name != "limits"]
    try:
        return Settings.from_env(**{name: getattr(args, name, None) for name in names})
    except SettingError as exc:
        raise CommandError(f"{_given_as(exc.name, args)}: {exc}", EXIT_USAGE) from None


def _log_to_stderr(args: argparse.Namespace) -> None:
    if args.log_level.lower() not in LOG_LEVELS:  # the flag has choices; this is the variable's value
        level = f"GRADWIRE_LOG_LEVEL={args.log_level!r:.40}"
        raise CommandError(f"{level}: must be one of {', '.join(LOG_LEVELS)}", EXIT_USAGE)
    log_to_stderr(args.log_format == "json", args.log_level.upper())


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _log_to_stderr(args)
    return_freed_memory()
    with _database(settings.database_url) as database:
        server, port, app = create_server(settings)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the line: who reads it may signal at once
        signal.signal(sig, lambda *_: stopping.set())
    host = settings.address.rsplit(":", 1)[0]
    spoken = LISTENING[listener.transport(settings)]
    print(f"gradwire listening on {host}:{port} {spoken} (database {database})", flush=True)
    running = operations(server)
    if running is not None and running.http is not None:
        scheme = "https" if settings.tls_cert_file else "http"
        url = f"{scheme}://{running.http.address}"
        print(f"gradwire dashboard on {url} (and the open inference protocol's REST: {url}/v2)", flush=True)
    stopping.wait()
    print("gradwire stopping: runs stop at the end of their epoch and keep their checkpoints", flush=True)
    stop_server(server, app)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _database(settings.database_url) as database:
        upgrade(make_engine(settings.database_url))
    print(f"database {database} is at the current schema")
    return 0


def run_admin(args: argparse.Namespace) -> int:
    """A ``keys`` or ``tenants`` command, on the database the settings name; one that only reads
    says which database it read (on stderr), and creates none."""
    settings = _settings(args)
    read_only = args.admin_command in READ_ONLY
    with _database(settings.database_url) as database:
        if read_only:
            _must_exist(settings.database_url, database)
        store = open_store(settings.database_url, create=not read_only)
    if read_only:
        print(f"database {database}", file=sys.stderr)
    try:
        return ADMIN_COMMANDS[args.admin_command](args, store)
    except NotFound as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    finally:
        store.close()


def _must_exist(url: str, database: str) -> None:
    path = missing_file(url)
    if path is not None:
        raise CommandError(
            f"database {database}: there is no {path} (run the command where the server keeps its data, "
            "or give --database-url or GRADWIRE_DATABASE_URL); nothing was created"
        )


def run(args: argparse.Namespace) -> int:
    """The command ``args`` names: ``serve``, ``db upgrade``, or a ``keys``/``tenants`` action."""
    if getattr(args, "admin_command", None):
        return run_admin(args)
    return cmd_serve(args) if args.command == "serve" else cmd_db_upgrade(args)
