"""Page tokens for the List calls: opaque to clients, the ``(created_at, id)`` of a page's last item."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from gradwire.engine import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_KEY = 64
"""The longest id a page token may carry (ids are far shorter)."""
MAX_TOKEN = 256
"""The longest page token this service gives out is about half of it."""


def paged(
    fetch: Callable[[int, tuple[datetime, str] | None], list[T]], page_size: int, page_token: str
) -> tuple[list[T], str]:
    """A page of what ``fetch(limit, after)`` lists, and the token of the next page ("" if last)."""
    limit, after = page_request(page_size, page_token)
    items = fetch(limit, after)
    return items, next_token(items, limit)


def page_request(page_size: int, page_token: str) -> tuple[int, tuple[datetime, str] | None]:
    """``(limit, after)`` for a store's list method, from a request's page size and token."""
    if not 0 <= page_size <= MAX_PAGE:
        raise InvalidArgument("page_size", f"must lie in [0, {MAX_PAGE}] (0: the default, {DEFAULT_PAGE})")
    return page_size or DEFAULT_PAGE, _decode(page_token) if page_token else None


def next_token(items: Sequence[Any], limit: int) -> str:
    """The token of the page after ``items`` (records with ``created_at`` and ``id``); "" if last."""
    if len(items) < limit:
        return ""
    last = items[-1]
    return base64.urlsafe_b64encode(json.dumps([last.created_at.isoformat(), last.id]).encode()).decode()


def _decode(token: str) -> tuple[datetime, str]:
    if len(token) > MAX_TOKEN:
        raise InvalidArgument("page_token", "not a token this service gave out")
    try:
        created, key = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(key, str) or len(key) > MAX_KEY or "\x00" in key:
            raise ValueError("not an id")
        return datetime.fromisoformat(created), key
    except (ValueError, TypeError, RecursionError, binascii.Error):
        raise InvalidArgument("page_token", "not a token this service gave out") from None
