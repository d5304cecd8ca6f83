"""Health as ``grpc.health.v1`` tells it: SERVING while this server can do its work, NOT_SERVING
while its database cannot be reached, and from the moment the server begins to stop.

A server whose database is away still accepts calls, but answers nearly every one UNAVAILABLE;
saying NOT_SERVING lets load balancers and clients (a ``Watch`` stream, or ``Check`` now and
then) send the work to a server that can do it. At a stop, NOT_SERVING goes out before the server
refuses new calls, and each ``Watch`` stream ends once it has said so: a watcher learns why the
stream ended, and does not hold the stop up until the grace period runs out.

:class:`DatabaseHealth` asks the database the cheapest question on a thread of its own, every
``heartbeat_seconds`` (the cadence at which runs renew their leases: a database away for longer
than that is what makes them late), and changes the status of every service it reports for when
the answer changes, logging each change once. A probe waits no longer than a connection's
bounds (``POSTGRES_CONNECT`` in :mod:`gradwire.storage.database`: 5 s to connect, 30 s for
data a dead link never acknowledges); the status stays as it was meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from ..core.errors import LimitExceeded
from .servicer import Streams

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STOP_WAIT_SECONDS = 1.0
"""How long a stop waits for a probe under way (it takes milliseconds when the database answers);
one still waiting on the database then ends by itself and changes nothing."""


class HealthServicer(health.HealthServicer):
    """grpc_health's servicer, whose ``Watch`` streams end at a stop once they said NOT_SERVING.

    A ``Watch`` stream holds one of the server's threads for as long as it is open, as the
    gradwire streams do, so it takes one of ``streams`` slots (``health_streams`` of them, apart
    from the gradwire streams': health needs no key, and watchers without one must not take a
    tenant's stream), and watchers, however many, never take the threads kept for unary calls or
    for gradwire's streams (past the cap: RESOURCE_EXHAUSTED)."""

    def __init__(self, streams: Streams) -> None:
        super().__init__()
        self._stopping = threading.Event()
        self._streams = streams

    def Watch(  # noqa: N802 (the RPC's name)
        self, request: Any, context: Any, send_response_callback: Any = None
    ) -> Iterator[Any] | None:
        if send_response_callback is not None:  # grpc's non-blocking mode holds no thread
            return super().Watch(request, context, send_response_callback)
        return self._watch_until_stop(request, context)

    def _watch_until_stop(self, request: Any, context: Any) -> Iterator[Any]:
        """grpc_health's blocking Watch in a stream slot (taken when the stream starts, so that a
        stream never started holds none), ending after NOT_SERVING once the server stops."""
        try:
            self._streams.acquire()
        except LimitExceeded as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            for response in super().Watch(request, context):
                yield response
                if self._stopping.is_set() and response.status == NOT_SERVING:
                    return
        finally:
            self._streams.release()

    def stop(self) -> None:
        """Every service NOT_SERVING for good: each Watch stream hears it, then ends."""
        self._stopping.set()
        self.enter_graceful_shutdown()


class DatabaseHealth:
    """Reports for ``services`` whether ``probe()`` returns (SERVING) or raises (NOT_SERVING),
    asking every ``interval`` seconds (see the module docstring)."""

    def __init__(
        self,
        servicer: HealthServicer,
        probe: Callable[[], object],
        services: tuple[str, ...],
        interval: float,
    ) -> None:
        self.servicer, self.probe, self.services, self.interval = servicer, probe, services, interval
        self.serving = True  # the database answered as the server opened it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gradwire-health", daemon=True)

    def start(self) -> None:
        self._set(SERVING)
        self._thread.start()

    def stop(self) -> None:
        """NOT_SERVING for good (the server is stopping), and no more probes."""
        self._stop.set()
        self.servicer.stop()
        log.info("server stopping; health NOT_SERVING")
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_SECONDS)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            error = self._check()
            if (error is None) != self.serving and not self._stop.is_set():
                self._change(error)

    def _check(self) -> str | None:
        """None if the database answered, else why not."""
        try:
            self.probe()
        except Exception as exc:  # whatever keeps the probe from an answer keeps the calls from one
            return str(exc) or type(exc).__name__
        return None

    def _change(self, error: str | None) -> None:
        self.serving = error is None
        if self.serving:
            self._set(SERVING)
            log.info("database reachable again; health SERVING")
        else:
            self._set(NOT_SERVING)
            log.warning("database unreachable; health NOT_SERVING", extra={"error": error})

    def _set(self, status: int) -> None:
        for name in self.services:
            self.servicer.set(name, status)  # ignored once the servicer stopped: it stays NOT_SERVING
