"""Building, starting and stopping the gRPC server.

``create_server(settings)`` returns a started server, the port it got (bind ``:0`` in tests) and
the application behind it. Health checking (``grpc.health.v1``, honest about the database and
about stopping: see :mod:`.health`) and server reflection are registered beside the gradwire
service. Every RPC is logged once, as one structured line.

The port is never shared: gRPC turns ``SO_REUSEPORT`` on by default, which lets a second server
started on the same address take half the new connections unnoticed; here it is refused with
:class:`.errors.StartupError`, naming the address.
"""

from __future__ import annotations

import ctypes
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradwire.storage import Store, open_store
from gradwire.v1 import gradwire_pb2 as pb

from .errors import StartupError
from .health import DatabaseHealth, HealthServicer
from .servicer import Streams, TrainerServicer, add_to_server
from .settings import Settings
from .usecases import Gradwire

log = logging.getLogger("gradwire.rpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
"""The names health reports for: the whole server, and the gradwire service."""
_HEALTH: weakref.WeakKeyDictionary[grpc.Server, DatabaseHealth] = weakref.WeakKeyDictionary()
"""Each started server's health, for :func:`stop_server` to turn NOT_SERVING first."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in record.__dict__.items() if k not in self.RESERVED}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _log_call(method: str, context: grpc.ServicerContext, started: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return  # the peer and the code cost a little on every call: only when they are written
    code = context.code() or (grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED)
    log.info(
        "rpc",
        extra={
            "method": method,
            "code": code.name,
            "peer": context.peer(),
            "ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


def _logged_unary(method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            return inner(request, context)
        finally:
            _log_call(method, context, started)

    return call


def _logged_stream(method: str, inner: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            yield from inner(request, context)
        finally:
            _log_call(method, context, started)

    return call


WRAPPERS = {
    "unary_unary": _logged_unary,
    "stream_unary": _logged_unary,
    "unary_stream": _logged_stream,
    "stream_stream": _logged_stream,
}
"""How to wrap each kind of handler: by whether it returns one response or yields many."""


class LoggingInterceptor(grpc.ServerInterceptor):
    """Logs method, status code, peer and duration of every call, of every kind."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        for kind, wrap in WRAPPERS.items():
            inner = getattr(handler, kind)
            if inner is not None:
                return handler._replace(**{kind: wrap(details.method, inner)})
        return handler


MALLOPT = {
    -3: 1 << 20,  # M_MMAP_THRESHOLD: blocks of 1 MiB and more get mappings of their own
    -8: 2,  # M_ARENA_MAX: two heaps, not eight per core, for a process of many threads
}
"""glibc's allocator settings for a server, by mallopt parameter number."""


def return_freed_memory() -> bool:
    """Tune glibc so that a server's resident size follows its work. By default it raises its
    mmap threshold as large blocks come and go, and then keeps the freed chunks of uploads,
    datasets and checkpoints in its heaps; and it gives each thread that allocates an arena of
    its own, each keeping what it freed. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        return all(libc.mallopt(parameter, value) for parameter, value in MALLOPT.items())
    except (OSError, AttributeError):
        return False


def create_server(settings: Settings, store: Store | None = None) -> tuple[grpc.Server, int, Gradwire]:
    """A started server on ``settings.address``: ``(server, port, app)``; the app claims runs.
    Raises :class:`StartupError` if it cannot listen there."""
    opened = store is None
    store = store or open_store(settings.database_url, settings.db_statement_seconds)
    app = Gradwire(store, settings)
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # an address in use is refused, never shared (module docstring)
    ]
    threads = settings.rpc_workers + settings.max_streams  # streams are capped; unary calls keep theirs
    server = grpc.server(
        ThreadPoolExecutor(threads, thread_name_prefix="gradwire-rpc"),
        interceptors=[LoggingInterceptor()],
        options=options,
    )
    streams = Streams(settings.max_streams)  # health watches count with the gradwire streams
    add_to_server(TrainerServicer(app, streams), server)
    health_servicer = HealthServicer(streams)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = _listen(server, settings.address)
    except StartupError:
        if opened:
            store.close()
        raise
    watch = DatabaseHealth(health_servicer, store.db.ping, HEALTH_SERVICES, settings.heartbeat_seconds)
    watch.start()
    _HEALTH[server] = watch
    server.start()
    app.start()
    return server, port, app


def _listen(server: grpc.Server, address: str) -> int:
    """The port ``server`` listens on at ``address``. gRPC says it cannot by raising RuntimeError
    (older versions returned 0), and writes why to stderr only."""
    try:
        port = int(server.add_insecure_port(address))
    except RuntimeError:
        port = 0
    if not port:
        raise StartupError(f"cannot listen on {address}: the address is in use (or not available)")
    return port


def stop_server(server: grpc.Server, app: Gradwire, grace: float = 5.0) -> None:
    """Say NOT_SERVING (health watchers and load balancers hear it before anything else changes),
    stop accepting calls (streams end), ask the runs executing here to stop at their next epoch
    end and keep their checkpoints (they become interrupted, to continue elsewhere or after a
    restart), wait up to ``grace`` seconds, then close."""
    watch = _HEALTH.pop(server, None)
    if watch is not None:
        watch.stop()
    app.runs.close()  # watches end at once (UNAVAILABLE: watch again elsewhere or later)
    done = server.stop(grace)
    app.close(grace)
    done.wait()
    app.store.close()
