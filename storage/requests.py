"""Client request ids: a call retried with the same id gets the first call's result, done once.

The id is recorded in the transaction that creates the resource, so the two commit together. Two
calls racing with one id both try; the loser's insert of the id fails on its primary key, its
transaction rolls back (creating nothing), and it returns what the winner made.

A use case may ask whether its id was seen in a statement it sends anyway (:func:`recalled`,
beside the quotas it locks): a statement of PostgreSQL's that waited on a lock may miss an id
committed meanwhile, and then the primary key above settles it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import ScalarSelect, exc, insert, select
from sqlalchemy.orm import Session

from .database import Database
from .errors import RequestReused
from .schema import RequestRow, now

R = TypeVar("R")


def recall(s: Session, tenant: str, request_id: str, kind: str) -> str | None:
    """The resource a request id of ``tenant``'s made, or None; refuses an id first used for
    another kind."""
    row = s.get(RequestRow, (tenant, request_id))
    return None if row is None else known(row.kind, row.resource_id, request_id, kind)


def recalled(tenant: Any, request_id: Any) -> tuple[ScalarSelect[Any], ScalarSelect[Any]]:
    """The kind and the resource of a request id of ``tenant``'s (values, or bound parameters of
    a statement built once), as two columns for a statement asking other things too (both NULL
    if the id is new); :func:`known` reads them."""
    where = (RequestRow.tenant_id == tenant, RequestRow.request_id == request_id)
    return (
        select(RequestRow.kind).where(*where).scalar_subquery(),
        select(RequestRow.resource_id).where(*where).scalar_subquery(),
    )


def known(found_kind: str | None, resource_id: str | None, request_id: str, kind: str) -> str | None:
    """The resource a request id recorded as ``found_kind`` made (None: not recorded); refuses
    an id first used for another kind."""
    if found_kind is None:
        return None
    if found_kind != kind:
        raise RequestReused(
            f"request_id {request_id!r} was first used to create a {found_kind}, not a {kind}"
        )
    return resource_id


def remember(s: Session, tenant: str, request_id: str, kind: str, resource_id: str) -> None:
    """Record that ``request_id`` made ``resource_id`` (nothing without a request id)."""
    if request_id:
        row = {"tenant_id": tenant, "request_id": request_id, "kind": kind, "resource_id": resource_id}
        s.connection().execute(_REMEMBER, row | {"created_at": now()})


_REMEMBER = insert(RequestRow)


def settled(
    db: Database,
    tenant: str,
    request_id: str,
    kind: str,
    work: Callable[[Session], R],
    fetch: Callable[[Session, str], R],
) -> R:
    """``work`` in one write transaction; if it lost a race on ``request_id`` (an integrity
    error, and the id is now recorded), what the winner made. Any other integrity error
    propagates."""
    try:
        with db.write() as s:
            result = work(s)
            s.flush()  # an id taken meanwhile fails here, inside the block
            return result
    except exc.IntegrityError:
        if not request_id:
            raise
        with db.read() as s:
            made = recall(s, tenant, request_id, kind)
            if made is None:
                raise
            return fetch(s, made)


def once(
    db: Database,
    tenant: str,
    request_id: str,
    kind: str,
    create: Callable[[Session], tuple[str, R]],
    fetch: Callable[[Session, str], R],
) -> R:
    """What ``create`` makes (in one write transaction: its resource's id and what it returns),
    or what ``fetch`` reads of what an earlier call of ``tenant``'s with ``request_id`` made.
    Without a request id, always creates."""

    def work(s: Session) -> R:
        made = recall(s, tenant, request_id, kind) if request_id else None
        if made is not None:
            return fetch(s, made)
        resource_id, result = create(s)
        remember(s, tenant, request_id, kind, resource_id)
        return result

    return settled(db, tenant, request_id, kind, work, fetch)
