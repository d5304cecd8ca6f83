"""Tenants, their quotas and their API keys.

A tenant owns models, datasets and runs; every lookup by id the service makes names the caller's
tenant, so another tenant's ids are not found. Quotas are checked by :func:`charge` inside the
transaction that adds what they count, with the tenant's row locked (``FOR UPDATE`` on
PostgreSQL; SQLite serialises writers), so two requests racing cannot both take the last unit.

Keys are stored as the SHA-256 of their secret; making and checking secrets is the service's
business (:mod:`gradwire.service.transport.auth`), the store only keeps and finds hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from gradwire.v1.vocabulary import ACTIVE

from .database import Database, as_utc, maybe_utc
from .errors import NotFound, QuotaExceeded
from .lookup import ANY_TENANT, TenantScope, one
from .notices import KEYS, announce
from .records import QUOTA_WORDS, KeyRecord, Quotas, TenantRecord
from .requests import known, recalled
from .schema import ApiKeyRow, DatasetRow, ModelRow, RunRow, TenantRow, now

USAGE: dict[str, Callable[[Any], Select[Any]]] = {
    "max_models": lambda tenant: select(func.count()).where(ModelRow.tenant_id == tenant),
    "max_parameters": lambda tenant: select(func.coalesce(func.sum(ModelRow.parameter_count), 0)).where(
        ModelRow.tenant_id == tenant
    ),
    "max_dataset_bytes": lambda tenant: select(func.coalesce(func.sum(DatasetRow.nbytes), 0)).where(
        DatasetRow.tenant_id == tenant
    ),
    "max_active_runs": lambda tenant: select(func.count()).where(
        RunRow.tenant_id == tenant, RunRow.status.in_(ACTIVE)
    ),
}
"""What each quota counts, for one tenant (a value or a bound parameter): one aggregate over that
tenant's rows."""


def tenant_row(s: Session, tenant: str, *, for_update: bool = False) -> TenantRow:
    return one(s, TenantRow, tenant, "tenant", "tenant", "update" if for_update else "", ANY_TENANT)


Request = tuple[str, str]
"""A request id and the kind of resource it creates (see :mod:`.requests`)."""


def charge(
    s: Session, tenant: str, adds: Mapping[str, int], *, lock: bool = True, request: Request | None = None
) -> str | None:
    """Raise QuotaExceeded if adding ``adds`` (by quota) would take ``tenant`` past a quota. With
    ``lock`` (in a write transaction that then adds them) the tenant's row stays locked until
    the transaction ends, so the counts cannot change under it. With ``request`` (an id and its
    kind), asked in the same statement: the resource an earlier call with that id made, and then
    nothing is charged; else None.

    Where a write transaction holds the whole database (SQLite: ``BEGIN IMMEDIATE``), the row and
    the counts are one statement. On PostgreSQL the counts come after the lock, in a statement
    of their own: one that waited for the row would count with what it saw before the wait."""
    together = not lock or s.get_bind().dialect.name == "sqlite"
    quotas_asked = tuple(adds)
    asked = {"tenant": tenant, "request_id": request[0] if request else ""}
    found = s.connection().execute(_charge_query(quotas_asked, together, lock), asked).first()
    if found is None:
        raise NotFound("tenant", tenant, "tenant")
    if request and (made := known(found.request_kind, found.request_resource, *request)) is not None:
        return made
    if together or not quotas_asked:
        used = [found._mapping[f"used_{quota}"] for quota in quotas_asked]
    else:
        used = list(s.connection().execute(_counts_query(quotas_asked), {"tenant": tenant}).one())
    limits = _quotas(found)
    for (quota, amount), count in zip(adds.items(), used, strict=True):
        limit = getattr(limits, quota)
        if int(count or 0) + amount > limit:
            raise QuotaExceeded(tenant, quota, limit, int(count or 0), amount, QUOTA_WORDS[quota])
    return None


@cache
def _counts(quotas: tuple[str, ...]) -> list[Any]:
    """What each of ``quotas`` counts of the tenant bound as ``tenant``, each a labelled column."""
    return [USAGE[quota](bindparam("tenant")).scalar_subquery().label(f"used_{quota}") for quota in quotas]


@cache
def _charge_query(quotas: tuple[str, ...], together: bool, lock: bool) -> Select[Any]:
    """:func:`charge`'s statement, built once: the tenant's row (locked with ``lock``), what the
    request id bound as ``request_id`` made (``request_kind``, ``request_resource``: NULL if
    nothing), and, ``together``, the counts of ``quotas``."""
    kind, resource = recalled(bindparam("tenant"), bindparam("request_id"))
    columns = (kind.label("request_kind"), resource.label("request_resource"))
    query = select(TenantRow.__table__, *columns, *(_counts(quotas) if together else ()))
    query = query.where(TenantRow.id == bindparam("tenant"))
    return query.with_for_update(of=TenantRow) if lock else query


@cache
def _counts_query(quotas: tuple[str, ...]) -> Select[Any]:
    return select(*_counts(quotas))


def _quotas(row: Any) -> Quotas:
    return Quotas(**{f.name: getattr(row, f.name) for f in fields(Quotas)})


def _tenant(row: TenantRow) -> TenantRecord:
    return TenantRecord(row.id, _quotas(row), as_utc(row.created_at))


def _key(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(row.id, row.tenant_id, row.name, as_utc(row.created_at), maybe_utc(row.revoked_at))


class TenantStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ tenants

    def ensure(self, tenant: str, quotas: Quotas | None = None) -> TenantRecord:
        """The tenant, created (with ``quotas``, else the defaults) if it does not exist."""
        with self.db.write() as s:
            row = s.get(TenantRow, tenant)
            if row is None:
                row = TenantRow(id=tenant, **asdict(quotas or Quotas()))
                s.add(row)
                s.flush()
            return _tenant(row)

    def get(self, tenant: str) -> TenantRecord:
        with self.db.read() as s:
            return _tenant(tenant_row(s, tenant))

    def all(self) -> list[TenantRecord]:
        with self.db.read() as s:
            return [_tenant(row) for row in s.scalars(select(TenantRow).order_by(TenantRow.id))]

    def check(self, tenant: str, adds: Mapping[str, int]) -> None:
        """QuotaExceeded now if ``adds`` would not fit the tenant's quotas: asked before work that
        is charged later, in the transaction that writes it (an upload's bytes, a run's data)."""
        with self.db.read() as s:
            charge(s, tenant, adds, lock=False)

    def usage(self, tenant: str) -> dict[str, int]:
        """What the tenant holds now, by quota."""
        with self.db.read() as s:
            tenant_row(s, tenant)
            return {quota: int(s.scalar(count(tenant)) or 0) for quota, count in USAGE.items()}

    def set_quotas(self, tenant: str, changes: Mapping[str, int]) -> TenantRecord:
        """Change some of the tenant's quotas (by name). What it holds already stays: a lowered
        quota refuses only what would add more."""
        unknown = set(changes) - {f.name for f in fields(Quotas)}
        if unknown:
            raise ValueError(f"no such quotas: {sorted(unknown)}")
        with self.db.write() as s:
            row = tenant_row(s, tenant, for_update=True)
            for quota, value in changes.items():
                setattr(row, quota, value)
            s.flush()
            return _tenant(row)

    # ------------------------------------------------------------------ keys

    def add_key(self, tenant: str, key_id: str, secret_hash: str, name: str = "") -> KeyRecord:
        """Keep a new key of ``tenant`` (created with the default quotas if it is new)."""
        self.ensure(tenant)
        with self.db.write() as s:
            row = ApiKeyRow(id=key_id, tenant_id=tenant, name=name, secret_hash=secret_hash)
            s.add(row)
            s.flush()
            return _key(row)

    def keys(self, tenant: TenantScope) -> list[KeyRecord]:
        """The keys of ``tenant`` (or of every one), revoked ones included, oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        if tenant is not ANY_TENANT:
            query = query.where(ApiKeyRow.tenant_id == tenant)
        with self.db.read() as s:
            return [_key(row) for row in s.scalars(query)]

    def find_key(self, secret_hash: str) -> KeyRecord | None:
        """The key whose secret hashes to ``secret_hash`` (revoked or not), or None."""
        with self.db.read() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.secret_hash == secret_hash))
            return None if row is None else _key(row)

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke a key (revoking it again changes nothing)."""
        with self.db.write() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound("key", key_id, "key_id")
            if row.revoked_at is None:
                row.revoked_at = now()
                announce(s, KEYS)  # servers that cached the key forget it as this commits
            s.flush()
            return _key(row)
