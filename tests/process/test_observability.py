"""``gradwire serve`` as a real child process: its log is JSON lines with UTC times, its start,
configuration and stop are lines with fields, its metrics describe the process itself, and with
``OTEL_TRACES_EXPORTER=console`` it writes a span for each RPC to stdout."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime, timedelta
from typing import Any

import pytest
from helpers import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

from gradwire.client import Client

SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"}],
    "loss": "squared_error",
}
GET_MODEL = "/gradwire.v1.Trainer/GetModel"


def spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects in ``text``: the console exporter writes each span as indented JSON."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        span, end = decoder.raw_decode(text, at)
        found.append(span)
        at = text.find("{", end)
    return found


def metrics(address: str) -> dict[str, float]:
    """The unlabelled samples the endpoint at ``address`` serves, by name, over HTTP."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        body = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if not sample.labels
    }


@pytest.fixture
def console_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard variables ask for spans on stdout (the child takes this environment)."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")


@pytest.mark.usefixtures("console_tracing")
def test_a_served_process_logs_json_serves_its_metrics_and_traces_its_calls(database_url: str) -> None:
    with ServerProcess(database_url, metrics_address="127.0.0.1:0") as server:
        started = server.wait_for_log("server started")
        assert started["tracing"] == ["console"]
        configuration = server.wait_for_log("configuration")["settings"]
        assert configuration["metrics_address"] == "127.0.0.1:0"
        assert configuration["max_streams"] > 0
        process = metrics(started["metrics_address"])
        assert process["process_resident_memory_bytes"] > 0
        assert process["process_start_time_seconds"] > 0
        with Client(server.address, timeout=60) as client:
            model = client.create_model(SPEC)
            assert client.model(model.id).info.id == model.info.id  # one GetModel
        assert server.terminate() == 0
        server.wait_for_log("server stopped")
        assert server.process.stdout is not None
        written = spans(server.process.stdout.read())  # the last spans go out as the server stops
    traced = [span for span in written if span["name"] == GET_MODEL]
    assert len(traced) == 1, [span["name"] for span in written]
    assert traced[0]["kind"] == "SpanKind.SERVER"
    assert traced[0]["resource"]["attributes"]["service.name"] == "gradwire"
    for entry in server.logs:  # every line parsed as JSON (helpers keeps other lines as message only)
        assert "time" in entry, entry
        assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
