"""A real PostgreSQL refusing connections in the middle of a run, under a real server process.

The test makes a database of its own and takes it away by PostgreSQL's own means: it forbids new
connections to it (``ALLOW_CONNECTIONS false``) and ends the open ones, then gives it back. Every
stream ends with a status, every run either completes or is left to be resumed, and SIGTERM
stops the server, during the outage too.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import Outage
from helpers import ServerProcess

from gradwire.client import Client
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 8,
    "layers": [
        {"kind": "dense", "units": 32, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 2,
}
RNG = np.random.default_rng(8)
X = RNG.normal(size=(2000, 8))
Y = X[:, :1] * X[:, 1:2]


class TrainCall:
    """A Train call consumed on a thread: its events, and how it ended."""

    def __init__(self, client: Client, model_id: str, epochs: int, batch_size: int = 32) -> None:
        options = codec.options_from_dict({"epochs": epochs, "batch_size": batch_size})
        request = pb.TrainRequest(model_id=model_id, options=options)
        codec.array_to_tensor(X, into=request.inputs)
        codec.array_to_tensor(Y, into=request.targets)
        self.call = client.stub.Train(request, timeout=300)
        self.epochs: list[int] = []
        self.result: pb.TrainResult | None = None
        self.code = grpc.StatusCode.OK
        self.first_epoch = threading.Event()
        self.thread = threading.Thread(target=self._consume)
        self.thread.start()

    def _consume(self) -> None:
        try:
            for event in self.call:
                if event.HasField("result"):
                    self.result = event.result
                else:
                    self.epochs.append(event.progress.epoch)
                    self.first_epoch.set()
        except grpc.RpcError as error:
            self.code = error.code()
        self.first_epoch.set()

    def ended(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_a_short_outage_during_a_run_is_ridden_out(outage: Outage) -> None:
    settings = {
        "checkpoint_interval": 0.1,
        "heartbeat_seconds": 0.3,
        "poll_seconds": 0.1,
        "db_retry_seconds": 60,
    }
    server = ServerProcess(outage.url, **settings)
    try:
        with Client(server.address) as client:
            model = client.create_model(SPEC)
            # Batches of one: 120,000 steps, seconds of work, so the outage begins well before
            # the end on a fast machine too (with batches of 32 it could finish first).
            train = TrainCall(client, model.id, epochs=60, batch_size=1)
            assert train.first_epoch.wait(60)
            outage.refuse()
            server.wait_for_log("run commit failed; will retry")  # the job met the outage
            outage.restore()
            assert train.ended(120)
            assert train.code == grpc.StatusCode.OK
            assert train.result is not None
            assert (train.result.stop_reason, train.result.version) == ("max_epochs", 2)
            assert train.epochs == list(range(1, 61))  # each epoch once, none lost
            (run,) = client.model(model.id).history()
            assert [e["epoch"] for e in run.epochs] == train.epochs
        assert server.terminate(timeout=60) == 0
    finally:
        if server.process.poll() is None:
            server.kill()


def test_an_outage_at_the_end_ends_every_stream_and_sigterm_still_stops_the_server(outage: Outage) -> None:
    """The database goes away while the run trains and stays away past the retry bound: the run
    cannot record its end, the Train call ends UNAVAILABLE, SIGTERM stops the server during the
    outage; once the database is back, a new server finds the run and finishes it."""
    settings = {
        "checkpoint_interval": 1000,  # nothing commits before the end
        "heartbeat_seconds": 0.3,
        "lease_seconds": 1.0,
        "poll_seconds": 0.1,
        "db_retry_seconds": 1.0,
    }
    server = ServerProcess(outage.url, **settings)
    try:
        with Client(server.address) as client:
            model = client.create_model(SPEC)
            train = TrainCall(client, model.id, epochs=30)
            run_id = dict(train.call.initial_metadata())["gradwire-run-id"]
            assert server.wait_for_log("run claimed")["run"] == run_id  # it trains now
            outage.refuse()
            server.wait_for_log("run could not record its end; its lease will run out", timeout=120)
            assert train.ended(60)
            assert train.code == grpc.StatusCode.UNAVAILABLE
        assert server.terminate(timeout=60) == 0  # the database is still away
        outage.restore()
        server = ServerProcess(outage.url, **settings)
        with Client(server.address) as client:
            run = client.run(run_id)
            history = run.wait()  # reaped, queued again by itself, and run from its start
            assert (history.status, history.version) == ("completed", 2)
            assert [e["epoch"] for e in history.epochs] == list(range(1, 31))
            assert run.info.attempts == 2
    finally:
        if server.process.poll() is None:
            server.kill()


def test_calls_during_an_outage_are_unavailable_and_work_again_after_it(outage: Outage) -> None:
    """Every kind of call while PostgreSQL refuses connections ends UNAVAILABLE (what the SDK
    retries), never INTERNAL; once it is back, the same server answers them without a restart."""
    server = ServerProcess(outage.url, poll_seconds=0.1, db_retry_seconds=1.0)
    try:
        with Client(server.address) as client:
            model = client.create_model(SPEC)
            inputs = codec.array_to_tensor(X[:4])
            calls = {
                "GetModel": lambda: client.stub.GetModel(pb.GetModelRequest(model_id=model.id), timeout=30),
                "ListModels": lambda: client.stub.ListModels(pb.ListModelsRequest(), timeout=30),
                "Predict": lambda: client.stub.Predict(
                    pb.PredictRequest(model_id=model.id, inputs=inputs), timeout=30
                ),
                "CreateModel": lambda: client.stub.CreateModel(
                    pb.CreateModelRequest(spec=codec.spec_from_dict(SPEC)), timeout=30
                ),
                "ListRuns": lambda: client.stub.ListRuns(pb.ListRunsRequest(), timeout=30),
            }
            outage.refuse()
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (name, info.value.details())
            outage.restore()
            for call in calls.values():
                call()  # no error: the pool reconnects by itself
        assert server.terminate(timeout=60) == 0
    finally:
        if server.process.poll() is None:
            server.kill()
