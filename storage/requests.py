"""Client request ids: a call retried with the same id gets the first call's result, done once.

The id is recorded in the transaction that creates the resource, so the two commit together. Two
calls racing with one id both try; the loser's insert of the id fails on its primary key, its
transaction rolls back (creating nothing), and it returns what the winner made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc
from sqlalchemy.orm import Session

from .database import Database
from .errors import RequestReused
from .schema import RequestRow

R = TypeVar("R")


def recall(s: Session, tenant: str, request_id: str, kind: str) -> str | None:
    """The resource a request id of ``tenant``'s made, or None; refuses an id first used for
    another kind."""
    row = s.get(RequestRow, (tenant, request_id))
    if row is None:
        return None
    if row.kind != kind:
        raise RequestReused(f"request_id {request_id!r} was first used to create a {row.kind}, not a {kind}")
    return row.resource_id


def once(
    db: Database,
    tenant: str,
    request_id: str,
    kind: str,
    create: Callable[[Session], str],
    fetch: Callable[[Session, str], R],
) -> R:
    """``fetch`` what ``create`` makes (in one write transaction), or what an earlier call of
    ``tenant``'s with ``request_id`` made. Without a request id, always creates. An integrity
    error that is not a race on the request id propagates."""
    try:
        with db.write() as s:
            known = recall(s, tenant, request_id, kind) if request_id else None
            if known is not None:
                return fetch(s, known)
            resource_id = create(s)
            if request_id:
                s.add(RequestRow(tenant_id=tenant, request_id=request_id, kind=kind, resource_id=resource_id))
                s.flush()
            return fetch(s, resource_id)
    except exc.IntegrityError:
        if not request_id:
            raise
        with db.read() as s:
            known = recall(s, tenant, request_id, kind)
            if known is None:
                raise
            return fetch(s, known)
