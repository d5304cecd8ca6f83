"""Fetching one row by its key, or NotFound naming the request field that pointed at it."""

from __future__ import annotations

from enum import Enum
from typing import Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import NotFound
from .schema import Base

T = TypeVar("T", bound=Base)


class AnyTenant(Enum):
    ANY_TENANT = "any tenant"


ANY_TENANT = AnyTenant.ANY_TENANT
"""The scope of the service's own work on a row it found itself (executing a run, resuming the
interrupted ones, publishing a version), never of an id a caller sent: such an id is looked up in
its caller's tenant, so that another tenant's row is not found."""

TenantScope = str | AnyTenant
"""Whose rows a lookup may find: one tenant's, or (:data:`ANY_TENANT`) every tenant's."""

Lock = Literal["", "update", "share"]
"""No lock; ``FOR UPDATE`` (we will change it); ``FOR SHARE`` (nobody may delete it before we
commit). PostgreSQL takes them; SQLite serialises writers anyway."""


def one(s: Session, table: type[T], key: str, what: str, field: str, lock: Lock, tenant: TenantScope) -> T:
    """The ``table`` row whose ``id`` is ``key`` and, unless ``tenant`` is :data:`ANY_TENANT`, whose
    ``tenant_id`` is ``tenant``: another tenant's row is not found, exactly as a row that does not
    exist."""
    query = select(table).where(table.id == key)  # type: ignore[attr-defined]
    if tenant is not ANY_TENANT:
        query = query.where(table.tenant_id == tenant)  # type: ignore[attr-defined]
    if lock:
        query = query.with_for_update(read=lock == "share")
    row = s.scalar(query)
    if row is None:
        raise NotFound(what, key, field)
    return row
