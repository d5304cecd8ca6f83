"""Operations, through a real server: the metrics endpoint scraped over HTTP, the access line and
its request id, JSON log lines, and tracing switched by the standard OTEL_* variables."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from gradwire.client import Client, InvalidArgumentError
from gradwire.service import Settings, create_server, stop_server
from gradwire.service.core.errors import StartupError
from gradwire.service.core.logformat import TextFormatter
from gradwire.service.transport.logs import REQUEST_ID, JsonFormatter
from gradwire.service.transport.server import AUTH_OFF, Operations, operations, trace_exporters
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.vocabulary import RunStatus

SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 3,
}
RNG = np.random.default_rng(5)
X = RNG.normal(size=(48, 3))
Y = X[:, :1] - X[:, 1:2]
TRAINER = "/gradwire.v1.Trainer"
MADE_UP = re.compile(r"[0-9a-f]{32}")
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Served:
    server: grpc.Server
    address: str
    app: Any

    @property
    def running(self) -> Operations:
        running = operations(self.server)
        assert running is not None
        return running


@pytest.fixture
def serve(database_url: str) -> Iterator[Callable[..., Served]]:
    """Starts servers on ``database_url`` with these settings; stops them all. The server object
    itself is kept (the shared fixture keeps the address only): what runs beside it is asked of it.
    Runs execute on threads unless a test asks for worker processes (which take a second to stop)."""
    started: list[Served] = []

    def start(**overrides: Any) -> Served:
        values = {"poll_seconds": 0.1, "auth": False, "executor": "thread", **overrides}
        settings = Settings(address="127.0.0.1:0", database_url=database_url, **values)
        server, port, app = create_server(settings)
        started.append(Served(server, f"127.0.0.1:{port}", app))
        return started[-1]

    yield start
    for served in started:
        stop_server(served.server, served.app, grace=30)


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the OTEL_* variables, whatever the environment of the tests has."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def access_lines() -> Iterator[list[logging.LogRecord]]:
    """The access lines written while the test runs."""
    lines: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record)

    logger, handler = logging.getLogger("gradwire.rpc"), Keep()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def scrape(served: Served) -> Samples:
    """Every sample the metrics endpoint serves now, over HTTP, by (name, labels)."""
    metrics = served.running.metrics
    assert metrics is not None
    assert metrics.address is not None
    with urllib.request.urlopen(f"http://{metrics.address}/metrics", timeout=30) as response:
        assert response.status == 200
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def total(samples: Samples, name: str) -> float:
    """The sum of a metric over all its labels (0 if it has no sample yet)."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


# ------------------------------------------------------------------------------------ metrics


def test_every_call_is_counted_by_method_and_code_with_its_duration(serve: Callable[..., Served]) -> None:
    served = serve(metrics_address="127.0.0.1:0")
    with Client(served.address, timeout=60) as client:
        for _ in range(3):
            client.create_model(SPEC)
        with pytest.raises(InvalidArgumentError):
            client.create_model({**SPEC, "input_dim": 0})
    samples = scrape(served)
    create = f"{TRAINER}/CreateModel"
    assert samples[key("gradwire_rpcs_total", method=create, code="OK")] == 3
    assert samples[key("gradwire_rpcs_total", method=create, code="INVALID_ARGUMENT")] == 1
    assert samples[key("gradwire_rpc_seconds_count", method=create)] == 4
    assert samples[key("gradwire_rpc_seconds_bucket", method=create, le="+Inf")] == 4
    assert 0 < samples[key("gradwire_rpc_seconds_sum", method=create)] < 60


def trained(served: Served, name: str, at_least: float) -> Samples:
    """A scrape once the counter ``name`` reached ``at_least``: a worker process tells the server
    what it trained as its run ends, a moment after the run's end is committed (bounded: 30 s)."""
    deadline = time.monotonic() + 30
    while (samples := scrape(served))[key(name)] < at_least and time.monotonic() < deadline:
        time.sleep(0.01)  # a polling interval, for a figure that is eventually exact by design
    return samples


def test_runs_by_status_queue_depth_and_training_after_a_fit(serve: Callable[..., Served]) -> None:
    served = serve(metrics_address="127.0.0.1:0", executor="process")  # a worker's word reaches the server
    before = scrape(served)
    with Client(served.address, timeout=60) as client:
        client.create_model(SPEC).fit(X, Y, epochs=4, batch_size=16)
    after = scrape(served)
    assert {status: after[key("gradwire_runs", status=status)] for status in RunStatus} == {
        status: 1 if status == RunStatus.COMPLETED else 0 for status in RunStatus
    }
    assert after[key("gradwire_queue_depth")] == 0
    epochs, samples = "gradwire_epochs_trained_total", "gradwire_samples_trained_total"
    after = trained(served, epochs, before[key(epochs)] + 4)  # its worker's word comes as the run ends
    assert after[key(epochs)] - before[key(epochs)] == 4  # the process's totals: other tests trained too
    assert after[key(samples)] - before[key(samples)] == 4 * len(X)
    assert after[key("gradwire_rpcs_total", method=f"{TRAINER}/StartRun", code="OK")] == 1


def test_a_scrape_the_database_fails_answers_with_the_rest_and_counts_the_error(
    serve: Callable[..., Served],
) -> None:
    served = serve(metrics_address="127.0.0.1:0")
    with Client(served.address, timeout=60) as client:
        client.create_model(SPEC)
    before = scrape(served)
    assert key("gradwire_runs", status="queued") in before
    engine = served.app.store.engine
    with engine.begin() as connection:  # the runs' table is away: every query of it fails
        connection.execute(text("ALTER TABLE training_runs RENAME TO training_runs_away"))
    try:
        during = scrape(served)
    finally:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE training_runs_away RENAME TO training_runs"))
    assert not {name for name, _ in during} & {"gradwire_runs", "gradwire_queue_depth"}
    assert during[key("gradwire_rpcs_total", method=f"{TRAINER}/CreateModel", code="OK")] == 1
    assert during[key("process_resident_memory_bytes")] > 0
    errors = "gradwire_database_errors_total"
    assert total(during, errors) > total(before, errors)
    assert key("gradwire_runs", status="queued") in scrape(served)  # and back once the table is


def test_the_process_is_described_too(serve: Callable[..., Served]) -> None:
    samples = scrape(serve(metrics_address="127.0.0.1:0"))
    assert samples[key("process_resident_memory_bytes")] > 0
    assert samples[key("process_cpu_seconds_total")] > 0
    assert samples[key("process_open_fds")] > 0
    assert total(samples, "python_gc_collections_total") > 0
    assert any(name == "python_info" for name, _ in samples)


def test_metrics_are_off_without_an_address(serve: Callable[..., Served]) -> None:
    served = serve()
    assert served.running.metrics is None
    with Client(served.address, timeout=60) as client:  # calls go on without anything to count them
        client.create_model(SPEC)


def test_metrics_stop_with_the_server(database_url: str) -> None:
    settings = Settings(address="127.0.0.1:0", database_url=database_url, metrics_address="127.0.0.1:0")
    server, _, app = create_server(settings)
    running = operations(server)
    assert running is not None
    assert running.metrics is not None
    metrics = running.metrics
    stop_server(server, app)
    assert metrics.address is None
    assert operations(server) is None


def test_a_metrics_address_in_use_or_malformed_is_refused(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        for given, words in ((address, f"cannot serve metrics on {address}"), ("9100", "must be host:port")):
            settings = Settings(address="127.0.0.1:0", database_url=database_url, metrics_address=given)
            with pytest.raises(StartupError, match=words):
                create_server(settings)


# ------------------------------------------------------------------------------------ access line


def test_the_request_id_comes_back_and_is_in_the_access_line(
    serve: Callable[..., Served], access_lines: list[logging.LogRecord]
) -> None:
    served = serve()
    with Client(served.address, timeout=60) as client:
        _, call = client.stub.ListModels.with_call(pb.ListModelsRequest(), metadata=((REQUEST_ID, "req-42"),))
    assert dict(call.trailing_metadata())[REQUEST_ID] == "req-42"
    line = next(record for record in access_lines if getattr(record, "request_id", "") == "req-42")
    fields = {name: getattr(line, name) for name in ("method", "code", "peer", "request_id", "tenant", "key")}
    assert fields == {
        "method": f"{TRAINER}/ListModels",
        "code": "OK",
        "peer": fields["peer"],
        "request_id": "req-42",
        "tenant": "default",  # authentication is off here: no key
        "key": None,
    }
    assert fields["peer"].startswith("ipv4:127.0.0.1:")
    assert 0 <= line.__dict__["duration_ms"] < 60_000


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 129])
def test_a_request_id_missing_or_unfit_for_a_log_is_made_up(
    serve: Callable[..., Served], given: str | None
) -> None:
    served = serve()
    metadata = () if given is None else ((REQUEST_ID, given),)
    with Client(served.address, timeout=60) as client:
        _, call = client.stub.ListModels.with_call(pb.ListModelsRequest(), metadata=metadata)
    made = dict(call.trailing_metadata())[REQUEST_ID]
    assert MADE_UP.fullmatch(made)
    assert made != given


def test_a_failed_call_keeps_its_rich_status_beside_the_request_id(serve: Callable[..., Served]) -> None:
    served = serve()
    with Client(served.address, timeout=60) as client, pytest.raises(grpc.RpcError) as raised:
        client.stub.CreateModel.with_call(
            pb.CreateModelRequest(spec=codec.spec_from_dict({**SPEC, "input_dim": 0})),
            metadata=((REQUEST_ID, "req-bad"),),
        )
    error: Any = raised.value
    assert dict(error.trailing_metadata())[REQUEST_ID] == "req-bad"
    status = rpc_status.from_call(error)
    assert status is not None
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.details  # the BadRequest naming the field is still there


def test_train_sends_its_run_id_first_and_the_request_id_at_the_end(serve: Callable[..., Served]) -> None:
    served = serve()
    with Client(served.address, timeout=60) as client:
        model = client.create_model(SPEC)
        request = pb.TrainRequest(model_id=model.id, options=codec.options_from_dict({"epochs": 2}))
        codec.array_to_tensor(X, into=request.inputs)
        codec.array_to_tensor(Y, into=request.targets)
        call = client.stub.Train(request, metadata=((REQUEST_ID, "req-train"),), timeout=60)
        events = list(call)
        run_id = dict(call.initial_metadata())["gradwire-run-id"]
        assert client.run(run_id).status == "completed"
    assert events
    assert events[-1].WhichOneof("event") == "result"
    assert dict(call.trailing_metadata())[REQUEST_ID] == "req-train"


def test_log_lines_are_json_with_iso_utc_times_and_fields(
    serve: Callable[..., Served], access_lines: list[logging.LogRecord]
) -> None:
    served = serve()
    with Client(served.address, timeout=60) as client:
        client.stub.ListModels.with_call(pb.ListModelsRequest(), metadata=((REQUEST_ID, "req-json"),))
    record = next(record for record in access_lines if getattr(record, "request_id", "") == "req-json")
    entry = json.loads(JsonFormatter().format(record))
    assert ISO_UTC_MS.fullmatch(entry["time"]), entry["time"]
    written = datetime.fromisoformat(entry["time"])
    assert written.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - written) < timedelta(minutes=5)
    assert {k: entry[k] for k in ("level", "logger", "message", "method", "code", "request_id")} == {
        "level": "INFO",
        "logger": "gradwire.rpc",
        "message": "rpc",
        "method": f"{TRAINER}/ListModels",
        "code": "OK",
        "request_id": "req-json",
    }
    assert isinstance(entry["duration_ms"], float)


# ------------------------------------------------------------------------------------ tracing


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "gradwire"}, []),  # naming the service asks for no exporter
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ["otlp_proto_grpc"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp_proto_grpc"]),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ["otlp_proto_http"],
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp_proto_grpc", "console"]),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_otel_variables_choose_the_exporters(env: dict[str, str], exporters: list[str]) -> None:
    assert trace_exporters(env) == exporters


@pytest.mark.usefixtures("no_otel")
def test_without_otel_variables_nothing_traces(serve: Callable[..., Served]) -> None:
    served = serve()
    assert served.running.tracing is None
    assert served.running.health is not None


@pytest.mark.usefixtures("no_otel")
def test_tracing_wraps_every_call_without_changing_it(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    served = serve(metrics_address="127.0.0.1:0")
    tracing = served.running.tracing
    assert tracing is not None
    assert list(tracing.exporters) == ["console"]
    assert tracing.provider.resource.attributes["service.name"] == "gradwire"
    with Client(served.address, timeout=60) as client:
        _, call = client.stub.ListModels.with_call(
            pb.ListModelsRequest(), metadata=((REQUEST_ID, "req-otel"),)
        )
    assert dict(call.trailing_metadata())[REQUEST_ID] == "req-otel"
    assert scrape(served)[key("gradwire_rpcs_total", method=f"{TRAINER}/ListModels", code="OK")] == 1


@pytest.mark.usefixtures("no_otel")
def test_tracing_asked_for_but_not_installed_is_one_warning(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setitem(
        sys.modules, "opentelemetry.sdk.trace", None
    )  # imports of it now fail, as uninstalled
    with caplog.at_level(logging.WARNING, logger="gradwire.service.transport.server"):
        served = serve()
    warnings = [
        r
        for r in caplog.records
        if r.name == "gradwire.service.transport.server"
        and r.levelno >= logging.WARNING
        and r.msg != AUTH_OFF
    ]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["tracing is off"]
    assert "gradwire[otel]" in warnings[0].getMessage()
    assert served.running.tracing is None
    with Client(served.address, timeout=60) as client:
        client.create_model(SPEC)


def test_text_log_lines_keep_the_fields_json_lines_have() -> None:
    record = logging.makeLogRecord(
        {"name": "gradwire.x", "levelname": "ERROR", "msg": "worker cannot use the database; exiting"}
        | {"run": "r1", "error": 'too many "clients"', "attempt": 2, "empty": ""}
    )
    line = TextFormatter().format(record)
    assert line.endswith(
        ' ERROR gradwire.x worker cannot use the database; exiting run=r1 error="too many \\"clients\\""'
        ' attempt=2 empty=""'
    ), line
    plain = logging.makeLogRecord({"name": "gradwire.x", "levelname": "INFO", "msg": "server stopped"})
    assert TextFormatter().format(plain).endswith(" INFO gradwire.x server stopped")
