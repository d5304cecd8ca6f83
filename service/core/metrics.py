"""Prometheus metrics, served on a port of their own (``metrics_address``; off when it is empty).

Each server has its own registry, not prometheus_client's global one, so that servers started in
one process (the tests start many) count apart. It holds:

* ``gradwire_rpcs_total{method,code}`` and ``gradwire_rpc_seconds{method}``: every call, as it
  ends, counted by the access interceptor (:mod:`.logs`). Streams (Train, WatchRun) last as long
  as their runs, hence the long buckets.
* ``gradwire_runs{status}`` and ``gradwire_queue_depth``: read from the database at each scrape,
  one grouped count. They are every process's runs, so all replicas report the same numbers: take
  ``max``, not ``sum``. A scrape the database fails still answers, without these two; the
  failure is counted with the others.
* ``gradwire_database_errors_total{error}``: every error the database or its driver raised through
  the engine (SQLAlchemy's ``handle_error`` event), by the DB-API class (OperationalError, ...).
* ``gradwire_epochs_trained_total`` and ``gradwire_samples_trained_total``: the epochs this process
  trained and their training rows; ``rate()`` makes them per second.
* ``process_*``, ``python_gc_*``, ``python_info``: the process itself.

Nothing here knows gRPC: the use cases may import :data:`TRAINED`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext

from gradwire.storage import StorageError, Store
from gradwire.v1.vocabulary import RunStatus

from .errors import StartupError

log = logging.getLogger(__name__)

RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
"""Seconds: a GetModel takes a millisecond, an upload seconds, a Train stream as long as its run."""
PROCESS_COLLECTORS = (ProcessCollector, PlatformCollector, GCCollector)
"""prometheus_client's own collectors of the process: CPU, memory, files; Python; its collections."""


class Trained:
    """Epochs and samples trained in this process, all runs together: the job adds each epoch as
    it ends, and every server's registry reads the same totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.epochs = 0
        self.samples = 0

    def add(self, samples: int, epochs: int = 1) -> None:
        """One more epoch over ``samples`` training rows (or ``epochs`` more, a worker's)."""
        with self._lock:
            self.epochs += epochs
            self.samples += samples

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return self.epochs, self.samples


TRAINED = Trained()


class StoreCollector(Collector):
    """What the database and the jobs say at scrape time; a database that fails the scrape costs
    the runs' gauges of that scrape only (and is counted by the engine's error event)."""

    def __init__(self, store: Store, trained: Trained) -> None:
        self.store, self.trained = store, trained

    def describe(self) -> list[Metric]:
        return []  # nothing to check against the registry's names; never a query at registration

    def collect(self) -> Iterator[Metric]:
        epochs, samples = self.trained.totals()
        yield CounterMetricFamily("gradwire_epochs_trained", "Epochs trained in this process.", epochs)
        yield CounterMetricFamily(
            "gradwire_samples_trained", "Training rows of the epochs trained in this process.", samples
        )
        try:
            counts = self.store.runs.count_by_status()
        except (StorageError, sa_exc.SQLAlchemyError) as exc:
            log.warning("metrics: the runs could not be counted", extra={"error": str(exc)})
            return
        runs = GaugeMetricFamily("gradwire_runs", "Runs in the database by status.", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], counts.get(status, 0))
        yield runs
        yield GaugeMetricFamily(
            "gradwire_queue_depth",
            "Runs queued, waiting for a worker of any process.",
            counts.get(RunStatus.QUEUED, 0),
        )


class Metrics:
    """One server's registry, the RPC metrics its interceptor updates, and (once :meth:`start`
    ed) the HTTP endpoint that serves them and the count of the database's errors."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        for collector in PROCESS_COLLECTORS:
            collector(registry=self.registry)
        # first: a scrape collects in this order, and the database errors of this one count in it
        self.registry.register(StoreCollector(store, TRAINED))
        self.rpcs = Counter(
            "gradwire_rpcs",
            "RPCs ended, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "gradwire_rpc_seconds", "RPC durations.", ["method"], buckets=RPC_BUCKETS, registry=self.registry
        )
        self.database_errors = Counter(
            "gradwire_database_errors",
            "Errors the database raised, by class.",
            ["error"],
            registry=self.registry,
        )
        self._http: tuple[WSGIServer, Thread] | None = None
        self.address: str | None = None
        """``host:port`` where the endpoint listens (the port it got); None when it does not."""

    def rpc_ended(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def _database_error(self, context: ExceptionContext) -> None:
        error = context.sqlalchemy_exception or context.original_exception
        self.database_errors.labels(type(error).__name__).inc()

    def start(self, address: str) -> str:
        """Serve ``/metrics`` on ``address`` (``host:port``; port 0 picks one) and count the
        database's errors from now on; where it listens. StartupError if it cannot listen there."""
        host, port = split_address(address)
        try:
            self._http = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
        event.listen(self.store.engine, "handle_error", self._database_error)
        self.address = f"{address.rpartition(':')[0]}:{self._http[0].server_port}"
        return self.address

    def close(self) -> None:
        if self._http is None:
            return
        event.remove(self.store.engine, "handle_error", self._database_error)
        server, thread = self._http
        server.shutdown()
        server.server_close()
        thread.join()
        self._http = self.address = None


def split_address(address: str, setting: str = "metrics_address") -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6) as the pair sockets take; StartupError, naming the
    ``setting`` that gave it, if it is not."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise StartupError(f"{setting} {address!r} must be host:port (port 0 picks a free one)")
    return host.strip("[]"), int(port)
