"""Building, starting and stopping the gRPC server.

``create_server(settings)`` returns a started server, the port it got (bind ``:0`` in tests) and
the application behind it. Health checking (``grpc.health.v1``, honest about the database and
about stopping: see :mod:`.health`) and server reflection are registered beside the gradwire
service.

Access: every call but health checking needs an API key, checked by :class:`.auth.AuthInterceptor`
(unless authentication is off, explicitly); a server that would listen beyond this machine
without authentication and TLS refuses to start unless told ``insecure``.

Operations: every RPC writes one access line and carries a request id (:mod:`.logs`); with a
``metrics_address`` the server serves Prometheus metrics there (:mod:`.metrics`); when the standard
``OTEL_*`` variables name a span exporter (or an OTLP endpoint), opentelemetry's own gRPC
interceptor traces every RPC (:class:`Tracing`; the ``gradwire[otel]`` extra). Start, stop and
configuration are log lines with fields of their own too.

The port is never shared: gRPC turns ``SO_REUSEPORT`` on by default, which lets a second server
started on the same address take half the new connections unnoticed; here it is refused with
:class:`.errors.StartupError`, naming the address.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradwire.storage import DEFAULT_TENANT, KEYS_CHANNEL, StorageError, Store, open_store
from gradwire.storage.notices import Listener
from gradwire.v1 import gradwire_pb2 as pb

from ..core.errors import StartupError
from ..core.metrics import Metrics
from ..core.settings import MiB, Settings
from ..core.tuning import GIL_SWITCH_SECONDS
from ..usecases.app import Gradwire
from .auth import AuthInterceptor, Keys, anonymous
from .dashboard import Dashboard
from .health import DatabaseHealth, HealthServicer
from .http import HttpApp, HttpPort
from .http import is_loopback as loopback
from .inference_servicer import SERVICE as INFERENCE_SERVICE
from .inference_servicer import InferenceServicer
from .inference_servicer import add_to_server as add_inference_to_server
from .logs import AccessInterceptor
from .open_inference import OpenInference
from .servicer import Streams, TrainerServicer, add_to_server
from .tls import server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
"""The names health reports for: the whole server, and the gradwire service."""


# ------------------------------------------------------------------------------------ tracing

TRACING_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
"""Tracing is on when one of these is set (and not to ``none``): opentelemetry's own default
exporter (OTLP to localhost) would otherwise trace every server that never asked for it."""
OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
"""The exporter ``otlp`` stands for, by ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (grpc if unset)."""
EXPORTERS = "opentelemetry_traces_exporter"
"""The entry points by which opentelemetry's packages name their span exporters (``console``,
``otlp_proto_grpc``, ...): the names ``OTEL_TRACES_EXPORTER`` takes."""
DEFAULT_SERVICE_NAME = "gradwire"
"""The traces' ``service.name`` unless ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``) says."""


def trace_exporters(env: Mapping[str, str]) -> list[str]:
    """The span exporters the ``OTEL_*`` variables in ``env`` ask for, by entry point name; none
    (tracing off) unless one of :data:`TRACING_VARIABLES` is set, or if ``OTEL_SDK_DISABLED`` is
    true or the exporter is ``none``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    if not any(env.get(name, "").strip() for name in TRACING_VARIABLES):
        return []
    names = [name.strip().lower() for name in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
    if "none" in names:
        return []
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    return [
        OTLP_BY_PROTOCOL.get(protocol.strip(), name) if name == "otlp" else name for name in names if name
    ]


@dataclass
class Tracing:
    """A span for every RPC, from opentelemetry's gRPC server interceptor, on a tracer provider of
    this server's (the global one is left alone), sent to ``exporters`` once :meth:`start` ed.
    opentelemetry is an optional extra: its objects are typed ``Any`` here."""

    exporters: dict[str, EntryPoint]
    provider: Any
    interceptor: grpc.ServerInterceptor

    def start(self) -> None:
        """Export from now on: a batching processor (a thread) per exporter."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        for exporter in self.exporters.values():
            self.provider.add_span_processor(BatchSpanProcessor(exporter.load()()))

    def close(self) -> None:
        """Send the spans still waiting, then stop the processors."""
        self.provider.shutdown()


def tracing_from_env() -> Tracing | None:
    """The tracing the process's ``OTEL_*`` variables ask for (see :func:`trace_exporters`; the
    exporters and the resource read theirs themselves); None if they ask for none, or if what
    they ask for is not installed (one warning line)."""
    names = trace_exporters(os.environ)
    if not names:
        return None
    try:
        from opentelemetry.instrumentation.grpc import server_interceptor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        log.warning(
            "tracing is off: the OTEL_* variables ask for it, but opentelemetry is not installed "
            "(pip install 'gradwire[otel]')",
            extra={"missing": exc.name, "exporters": names},
        )
        return None
    installed = {entry.name: entry for entry in entry_points(group=EXPORTERS)}
    if unknown := [name for name in names if name not in installed]:
        log.warning(
            "tracing is off: OTEL_TRACES_EXPORTER names exporters that are not installed",
            extra={"unknown": unknown, "installed": sorted(installed)},
        )
        return None
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, if set
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    exporters = {name: installed[name] for name in names}
    return Tracing(exporters, provider, server_interceptor(tracer_provider=provider))


# ------------------------------------------------------------------------------------ the server


@dataclass
class Operations:
    """What runs beside a started server's RPCs, for :func:`stop_server` to stop: its health
    watch (NOT_SERVING first), its metrics endpoint and its tracing when they are on, and its
    ear for API key changes (PostgreSQL, with authentication on)."""

    health: DatabaseHealth
    metrics: Metrics | None
    tracing: Tracing | None
    keys_listener: Listener | None = None
    http: HttpPort | None = None

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        if self.keys_listener is not None:
            self.keys_listener.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.tracing is not None:
            self.tracing.close()


_RUNNING: weakref.WeakKeyDictionary[grpc.Server, Operations] = weakref.WeakKeyDictionary()


def operations(server: grpc.Server) -> Operations | None:
    """What runs beside ``server`` while it is started (None before and after)."""
    return _RUNNING.get(server)


def create_server(settings: Settings, store: Store | None = None) -> tuple[grpc.Server, int, Gradwire]:
    """A started server on ``settings.address``: ``(server, port, app)``; the app claims runs.
    Raises :class:`StartupError` if it cannot listen there, or serve metrics where asked, or
    would listen beyond this machine without authentication and TLS (unless ``insecure``)."""
    check_exposure(settings)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)  # the process serves: see GIL_SWITCH_SECONDS
    credentials = server_credentials(settings)  # bad TLS files are refused before the database is touched
    opened = store is None
    store = store or open_store(settings.database_url, settings.db_statement_seconds)
    if not settings.auth:  # the first line a server without authentication writes says so
        log.warning(AUTH_OFF, extra={"tenant": DEFAULT_TENANT})
    app = Gradwire(store, settings)
    metrics = Metrics(store) if settings.metrics_address else None
    tracing = tracing_from_env()
    keys = Keys(store, settings.auth_cache_seconds) if settings.auth else None
    identify = keys.identify if keys is not None else anonymous
    threads = settings.rpc_workers + settings.max_streams + settings.health_streams  # each kind capped apart
    server = grpc.server(
        ThreadPoolExecutor(threads, thread_name_prefix="gradwire-rpc"),
        interceptors=[*_interceptors(metrics, tracing), AuthInterceptor(identify)],
        options=_options(settings),
    )
    protocol = OpenInference(app, database_answers(store))
    health_servicer = _add_services(server, app, settings, protocol)
    http = None
    if settings.http_address:
        dashboard = Dashboard(app, identify, settings.max_streams)
        inline = settings.limits.max_inline_mb * MiB
        http = HttpPort(HttpApp(protocol, identify, settings.max_message_bytes, inline, dashboard), settings)
    try:
        port = _listen(server, settings.address, credentials)
        health = DatabaseHealth(health_servicer, store.db.ping, HEALTH_SERVICES, settings.heartbeat_seconds)
        running = _RUNNING[server] = _operate(settings, store, health, metrics, tracing, keys, http)
        app.start()  # an unusable executor (no Ray cluster) fails the start before any call is served
        server.start()
    except BaseException:  # whatever started goes with it: the workers, the metrics endpoint, the port
        _stop(server, app, grace=0.0)
        if opened:
            store.close()
        raise
    _log_start(settings, store, port, running)
    return server, port, app


AUTH_OFF = "authentication is off: every caller acts as the tenant 'default' (--auth off)"


EXPOSED = {
    "authentication": "anyone who reaches it could read and change every model",
    "TLS": "keys and data would cross the network readable",
}
"""What listening beyond this machine without each protection would mean."""


def check_exposure(settings: Settings) -> None:
    """StartupError if the server would listen beyond this machine (its gRPC or its HTTP port)
    without authentication or without TLS, unless ``insecure`` says that is meant."""
    exposed = [
        a for a in (settings.address, settings.http_address) if a and not loopback(a.rpartition(":")[0])
    ]
    if settings.insecure or not exposed:
        return
    on = {"authentication": settings.auth, "TLS": bool(settings.tls_cert_file)}
    missing = [what for what in EXPOSED if not on[what]]
    if missing:
        raise StartupError(
            f"refusing to listen on {exposed[0]} without {' and '.join(missing)}: "
            f"{'; '.join(EXPOSED[what] for what in missing)}. Listen on 127.0.0.1, configure "
            f"{'them' if len(missing) > 1 else 'it'}, or pass --insecure (GRADWIRE_INSECURE=true) "
            "if the network itself is trusted"
        )


def _options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # an address in use is refused, never shared (module docstring)
    ]


def _interceptors(metrics: Metrics | None, tracing: Tracing | None) -> list[grpc.ServerInterceptor]:
    """Tracing outermost, so that its span holds the whole call; then the access line and metrics
    (a call refused for its key is logged and counted too; the key check is added after these)."""
    access = AccessInterceptor(None if metrics is None else metrics.rpc_ended)
    return [access] if tracing is None else [tracing.interceptor, access]


def _add_services(
    server: grpc.Server, app: Gradwire, settings: Settings, protocol: OpenInference
) -> HealthServicer:
    """The gradwire service, the open inference protocol's, health (returned: its watch sets it)
    and reflection."""
    add_to_server(TrainerServicer(app, Streams(settings.max_streams)), server)
    add_inference_to_server(InferenceServicer(protocol), server, settings.max_message_bytes)
    health_servicer = HealthServicer(Streams(settings.health_streams))  # keyless: slots of its own
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, INFERENCE_SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return health_servicer


def database_answers(store: Store) -> Callable[[], bool]:
    """Whether the database answers now: the server can serve."""

    def ready() -> bool:
        try:
            store.db.ping()
        except StorageError:
            return False
        return True

    return ready


def _operate(
    settings: Settings,
    store: Store,
    health: DatabaseHealth,
    metrics: Metrics | None,
    tracing: Tracing | None,
    keys: Keys | None,
    http: HttpPort | None,
) -> Operations:
    """Start what runs beside the server's RPCs; if one part cannot start (the metrics or HTTP
    address is in use, the database cannot be listened to), stop the parts that did before the
    error goes on."""
    running = Operations(health, None, None)
    try:
        if metrics is not None:
            metrics.start(settings.metrics_address)
            running.metrics = metrics
        if http is not None:
            http.start(settings.http_address)
            running.http = http
        health.start()
        if keys is not None:
            running.keys_listener = store.listen(KEYS_CHANNEL, keys.forget, settings.heartbeat_seconds)
        if tracing is not None:
            tracing.start()
            running.tracing = tracing
    except BaseException:
        health.stop()
        running.close()
        raise
    return running


def _log_start(settings: Settings, store: Store, port: int, running: Operations) -> None:
    """The start as two lines with fields: where it listens and what is on; then every setting
    (the database URL without its password)."""
    host = settings.address.rpartition(":")[0]
    on = {
        "address": f"{host}:{port}",
        "auth": settings.auth,
        "metrics_address": None if running.metrics is None else running.metrics.address,
        "http_address": None if running.http is None else running.http.address,
        "tracing": None if running.tracing is None else list(running.tracing.exporters),
    }
    log.info("server started", extra=on)
    shown = asdict(settings) | {"database_url": store.engine.url.render_as_string(hide_password=True)}
    log.info("configuration", extra={"settings": shown})


def _listen(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """The port ``server`` listens on at ``address``: in plaintext, or with ``credentials`` (TLS or
    mutual TLS, see :mod:`.tls`). gRPC says it cannot listen by raising RuntimeError (older
    versions returned 0), and writes why to stderr only."""
    try:
        if credentials is None:
            port = int(server.add_insecure_port(address))
        else:
            port = int(server.add_secure_port(address, credentials))
    except RuntimeError:
        port = 0
    if not port:
        raise StartupError(f"cannot listen on {address}: the address is in use (or not available)")
    return port


def stop_server(server: grpc.Server, app: Gradwire, grace: float = 5.0) -> None:
    """Say NOT_SERVING (health watchers and load balancers hear it before anything else changes),
    stop accepting calls (streams end), ask the runs executing here to stop at their next epoch
    end and keep their checkpoints (they become interrupted, to continue elsewhere or after a
    restart), wait up to ``grace`` seconds, then close: the metrics endpoint answers until the
    calls are over, and the last spans are sent."""
    log.info("server stopping", extra={"grace_seconds": grace})
    _stop(server, app, grace)
    app.store.close()
    log.info("server stopped")


def _stop(server: grpc.Server, app: Gradwire, grace: float) -> None:
    """Stop whatever of a server has started (see :func:`stop_server`), its store aside."""
    running = _RUNNING.pop(server, None)
    if running is not None:
        running.health.stop()
    app.runs.close()  # watches end at once (UNAVAILABLE: watch again elsewhere or later)
    done = server.stop(grace)
    app.close(grace)
    done.wait()
    if running is not None:
        running.close()
