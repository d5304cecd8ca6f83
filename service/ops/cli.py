"""The ``gradwire`` command: run the server, upgrade its database, and use it from a shell.

This module builds the whole command and runs the server's commands (:mod:`.operate`,
:mod:`.admin`); the client commands (models, train, predict, history, export, import, datasets,
runs) are the client's, :mod:`gradwire.client.cli`, which says what they take, and run on the
base install, without the server's packages.

    gradwire --version
    gradwire serve [--address 127.0.0.1:50051] [--database-url URL] [--data-dir data]
                   [--tls-cert-file cert.pem --tls-key-file key.pem [--tls-client-ca-file ca.pem]]
    gradwire db upgrade [--database-url URL]
    gradwire keys create --tenant NAME | list | revoke KEY_ID   (see .admin: keys and tenants)
    gradwire tenants list | show NAME | quota NAME [--max-models N ...]

Every setting is a flag of ``serve`` and a ``GRADWIRE_*`` variable; a switch is a flag alone
(``--insecure``, ``--no-auth``) or takes on or off (``--auth off``). Failures and exit codes are
the client commands' (one line on stderr; 1 failed, 2 usage, 130 Ctrl-C, 141 a reader gone).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import Field, fields
from importlib import metadata
from typing import Any

from gradwire.client import cli as client_commands
from gradwire.client.cli import (
    EXIT_BROKEN_PIPE,
    EXIT_CTRL_C,
    EXIT_USAGE,
    CommandError,
    Parser,
    Subparsers,
    one_line,
)

from ..core.settings import PARSERS, Limits, Settings, variable

SETTINGS_NOT_FLAGS = ("address", "database_url", "data_dir", "limits")
"""Settings given their own flags above (with help of their own), or not a value."""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def flag(name: str) -> str:
    """The ``gradwire serve`` flag of a setting (``train_workers``: ``--train-workers``)."""
    return f"--{name.replace('_', '-')}"


def _variable_default(setting: str | Field[Any]) -> str:
    """A setting's variable and default, as ``serve --help`` shows them: read from the dataclass,
    so the help cannot drift from what the server does."""
    field = next(f for f in fields(Settings) if f.name == setting) if isinstance(setting, str) else setting
    default = SHOWN_DEFAULTS.get(field.name, field.default)
    return f"{variable(field.name)}, default {default if default != '' else 'none'}"


SHOWN_DEFAULTS = {
    "database_url": "a SQLite file in the data dir",
    "train_workers": "the CPUs this process may use",
}
"""Defaults the dataclass computes, in words."""


def _database_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help=f"SQLAlchemy URL ({_variable_default('database_url')})")
    parser.add_argument(
        "--data-dir", help=f"folder of the default SQLite database ({_variable_default('data_dir')})"
    )


def _value_flag(parser: argparse.ArgumentParser, setting: Field[Any]) -> None:
    """``--batch-limit N``: a setting that takes a value."""
    parser.add_argument(flag(setting.name), type=PARSERS[str(setting.type)], help=_variable_default(setting))


def _switch_flag(parser: argparse.ArgumentParser, setting: Field[Any]) -> None:
    """A switch: ``--insecure`` alone turns it on, ``--no-insecure`` off, and ``--auth off`` (or
    on, true, false) says which in words, as its variable does."""
    name = flag(setting.name)
    parser.add_argument(
        name, type=PARSERS["bool"], nargs="?", const=True, metavar="on|off", help=_variable_default(setting)
    )
    parser.add_argument(
        f"--no-{name[2:]}",
        dest=setting.name,
        action="store_const",
        const=False,
        help=f"the same as {name} off",
    )


SETTING_FLAGS: dict[str, Callable[[argparse.ArgumentParser, Field[Any]], None]] = {
    "int": _value_flag,
    "float": _value_flag,
    "str": _value_flag,
    "bool": _switch_flag,
}
"""How each kind of setting is given on the command line."""


def _server_parsers(sub: Subparsers) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Every flag but --log-format is also the environment variable named after it; a "
        "flag given wins.",
    )
    serve.add_argument(
        "--address", help=f"host:port to listen on; port 0: any ({_variable_default('address')})"
    )
    _database_flags(serve)
    for setting in (*fields(Settings), *fields(Limits)):  # every setting, each its flag (see docs/service.md)
        if setting.name not in SETTINGS_NOT_FLAGS:
            SETTING_FLAGS[str(setting.type)](serve, setting)
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=os.environ.get("GRADWIRE_LOG_LEVEL", "info"),
        help="GRADWIRE_LOG_LEVEL, default info",
    )
    serve.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="log lines as JSON objects, or as text"
    )

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=("upgrade",))
    _database_flags(db)


def _admin_parsers(sub: Subparsers) -> None:
    """``keys`` and ``tenants`` (:mod:`.admin`); where the database's packages are not installed,
    each takes anything and says what to install."""
    try:
        from .admin import add_parsers
    except ImportError:
        for name in ("keys", "tenants"):
            needs = sub.add_parser(name, help="(needs gradwire[server])", add_help=False)
            needs.add_argument("anything", nargs=argparse.REMAINDER)
        return
    add_parsers(sub, _database_flags)


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, the one source of it)."""
    try:
        return metadata.version("gradwire")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gradwire",
        description="Backpropagation as a training service.",
        epilog="Each command's flags and their defaults: gradwire COMMAND --help (gradwire serve --help).",
    )
    parser.add_argument("--version", action="version", version=f"gradwire {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _server_parsers(sub)
    client_commands.add_parsers(sub)
    _admin_parsers(sub)
    return parser


SERVER_COMMANDS = ("serve", "db", "keys", "tenants")
"""Commands that run the server or work on its database: :mod:`.operate`, which needs the server's
dependencies (``gradwire[server]``); the base install has the client commands only."""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``gradwire`` command; a failure is one line on stderr and an exit code (see above)."""
    try:
        args = build_parser().parse_args(argv)
        status = _operate(args) if args.command in SERVER_COMMANDS else client_commands.run(args)
        sys.stdout.flush()  # here, where a reader that went away is seen, not at exit
    except CommandError as exc:
        print(f"gradwire: {one_line(str(exc))}", file=sys.stderr)
        raise
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:
        return EXIT_CTRL_C
    return status


def _operate(args: argparse.Namespace) -> int:
    try:
        from . import operate
    except ImportError:
        raise CommandError(
            f"gradwire {args.command} needs the server's dependencies: pip install 'gradwire[server]'",
            EXIT_USAGE,
        ) from None
    return operate.run(args)


def _stdout_gone() -> int:
    """The reader of stdout went away (``| head``): stdout becomes /dev/null, so that the flush at
    exit cannot fail again, and the command ends quietly, as SIGPIPE ends other tools."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
