"""Real ``gradwire serve`` processes, seen from outside: honest health, clean starts and stops.

Health (``grpc.health.v1``) says NOT_SERVING while the database is away and SERVING once it is
back, and NOT_SERVING as SIGTERM arrives, before its Watch streams end; a second server on an
address in use refuses to start and leaves the first alone; ``fit`` returns a run that ended
though the server stopped before ``fit`` could ask it anything more, and a run that SIGTERM
interrupted is followed to its end once a server is back.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Outage
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import GRADWIRE, ServerProcess

from gradwire.client import Client

SERVICES = ("", "gradwire.v1.Trainer")
"""The whole server, and the gradwire service."""
ENDED = "ended"
FOREVER = 60.0  # a bound no passing test comes near: waiting it out is the failure
SETTINGS = {"checkpoint_interval": 0.05, "heartbeat_seconds": 0.2, "poll_seconds": 0.1}
"""Commit every epoch, probe the database five times a second."""
SPEC: dict[str, Any] = {
    "input_dim": 4,
    "layers": [
        {"kind": "dense", "units": 16, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 3,
}
RNG = np.random.default_rng(6)
X = RNG.normal(size=(1000, 4))
Y = X[:, :1] * X[:, 1:2]


class HealthWatch:
    """A health Watch stream of one service name, read on a thread: each status as it comes
    (by name), then :data:`ENDED`; :attr:`code` says how the stream ended."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        request = health_pb2.HealthCheckRequest(service=service)
        self.call = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=120)
        self.seen: queue.Queue[str] = queue.Queue()
        self.code: grpc.StatusCode | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.seen.put(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.code = error.code()
        self.seen.put(ENDED)

    def next(self) -> str:
        return self.seen.get(timeout=FOREVER)


def next_of_each(watches: list[HealthWatch]) -> list[str]:
    return [watch.next() for watch in watches]


def watch_ended_ok(entry: dict[str, Any]) -> bool:
    """A WatchRun call logged as ended OK: its last message, the run's ending, was sent."""
    return str(entry.get("method", "")).endswith("/WatchRun") and entry.get("code") == "OK"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gradwire.db'}"


def test_health_is_not_serving_while_the_database_is_away_and_serving_once_it_is_back(
    outage: Outage,
) -> None:
    with ServerProcess(outage.url, **SETTINGS) as server, grpc.insecure_channel(server.address) as channel:
        watches = [HealthWatch(channel, name) for name in SERVICES]
        assert next_of_each(watches) == ["SERVING", "SERVING"]
        outage.refuse()
        assert next_of_each(watches) == ["NOT_SERVING", "NOT_SERVING"]
        with Client(server.address, retries=0) as client:
            assert not client.healthy()
        outage.restore()
        assert next_of_each(watches) == ["SERVING", "SERVING"]
        server.wait_for_log("database reachable again; health SERVING")
        changes = [e["message"] for e in server.logs if "health" in str(e.get("message"))]
        assert changes == [
            "database unreachable; health NOT_SERVING",
            "database reachable again; health SERVING",
        ]
        with Client(server.address) as client:
            assert client.healthy()
            client.create_model(SPEC)  # and it works again
        assert server.terminate() == 0


def test_sigterm_says_not_serving_on_every_watch_before_the_watch_ends(database_url: str) -> None:
    with ServerProcess(database_url, **SETTINGS) as server, grpc.insecure_channel(server.address) as channel:
        watches = [HealthWatch(channel, name) for name in SERVICES]
        assert next_of_each(watches) == ["SERVING", "SERVING"]
        server.process.terminate()  # SIGTERM
        assert next_of_each(watches) == ["NOT_SERVING", "NOT_SERVING"]
        assert next_of_each(watches) == [ENDED, ENDED]
        assert [watch.code for watch in watches] == [grpc.StatusCode.OK] * 2  # ended by the server,
        # once said, not cancelled when the grace period ran out
        assert server.process.wait(timeout=FOREVER) == 0


def test_a_second_server_on_an_address_in_use_refuses_to_start_and_the_first_serves_on(
    sqlite_url: str,
) -> None:
    with ServerProcess(sqlite_url, **SETTINGS) as first:
        argv = [GRADWIRE, "serve", "--address", first.address, "--database-url", sqlite_url, "--auth", "off"]
        second = subprocess.run(argv, capture_output=True, text=True, timeout=FOREVER)
        assert second.returncode != 0
        assert "listening" not in second.stdout
        said = [line for line in second.stderr.splitlines() if line.startswith("gradwire")]
        assert said == [
            f"gradwire: cannot listen on {first.address}: the address is in use (or not available)"
        ]
        with Client(first.address) as client:
            assert client.healthy()
            model = client.create_model(SPEC)
            assert client.model(model.id).id == model.id
        assert first.terminate() == 0


@pytest.mark.parametrize(
    ("ending", "epochs", "version"),
    [("completed", 3, 2), ("cancelled", 100_000, 1)],  # cancelled long before it could complete
)
def test_fit_returns_a_run_that_ended_though_the_server_stopped_before_fit_returned(
    sqlite_url: str, ending: str, epochs: int, version: int
) -> None:
    """The server sends the run's ending and stops before fit can ask it anything more (the
    model's new version): fit returns the run's history all the same."""
    server = ServerProcess(sqlite_url, **SETTINGS)
    stopped: list[int] = []
    with server, Client(server.address) as client, Client(server.address) as other:
        model = client.create_model(SPEC)

        def stop_once_the_run_ended(epoch: dict[str, Any]) -> None:
            if stopped or epoch["epoch"] != (1 if ending == "cancelled" else epochs):
                return
            if ending == "cancelled":
                other.run(next(other.list_runs(model_id=model.id)).id).cancel()
            server.wait_for_entry(watch_ended_ok)  # fit's watch has been sent the run's ending
            stopped.append(server.terminate())  # and the server is gone before fit asks for more

        history = model.fit(X, Y, epochs=epochs, callbacks=(stop_once_the_run_ended,))
    assert stopped == [0]
    assert (history.status, history.version or 1) == (ending, version)  # a cancelled run publishes none
    assert [e["epoch"] for e in history.epochs] == list(range(1, len(history.epochs) + 1))
    assert (model.info.version, model.info.training) == (version, False)  # from the run: nobody to ask


def test_fit_follows_a_run_that_sigterm_interrupted_to_its_end_once_a_server_is_back(sqlite_url: str) -> None:
    """SIGTERM stops the run at an epoch's end (interrupted, its checkpoint kept); fit's watch
    reconnects to the server started on the same address, which queues the run again."""
    servers = [ServerProcess(sqlite_url, **SETTINGS)]
    address = servers[0].address

    def restart_at_the_first_epoch(epoch: dict[str, Any]) -> None:
        if len(servers) == 1:
            assert servers[0].terminate() == 0
            servers.append(ServerProcess(sqlite_url, address=address, **SETTINGS))

    try:
        with Client(address) as client:
            model = client.create_model(SPEC)
            history = model.fit(X, Y, epochs=200, callbacks=(restart_at_the_first_epoch,))
            assert len(servers) == 2
            assert (history.status, history.version) == ("completed", 2)
            assert [e["epoch"] for e in history.epochs] == list(range(1, 201))  # each once, none lost
            assert client.run(history.run_id).info.attempts == 2  # it was interrupted, and resumed
        assert servers[1].terminate() == 0
    finally:
        for server in servers:
            server.__exit__()
