"""Fetching one row by its key, or NotFound naming the request field that pointed at it."""

from __future__ import annotations

from typing import Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import NotFound
from .schema import Base

T = TypeVar("T", bound=Base)

Lock = Literal["", "update", "share"]
"""No lock; ``FOR UPDATE`` (we will change it); ``FOR SHARE`` (nobody may delete it before we
commit). PostgreSQL takes them; SQLite serialises writers anyway."""


def one(
    s: Session, table: type[T], key: str, what: str, field: str, lock: Lock = "", tenant: str | None = None
) -> T:
    """The ``table`` row whose ``id`` is ``key`` (and, with ``tenant``, whose ``tenant_id`` is that:
    another tenant's row is not found, exactly as a row that does not exist)."""
    query = select(table).where(table.id == key)  # type: ignore[attr-defined]
    if tenant is not None:
        query = query.where(table.tenant_id == tenant)  # type: ignore[attr-defined]
    if lock:
        query = query.with_for_update(read=lock == "share")
    row = s.scalar(query)
    if row is None:
        raise NotFound(what, key, field)
    return row
