"""The service end to end: a real server, the real SDK, SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import Running, two_spirals

from gradwire.client import Client, DeadlineExceededError, ModelBusyError, NotFoundError
from gradwire.engine import Network, NetworkSpec, numerical_gradients, one_hot
from gradwire.service.core.settings import LOCAL_EXECUTORS

SPIRAL_SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [
        {"kind": "dense", "units": 32, "activation": "relu", "init": "xavier_uniform"},
        {"kind": "dense", "units": 32, "activation": "relu", "init": "xavier_uniform"},
        {"kind": "dense", "units": 2, "activation": "softmax", "init": "xavier_uniform"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float64",
    "seed": 3,
}


@pytest.fixture(params=LOCAL_EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Every test here runs on each executor of the server's own machine: worker processes and
    threads (runs on Ray: tests/process/test_ray.py, on a cluster)."""
    return str(request.param)


def spirals(n: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, labels = two_spirals(n, 0.02, np.random.default_rng(1))
    return X, one_hot(labels, 2), labels


def test_create_train_predict_gradients_history(client: Client) -> None:
    X, Y, labels = spirals()
    model = client.create_model(SPIRAL_SPEC, name="spirals")
    assert (model.info.version, model.info.classifier) == (1, True)
    assert model.info.parameter_count == 32 * 3 + 32 * 33 + 33 * 2
    seen: list[int] = []
    history = model.fit(
        X,
        Y,
        epochs=100,
        batch_size=32,
        optimizer="adam",
        learning_rate=0.02,
        validation_split=0.2,
        callbacks=(lambda e: seen.append(e["epoch"]),),
    )
    assert seen == list(range(1, 101))  # one progress event per epoch, in order, before the result
    assert (history.stop_reason, history.version, model.info.version) == ("max_epochs", 2, 2)
    assert history.epochs[-1]["eta"] == 0.0
    assert history.epochs[0]["eta"] > 0.0
    assert set(history.epochs[0]["grad_norms"]) == {"0", "1", "2"}
    prediction = model.predict_full(X)
    assert prediction.version == 2
    assert np.mean(prediction.labels == labels) > 0.9
    np.testing.assert_allclose(prediction.outputs.sum(axis=1), 1.0)

    (run,) = model.history()
    assert [e["epoch"] for e in run.epochs] == seen
    assert run.epochs[-1]["val_loss"] == pytest.approx(history.epochs[-1]["val_loss"])
    assert (run.status, run.version) == ("completed", 2)


def test_gradients_match_the_engine_and_finite_differences(client: Client) -> None:
    X, Y, _ = spirals(4)
    model = client.create_model(SPIRAL_SPEC)
    remote = model.gradients(X, Y, numerical_check=True)
    local = Network(NetworkSpec.from_dict(SPIRAL_SPEC))  # same seed: the same initial weights
    loss, grads = local.loss_and_gradients(X, Y)
    numeric = numerical_gradients(local, X, Y)
    assert remote.loss == pytest.approx(loss, rel=1e-12)
    assert remote.version == 1
    for name, g in grads.items():
        np.testing.assert_allclose(remote.gradients[name], g, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(remote.gradients[name], numeric[name], rtol=1e-5, atol=1e-8)
    assert set(remote.max_relative_error) == {"0", "1", "2"}
    assert max(remote.max_relative_error.values()) < 1e-6
    assert model.refresh().version == 1  # asking for gradients changed nothing


def test_everything_is_still_there_after_a_restart(start_server: Callable[..., Running]) -> None:
    X, Y, _ = spirals(50)
    first = start_server()
    with Client(first.address) as client:
        model = client.create_model(SPIRAL_SPEC, name="kept")
        model.fit(X, Y, epochs=5, optimizer="adam", learning_rate=0.01)
        before = model.predict(X)
    second = start_server()  # a new process would see the same database
    with Client(second.address) as client:
        again = client.model(model.id)
        assert (again.info.name, again.info.version) == ("kept", 2)
        np.testing.assert_array_equal(again.predict(X), before)
        assert [len(run.epochs) for run in again.history()] == [5]
        initial = Network(NetworkSpec.from_dict(SPIRAL_SPEC)).predict(X)
        np.testing.assert_array_equal(again.predict(X, version=1), initial)


def test_training_again_continues_from_the_optimiser_state_of_the_version_it_starts_from(
    server: Running, client: Client
) -> None:
    X, Y, _ = spirals(50)
    model = client.create_model(SPIRAL_SPEC)
    model.fit(X, Y, epochs=3, optimizer="adam", restore_best=False)
    second = server.app.store.models.load_version(model.id)
    assert (second.version, second.optimizer_meta) == (2, {"name": "adam", "t": 3 * 4})  # 100 rows, batch 32
    model.fit(X, Y, epochs=2, optimizer="adam", restore_best=False)
    third = server.app.store.models.load_version(model.id)
    assert (third.version, third.optimizer_meta) == (3, {"name": "adam", "t": 5 * 4})
    assert model.info.version == 3


def test_cancelling_stops_training_and_publishes_nothing(client: Client) -> None:
    """A cancel abandons the run: its epochs stay in its history, the model keeps its version (it
    published its best weights so far, but only where the cancel reached it executing)."""
    X, Y, _ = spirals(2000)
    model = client.create_model(SPIRAL_SPEC)
    history = model.fit(X, Y, epochs=10_000, batch_size=8, callbacks=(lambda e: e["epoch"] == 2,))
    assert (history.status, history.stop_reason) == ("cancelled", "cancelled")
    (run,) = model.history()
    assert (run.status, run.stop_reason) == ("cancelled", "cancelled")
    assert 2 <= len(run.epochs) < 10_000
    assert [e["epoch"] for e in run.epochs] == list(range(1, len(run.epochs) + 1))
    assert run.version == history.version == 0  # none
    assert model.info.version == model.refresh().version == 1
    assert run.best_epoch >= 1


def test_a_deadline_cancels_the_run_too(client: Client) -> None:
    X, Y, _ = spirals(2000)
    model = client.create_model(SPIRAL_SPEC)
    with pytest.raises(DeadlineExceededError):
        model.fit(X, Y, epochs=100_000, batch_size=8, timeout=1.0)
    (info,) = client.list_runs(model.id)
    run = client.run(info.id)
    run.wait()  # it ends: cancelled by the deadline
    assert run.status == "cancelled"
    assert run.info.epochs_done < 100_000


def test_predict_answers_and_a_second_run_is_refused_while_a_model_trains(client: Client) -> None:
    X, Y, _ = spirals(500)
    model = client.create_model(SPIRAL_SPEC)
    other = client.create_model(SPIRAL_SPEC)
    observed: dict[str, Any] = {}

    def during_training(epoch: dict[str, Any]) -> bool:
        observed["predict"] = model.predict_full(X[:5])  # the same model, while it trains
        observed["other"] = other.predict(X[:5])
        observed["training"] = model.refresh().training
        with pytest.raises(ModelBusyError) as info:
            model.fit(X, Y, epochs=1)
        observed["busy"] = info.value
        return True

    model.fit(X, Y, epochs=1000, callbacks=(during_training,))
    assert observed["predict"].version == 1
    assert observed["predict"].outputs.shape == (5, 2)
    assert observed["training"] is True
    assert observed["busy"].code == grpc.StatusCode.ABORTED


def test_concurrent_predictions_from_many_threads(client: Client) -> None:
    X, _, _ = spirals(20)
    model = client.create_model(SPIRAL_SPEC)
    expected = model.predict(X)
    results: list[np.ndarray] = []

    def predict() -> None:
        for _ in range(10):
            results.append(model.predict(X))

    threads = [threading.Thread(target=predict) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_health_and_reflection_are_served(server: Running) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="gradwire.v1.Trainer"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
        names = {s.name for s in answer.list_services_response.service}
        assert {"gradwire.v1.Trainer", "grpc.health.v1.Health"} <= names


def test_listing_pages_and_deleting(client: Client) -> None:
    ids = [client.create_model(SPIRAL_SPEC, name=f"m{i}").id for i in range(5)]
    assert [m.id for m in client.list_models(page_size=2)] == ids
    client.delete_model(ids[0])
    assert [m.id for m in client.list_models(page_size=2)] == ids[1:]


def test_every_call_is_logged_with_its_status(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gradwire.rpc")
    model = client.create_model(SPIRAL_SPEC)
    with pytest.raises(NotFoundError):
        client.model("no-such-model")
    calls = [(r.method, r.code) for r in caplog.records if r.name == "gradwire.rpc"]  # type: ignore[attr-defined]
    assert ("/gradwire.v1.Trainer/CreateModel", "OK") in calls
    assert ("/gradwire.v1.Trainer/GetModel", "NOT_FOUND") in calls
    assert model.id
