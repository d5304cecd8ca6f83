"""What the benchmark scripts share: writing their results, reading a process's memory, and a
scratch PostgreSQL database."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL_VARIABLE = "GRADWIRE_BENCH_POSTGRES_URL"
POSTGRES_CONNECT_TIMEOUT_S = 5


def arguments(doc: str, output: Path) -> argparse.Namespace:
    """The benchmarks' command line: ``--quick`` and ``--output`` (``output`` by default)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the speed")
    parser.add_argument("--output", type=Path, default=output)
    return parser.parse_args()


def write_results(path: Path, results: dict[str, Any], quick: bool) -> None:
    """Write ``results`` as JSON to ``path``, saying so (and that quick figures mean nothing)."""
    if quick:
        print("quick run: sizes too small for the targets to mean anything")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"written {path}")


# ------------------------------------------------------------------------------------ memory


def status_kib(pid: int, field: str) -> int:
    """A size field of ``/proc/<pid>/status`` (``VmRSS``: resident now, ``VmHWM``: its peak), KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset the process's peak resident size (VmHWM) to its current size; False where the
    kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------ PostgreSQL


class PostgresUnavailable(RuntimeError):
    """No scratch database could be made: the message says why."""


def postgres_admin_url() -> str:
    return os.environ.get(POSTGRES_URL_VARIABLE) or DEFAULT_POSTGRES_URL


@contextmanager
def scratch_postgres(admin_url: str, name: str) -> Iterator[str]:
    """Create the database ``name`` on the server ``admin_url`` reaches; yield its URL; drop it
    (closing whatever still uses it) on the way out. Raises :class:`PostgresUnavailable` before
    yielding when the server cannot be reached or refuses."""
    from sqlalchemy import create_engine, exc, text
    from sqlalchemy.engine import make_url

    try:
        admin = make_url(admin_url)
    except exc.ArgumentError as error:
        raise PostgresUnavailable(f"{POSTGRES_URL_VARIABLE} is not a database URL: {error}") from error
    engine = create_engine(
        admin.set(drivername="postgresql+psycopg"),
        isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE refuse to run inside a transaction
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
    )
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except exc.DBAPIError as error:
        engine.dispose()
        reason = str(error.orig or error).strip().splitlines()[0]
        raise PostgresUnavailable(f"{admin.render_as_string(hide_password=True)}: {reason}") from error
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except exc.DBAPIError as error:
            print(f"could not drop the scratch database {name}; drop it by hand: {error.orig or error}")
        engine.dispose()
