"""The one access line every RPC writes (the lines' format: :mod:`.logformat`).

:class:`AccessInterceptor` wraps every handler, of every kind, and writes one line as each call
ends (logger ``gradwire.rpc``, message ``rpc``): ``method``, ``code``, ``duration_ms``, ``peer``,
``request_id``, and the ``tenant`` and ``key`` (its id) of a call the key check let through.
The request id is the caller's ``x-request-id`` metadata when it is one a log can carry (at
most :data:`MAX_REQUEST_ID` printable ASCII characters, no spaces), else a new one; either way
it goes back to the caller in the **trailing** metadata, beside the status. Trailing, not
initial: Train sends initial metadata of its own (``gradwire-run-id``), which can be sent once
only, and a call that fails has its trailing metadata replaced by its rich status; the id is
added to whatever the handler left there, as the call ends, so every call of every kind, failed
ones included, carries it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..core.logformat import JsonFormatter as JsonFormatter
from .interceptors import Noted, rewrap

log = logging.getLogger("gradwire.rpc")

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128
VALID_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID}}}")
"""Printable ASCII without spaces: what a log line and a metadata value carry unchanged."""

RpcEnded = Callable[[str, str, float], None]
"""Told of every call as it ends: method, status code name, seconds (the metrics count them)."""


def request_id(metadata: Any) -> str:
    """The caller's ``x-request-id`` if a log can carry it as it is, else a new one (32 hex digits)."""
    given = next((value for key, value in metadata or () if key == REQUEST_ID), "")
    if isinstance(given, str) and VALID_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class Call:
    """One call under way: what its access line and its metrics need when it ends."""

    def __init__(self, method: str, context: grpc.ServicerContext, ended: RpcEnded | None) -> None:
        self.method, self.context, self.ended = method, context, ended
        self.request_id = request_id(context.invocation_metadata())
        self.raised = False
        self.notes: dict[str, Any] = {}  # filled by inner layers: the caller's tenant and key
        self.started = time.perf_counter()

    def code(self) -> grpc.StatusCode:
        """The status the call ends with: the one set (abort sets it); else CANCELLED if the client
        left, UNKNOWN if the handler raised (grpc says so), OK."""
        if (code := self.context.code()) is not None:
            return code
        if not self.context.is_active():
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN if self.raised else grpc.StatusCode.OK

    def end(self) -> None:
        seconds = time.perf_counter() - self.started
        kept = [(k, v) for k, v in self.context.trailing_metadata() or () if k != REQUEST_ID]
        self.context.set_trailing_metadata((*kept, (REQUEST_ID, self.request_id)))
        code = self.code().name
        if self.ended is not None:
            self.ended(self.method, code, seconds)
        if log.isEnabledFor(logging.INFO):  # the peer costs a little on every call: only when written
            extra = {"method": self.method, "code": code, "duration_ms": round(seconds * 1000, 2)}
            extra |= {"peer": self.context.peer(), "request_id": self.request_id, **self.notes}
            log.info("rpc", extra=extra)


def _unary(method: str, inner: Callable[..., Any], ended: RpcEnded | None) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        call = Call(method, context, ended)
        try:
            return inner(request, Noted(context, call.notes))
        except Exception:
            call.raised = True
            raise
        finally:
            call.end()

    return handle


def _stream(method: str, inner: Callable[..., Iterator[Any]], ended: RpcEnded | None) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = Call(method, context, ended)
        try:
            yield from inner(request, Noted(context, call.notes))
        except Exception:
            call.raised = True
            raise
        finally:
            call.end()

    return handle


class AccessInterceptor(grpc.ServerInterceptor):
    """The access line, the request id and ``ended`` (the metrics) for every call, of every kind."""

    def __init__(self, ended: RpcEnded | None = None) -> None:
        self.ended = ended

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        method, ended = details.method, self.ended
        return rewrap(
            continuation(details),
            lambda inner: _unary(method, inner, ended),
            lambda inner: _stream(method, inner, ended),
        )
