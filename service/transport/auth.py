"""Who is calling: API keys, the tenant each belongs to, and the interceptor that checks them.

A key is ``gw_<id>_<secret>``: ``id`` is 12 hex digits, public (key lists and revocations name
it); ``secret`` is 256 random bits in URL-safe base64. The database keeps only the key's SHA-256
(:meth:`gradwire.storage.Store.tenants`); the key itself is shown once, when it is made. A fast
hash is the right one here: the secret is random, not a password, so there is nothing to guess.

:class:`AuthInterceptor` checks the ``authorization: Bearer <key>`` metadata of every call of
every service except health checking and the open inference protocol's liveness and readiness
(load balancers and probes ask them without a key), before
the handler runs; a call without a key, or with an unknown or revoked one, ends UNAUTHENTICATED.
The handler gets the call's context as :class:`Authenticated`, which names the caller's tenant
(:func:`caller_of`).

Keys found are remembered for ``auth_cache_seconds`` (a hash and a tenant, never the key). On
PostgreSQL a revocation is announced to every server as it commits (LISTEN/NOTIFY), and each
forgets the keys it remembered at once, so no answer depends on which replica a call reaches; on
SQLite a revoked key keeps working at most that long on each server process. With
authentication off (``--auth off``) every call is the tenant ``default``'s.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health

from gradwire.storage import DEFAULT_TENANT, Store

from ..core.errors import Unauthenticated
from .interceptors import Wrapped, note, rewrap
from .status import abort

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
SCHEME = "bearer"
KEY = re.compile(r"gw_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
"""A key's shape: the prefix, the public id, the secret (32 bytes, unpadded URL-safe base64)."""
OPEN_SERVICES = (health.SERVICE_NAME,)
"""Services answered without a key."""
OPEN_METHODS = frozenset(f"/inference.GRPCInferenceService/{name}" for name in ("ServerLive", "ServerReady"))
"""Methods of other services answered without a key: the open inference protocol's probes, which
say whether the server is up and nothing of any tenant's."""
CACHED_KEYS = 10_000
"""Keys remembered at most per process (the least recently used go first)."""

NO_KEY = (
    f"this server needs an API key: send the metadata '{AUTHORIZATION}: Bearer <key>' "
    "(the operator makes one with 'gradwire keys create')"
)
BAD_KEY = "the API key is not valid: unknown or revoked"


@dataclass(frozen=True)
class Caller:
    """Whose call it is: the tenant, and the key it came with ("" while authentication is off)."""

    tenant: str
    key_id: str = ""


ANONYMOUS = Caller(DEFAULT_TENANT)


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``token`` is what its holder sends, shown this once; ``hash`` is kept."""

    id: str
    token: str

    @property
    def hash(self) -> str:
        return key_hash(self.token)


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    return NewKey(key_id, f"gw_{key_id}_{secrets.token_urlsafe(32)}")


def key_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(metadata: Any) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata; None if there is none."""
    value = next((v for k, v in metadata or () if k == AUTHORIZATION), None)
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == SCHEME and token.strip() else None


class Keys:
    """Who a key is: the database says, remembered for ``cache_seconds``."""

    def __init__(
        self, store: Store, cache_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store, self.cache_seconds, self.clock = store, cache_seconds, clock
        self._known: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # moved by forget(): a lookup that straddles it is not remembered

    def identify(self, metadata: Any) -> Caller:
        """The caller the call's key names; Unauthenticated without one, or for a key that is
        malformed, unknown or revoked; the store's Unavailable when the database cannot say."""
        token = bearer(metadata)
        if token is None:
            raise Unauthenticated(NO_KEY)
        match = KEY.fullmatch(token)
        if match is None:
            raise Unauthenticated(BAD_KEY)
        digest = key_hash(token)
        now = self.clock()
        with self._lock:
            known = self._known.get(digest)
            if known is not None and known[1] > now:
                self._known.move_to_end(digest)
                return known[0]
            generation = self._generation
        record = self.store.tenants.find_key(digest)
        if record is None or not record.active or record.id != match.group(1):
            raise Unauthenticated(BAD_KEY)
        caller = Caller(record.tenant, record.id)
        with self._lock:
            if generation != self._generation:
                return caller  # a revocation may have landed since the read: answer, but keep nothing
            self._known[digest] = (caller, now + self.cache_seconds)
            self._known.move_to_end(digest)
            while len(self._known) > CACHED_KEYS:
                self._known.popitem(last=False)
        return caller

    def forget(self) -> None:
        """Forget every key remembered: the database changed (a key was revoked elsewhere)."""
        with self._lock:
            dropped = len(self._known)
            self._known.clear()
            self._generation += 1
        if dropped:
            log.info("API key cache cleared", extra={"keys": dropped})


def anonymous(metadata: Any) -> Caller:
    """Authentication off: every call is the default tenant's."""
    return ANONYMOUS


class Authenticated(Wrapped):
    """A call's context, and who is calling (:attr:`caller`)."""

    def __init__(self, context: grpc.ServicerContext, caller: Caller) -> None:
        super().__init__(context)
        self.caller = caller


def caller_of(context: grpc.ServicerContext) -> Caller:
    """Who made the call the :class:`AuthInterceptor` let through."""
    if not isinstance(context, Authenticated):
        raise TypeError("the call did not pass the AuthInterceptor")  # a server built without it
    return context.caller


Identify = Callable[[Any], Caller]


def _checked(context: grpc.ServicerContext, identify: Identify) -> Authenticated:
    try:
        caller = identify(context.invocation_metadata())
    except Exception as exc:
        abort(context, exc)
    note(context, tenant=caller.tenant, key=caller.key_id or None)
    return Authenticated(context, caller)


def _unary(inner: Callable[..., Any], identify: Identify) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        return inner(request, _checked(context, identify))

    return handle


def _stream(inner: Callable[..., Iterator[Any]], identify: Identify) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from inner(request, _checked(context, identify))

    return handle


def service_of(method: str) -> str:
    """``/grpc.health.v1.Health/Check``: ``grpc.health.v1.Health``."""
    return method.lstrip("/").partition("/")[0]


class AuthInterceptor(grpc.ServerInterceptor):
    """Every call of every service but :data:`OPEN_SERVICES` is identified before its handler
    runs (in the handler's thread: a database lookup never holds grpc's own)."""

    def __init__(self, identify: Identify) -> None:
        self.identify = identify

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if service_of(details.method) in OPEN_SERVICES or details.method in OPEN_METHODS:
            return handler
        identify = self.identify
        return rewrap(handler, lambda inner: _unary(inner, identify), lambda inner: _stream(inner, identify))
