"""The operator's commands on the database itself, no server needed: API keys and tenants.

    gradwire keys create --tenant NAME [--name LABEL]   prints the key, once; makes the tenant if new
    gradwire keys list [--tenant NAME]
    gradwire keys revoke KEY_ID                        every server refuses it within auth_cache_seconds
    gradwire tenants list | show NAME
    gradwire tenants quota NAME [--max-models N] [--max-parameters N] [--max-dataset-bytes N]
                                [--max-active-runs N]

Each reads the database as ``serve`` does (``--database-url``, ``GRADWIRE_DATABASE_URL``, or the
SQLite file in ``--data-dir``). The functions here take the opened :class:`Store`; :mod:`.cli`
opens it, parses the flags and turns their errors into exit codes (a ValueError is a usage error).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

from gradwire.storage import ANY_TENANT, KeyRecord, Quotas, Store, TenantRecord

from ..transport.auth import new_key
from .cli import flag

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""What a tenant may be called: it is an id, and appears in logs and error messages."""
QUOTAS = tuple(f.name for f in fields(Quotas))


def tenant_name(text: str) -> str:
    """``text`` as a tenant name (argparse reports why it is not one as a usage error)."""
    if not TENANT_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r:.70} is not a tenant name: lowercase letters, digits, '-' and '_', up to 64"
        )
    return text


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r:.40} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return value


def _key_line(key: KeyRecord) -> str:
    state = "active" if key.active else f"revoked {key.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
    return "\t".join((key.id, key.tenant, state, f"{key.created_at:%Y-%m-%dT%H:%M:%SZ}", key.name))


def _tenant(record: TenantRecord, usage: dict[str, int] | None = None) -> dict[str, Any]:
    shown: dict[str, Any] = {"tenant": record.id, "quotas": asdict(record.quotas)}
    if usage is not None:
        shown["usage"] = usage
    return shown


def keys_create(args: argparse.Namespace, store: Store) -> int:
    key = new_key()
    store.tenants.add_key(args.tenant, key.id, key.hash, args.name)
    print(key.token)
    print(f"key {key.id} of tenant {args.tenant}: shown this once, keep it secret", file=sys.stderr)
    return 0


def keys_list(args: argparse.Namespace, store: Store) -> int:
    keys = store.tenants.keys(args.tenant or ANY_TENANT)
    for key in keys:
        print(_key_line(key))
    if not keys:
        print("no keys", file=sys.stderr)
    return 0


def keys_revoke(args: argparse.Namespace, store: Store) -> int:
    key = store.tenants.revoke(args.key_id)
    print(
        f"key {key.id} of tenant {key.tenant} revoked: every server refuses it within its auth_cache_seconds"
    )
    return 0


def tenants_list(args: argparse.Namespace, store: Store) -> int:
    for record in store.tenants.all():
        print("\t".join([record.id, *(f"{name}={value}" for name, value in asdict(record.quotas).items())]))
    return 0


def tenants_show(args: argparse.Namespace, store: Store) -> int:
    print(json.dumps(_tenant(store.tenants.get(args.tenant), store.tenants.usage(args.tenant)), indent=2))
    return 0


def tenants_quota(args: argparse.Namespace, store: Store) -> int:
    changes = {name: getattr(args, name) for name in QUOTAS if getattr(args, name) is not None}
    if not changes:
        raise ValueError(f"tenants quota needs one of {', '.join(flag(name) for name in QUOTAS)}")
    print(json.dumps(_tenant(store.tenants.set_quotas(args.tenant, changes)), indent=2))
    return 0


ADMIN_COMMANDS: dict[str, Callable[[argparse.Namespace, Store], int]] = {
    "keys create": keys_create,
    "keys list": keys_list,
    "keys revoke": keys_revoke,
    "tenants list": tenants_list,
    "tenants show": tenants_show,
    "tenants quota": tenants_quota,
}
"""Every operator command by its words on the command line (each parser sets its own key)."""
READ_ONLY = frozenset({"keys list", "tenants list", "tenants show"})
"""Commands that only read: they never create a database, and say which one they read."""


def add_parsers(sub: Any, database_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``keys`` and ``tenants`` commands, each with the database flags."""

    def command(group: Any, path: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(path.split()[-1], help=help_text)
        database_flags(parser)
        parser.set_defaults(admin_command=path)
        return parser

    keys = sub.add_parser("keys", help="API keys (on the database; no server needed)")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = command(keys_sub, "keys create", "make a key; prints it, this once")
    create.add_argument("--tenant", required=True, type=tenant_name, help="whose key (made if new)")
    create.add_argument("--name", default="", help="a label for lists (who holds it, what for)")
    listing = command(keys_sub, "keys list", "every key: id, tenant, state, created, name")
    listing.add_argument("--tenant", type=tenant_name, help="only this tenant's")
    command(keys_sub, "keys revoke", "revoke a key, by its id").add_argument("key_id")

    tenants = sub.add_parser("tenants", help="tenants and their quotas (on the database)")
    tenants_sub = tenants.add_subparsers(dest="action", required=True)
    command(tenants_sub, "tenants list", "every tenant with its quotas")
    command(tenants_sub, "tenants show", "a tenant's quotas and usage, as JSON").add_argument(
        "tenant", type=tenant_name
    )
    quota = command(tenants_sub, "tenants quota", "change a tenant's quotas")
    quota.add_argument("tenant", type=tenant_name)
    for name in QUOTAS:
        quota.add_argument(
            flag(name), type=non_negative, metavar="N", help=f"default {getattr(Quotas(), name)}"
        )
