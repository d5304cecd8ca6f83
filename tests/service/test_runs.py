"""Runs as durable jobs, through a real server: start, watch, cancel, resume, limits, receipts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import Running
from sqlalchemy import text

from gradwire.client import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelBusyError,
    NotFoundError,
    ResourceExhaustedError,
    Run,
    RunFailedError,
)
from gradwire.engine import Network, NetworkSpec, TrainConfig, Trainer
from gradwire.service.core.settings import LOCAL_EXECUTORS
from gradwire.service.execution.jobs import checkpoint_of, new_epoch
from gradwire.storage import DEFAULT_TENANT as T
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.digest import weights_digest

SPEC: dict[str, Any] = {
    "input_dim": 4,
    "layers": [
        {"kind": "dense", "units": 16, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 7,
}
RNG = np.random.default_rng(11)
X = RNG.normal(size=(256, 4))
Y = np.sin(X[:, :1]) + 0.1 * RNG.normal(size=(256, 1))
LONG = {"epochs": 100_000, "batch_size": 1}
"""Options of a run that goes on until it is cancelled."""


@pytest.fixture(params=LOCAL_EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Every test here runs on each executor of the server's own machine: worker processes and
    threads (runs on Ray: tests/process/test_ray.py, on a cluster)."""
    return str(request.param)


def events(client: Client, run_id: str, after: int = 0) -> Iterator[pb.RunEvent]:
    return iter(client.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_epoch=after), timeout=120))


def first_epoch(client: Client, run: Run) -> int:
    """Block until the run has committed an epoch (it is running); that epoch's number."""
    return next(run.epochs())["epoch"]


CONFLICT_EPOCHS = 300
"""Epochs of one minibatch a row: seconds of training after the first epoch commits, so that
another writer moves the model's version before the run ends by itself."""


def train_request(model_id: str, epochs: int = 100_000, batch_size: int = 1) -> pb.TrainRequest:
    request = pb.TrainRequest(
        model_id=model_id, options=codec.options_from_dict({"epochs": epochs, "batch_size": batch_size})
    )
    codec.array_to_tensor(X, into=request.inputs)
    codec.array_to_tensor(Y, into=request.targets)
    return request


# ------------------------------------------------------------------------------------ life of a run


def test_a_run_is_queued_at_once_and_followed_to_its_end(client: Client) -> None:
    model = client.create_model(SPEC)
    run = model.start_run(X, Y, epochs=12, batch_size=32, optimizer="adam", learning_rate=0.01)
    assert (run.status, run.info.base_version, run.info.epochs_planned) == ("queued", 1, 12)
    streamed = list(events(client, run.id))
    assert [e.progress.epoch for e in streamed[:-1]] == list(range(1, 13))
    result = streamed[-1].result
    assert (result.status, result.stop_reason, result.version, result.epochs_done) == (
        "completed",
        "max_epochs",
        2,
        12,
    )
    assert client.run(run.id).info.status == "completed"
    assert [r.id for r in client.list_runs(model.id, statuses=("completed",))] == [run.id]
    assert list(client.list_runs(model.id, statuses=("queued", "running"))) == []
    assert model.refresh().version == 2


def test_a_watcher_that_reconnects_from_its_cursor_misses_and_repeats_nothing(client: Client) -> None:
    model = client.create_model(SPEC)
    run = model.start_run(X, Y, epochs=40, batch_size=8)
    stream = client.stub.WatchRun(pb.WatchRunRequest(run_id=run.id), timeout=120)
    seen = []
    for event in stream:
        seen.append(event.progress.epoch)
        if len(seen) == 3:
            stream.cancel()  # the client goes away in the middle
            break
    rest = list(events(client, run.id, after=seen[-1]))
    seen += [e.progress.epoch for e in rest[:-1]]
    assert seen == list(range(1, 41))
    assert rest[-1].result.status == "completed"
    again = list(events(client, run.id))  # after the end: every committed epoch, then the result
    assert [e.progress.epoch for e in again[:-1]] == seen


def test_a_watch_that_asks_for_epochs_together_gets_each_once_in_order_at_most_as_many_as_asked(
    client: Client,
) -> None:
    model = client.create_model(SPEC)
    history = model.fit(X, Y, epochs=7, batch_size=64)
    assert [e["epoch"] for e in history.epochs] == list(range(1, 8))  # the SDK asks for them together

    def watched(per_event: int, after: int = 0) -> list[list[int]]:
        request = pb.WatchRunRequest(run_id=history.run_id, after_epoch=after, max_epochs_per_event=per_event)
        streamed = list(client.stub.WatchRun(request, timeout=60))
        assert streamed[-1].WhichOneof("event") == "result"
        kinds = {event.WhichOneof("event") for event in streamed[:-1]}
        assert kinds == ({"epochs"} if per_event > 1 else {"progress"})
        if per_event > 1:
            return [[e.epoch for e in event.epochs.epochs] for event in streamed[:-1]]
        return [[event.progress.epoch] for event in streamed[:-1]]

    assert watched(500) == [[1, 2, 3, 4, 5, 6, 7]]  # a finished run's epochs: one event
    assert watched(3) == [[1, 2, 3], [4, 5, 6], [7]]
    assert watched(3, after=5) == [[6, 7]]
    assert watched(0) == watched(1) == [[n] for n in range(1, 8)]  # as before: one at a time
    with pytest.raises(grpc.RpcError) as raw:
        list(client.stub.WatchRun(pb.WatchRunRequest(run_id=history.run_id, max_epochs_per_event=-1)))
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_epochs_per_event" in raw.value.details()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"loss_threshold": 0.2, "optimizer": "adam", "learning_rate": 0.01}, "loss_threshold"),
        (
            {"patience": 2, "validation_split": 0.25, "optimizer": "adam", "learning_rate": 0.3},
            "early_stopping",
        ),
    ],
)
def test_the_epoch_that_stops_a_run_is_recorded_and_streamed(
    client: Client, options: dict[str, Any], reason: str
) -> None:
    model = client.create_model(SPEC)
    history = model.fit(X, Y, epochs=2000, batch_size=32, restore_best=False, **options)
    assert history.stop_reason == reason
    (run,) = model.history()
    numbers = [e["epoch"] for e in history.epochs]
    assert numbers == [e["epoch"] for e in run.epochs] == list(range(1, len(numbers) + 1))
    assert client.run(history.run_id).info.epochs_done == numbers[-1]
    assert history.best_epoch in numbers
    if reason == "loss_threshold":
        assert history.epochs[-1]["train_loss"] <= 0.2 < history.epochs[-2]["train_loss"]


@pytest.mark.parametrize(("optimizer", "rate"), [("adam", 1e300), ("sgd", 1e308)])
def test_a_blow_up_does_not_poison_the_next_run(client: Client, optimizer: str, rate: float) -> None:
    model = client.create_model(SPEC)
    blown = model.fit(X, Y, epochs=5, batch_size=32, optimizer=optimizer, learning_rate=rate)
    assert blown.stop_reason == "non_finite"  # 1e308 with SGD ended INTERNAL (a float power overflowed)
    calm = model.fit(X, Y, epochs=5, batch_size=32, optimizer="adam", learning_rate=0.01)
    assert (calm.stop_reason, len(calm.epochs)) == ("max_epochs", 5)
    assert all(np.isfinite(e["train_loss"]) for e in calm.epochs)


def test_a_run_carries_a_receipt_matching_the_weights_it_published(client: Client) -> None:
    model = client.create_model(SPEC)
    history = model.fit(X, Y, epochs=3, batch_size=32, seed=42)
    receipt = client.run(history.run_id).info.receipt
    weights = model.export()
    assert receipt["weights_sha256"] == weights_digest(weights)
    assert (receipt["seed"], receipt["spec_seed"], receipt["base_version"]) == (42, 7, 1)
    assert receipt["datasets"] == client.run(history.run_id).info.datasets
    assert set(receipt["datasets"]) == {"inputs", "targets"}
    assert receipt["numpy_version"] == np.__version__
    assert receipt["gradwire_version"]


def test_export_gives_a_versions_arrays_in_pieces(client: Client) -> None:
    wide = {**SPEC, "input_dim": 300, "layers": [{"kind": "dense", "units": 600}, SPEC["layers"][1]]}
    model = client.create_model(wide)  # 300 x 600 float64: 1.4 MiB, two pieces
    initial = Network(NetworkSpec.from_dict(wide)).state_arrays()
    exported = model.export(version=1)
    assert list(exported) == list(initial)
    for name, array in initial.items():
        np.testing.assert_array_equal(exported[name], array)
    pieces = list(client.stub.ExportModel(pb.ExportModelRequest(model_id=model.id), timeout=30))
    assert max(len(p.data) for p in pieces) <= 1 << 20
    assert len([p for p in pieces if p.name == "0.W"]) == 2
    with pytest.raises(NotFoundError):
        model.export(version=5)


# ------------------------------------------------------------------------------------ cancel and queue


def test_a_cancelled_queued_run_never_starts(start_server: Callable[..., Running]) -> None:
    running = start_server(train_workers=1)
    with Client(running.address) as client:
        busy = client.create_model(SPEC).start_run(X, Y, **LONG)
        first_epoch(client, busy)  # the only worker is taken
        waiting = client.create_model(SPEC).start_run(X, Y, epochs=5)
        assert waiting.refresh().status == "queued"
        assert waiting.cancel().status == "cancelled"
        busy.cancel()
        assert busy.wait().status == "cancelled"
        info = waiting.refresh()
        assert (info.status, info.epochs_done, info.attempts) == ("cancelled", 0, 0)


def test_the_queue_is_bounded(start_server: Callable[..., Running]) -> None:
    running = start_server(train_workers=1, max_queued_runs=1)
    with Client(running.address) as client:
        busy = client.create_model(SPEC).start_run(X, Y, **LONG)
        first_epoch(client, busy)
        queued = client.create_model(SPEC).start_run(X, Y, epochs=1)
        with pytest.raises(ResourceExhaustedError, match="queued"):
            client.create_model(SPEC).start_run(X, Y, epochs=1)
        for run in (queued, busy):
            run.cancel()


def test_one_queued_or_running_run_per_model(client: Client) -> None:
    model = client.create_model(SPEC)
    run = model.start_run(X, Y, **LONG)
    with pytest.raises(ModelBusyError, match=run.id):
        model.start_run(X, Y, epochs=1)
    with pytest.raises(ModelBusyError):
        model.delete()
    run.cancel()
    assert run.wait().status == "cancelled"
    model.delete()


def test_a_finished_run_cannot_resume(client: Client) -> None:
    model = client.create_model(SPEC)
    history = model.fit(X, Y, epochs=1)
    with pytest.raises(FailedPreconditionError, match="interrupted"):
        client.run(history.run_id).resume()


def test_a_queued_train_whose_client_left_never_starts(start_server: Callable[..., Running]) -> None:
    running = start_server(train_workers=1)
    with Client(running.address) as client:
        busy = client.create_model(SPEC).start_run(X, Y, **LONG)
        first_epoch(client, busy)
        call = client.stub.Train(train_request(client.create_model(SPEC).id, epochs=3))
        run_id = dict(call.initial_metadata())["gradwire-run-id"]  # the run exists, queued
        assert client.run(run_id).status == "queued"
        call.cancel()
        assert client.run(run_id).wait().status == "cancelled"  # its Train cancelled it
        busy.cancel()
        busy.wait()
        info = client.run(run_id).info
        assert (info.epochs_done, info.attempts) == (0, 0)


def test_the_train_call_names_its_run_streams_it_and_cancels_it_when_the_client_leaves(
    client: Client,
) -> None:
    model = client.create_model(SPEC)
    call = client.stub.Train(train_request(model.id))
    run_id = dict(call.initial_metadata())["gradwire-run-id"]
    first = next(call)
    assert first.progress.epoch == 1
    call.cancel()
    run = client.run(run_id)
    assert run.wait().status == "cancelled"
    assert run.info.version == 0  # a cancelled run publishes nothing
    done = list(client.stub.Train(train_request(model.id, epochs=3, batch_size=64), timeout=60))
    assert [e.progress.epoch for e in done[:-1]] == [1, 2, 3]
    assert (done[-1].result.stop_reason, done[-1].result.version) == (
        "max_epochs",
        2,
    )  # the next version after 1: the cancelled run made none


def test_queued_runs_never_delay_a_get_model(start_server: Callable[..., Running]) -> None:
    """Two threads for unary calls, one training worker, and five Train streams (one running, four
    queued): GetModel still answers at once."""
    running = start_server(rpc_workers=2, max_streams=8, train_workers=1)
    with Client(running.address) as client:
        models = [client.create_model(SPEC) for _ in range(5)]
        calls = [client.stub.Train(train_request(m.id)) for m in models]
        runs = [dict(call.initial_metadata())["gradwire-run-id"] for call in calls]
        statuses = sorted(client.run(r).status for r in runs)
        assert statuses.count("queued") >= 3
        assert client.stub.GetModel(pb.GetModelRequest(model_id=models[0].id), timeout=5).training
        for call in calls:
            call.cancel()
        for run_id in runs:
            assert client.run(run_id).wait().status == "cancelled"


def test_streams_past_the_cap_are_refused_at_once(start_server: Callable[..., Running]) -> None:
    running = start_server(max_streams=2)
    with Client(running.address) as client:
        run = client.create_model(SPEC).start_run(X, Y, **LONG)
        open_streams = [events(client, run.id) for _ in range(2)]
        for stream in open_streams:
            next(stream)  # both are served
        with pytest.raises(grpc.RpcError) as info:
            next(events(client, run.id))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 2 streams" in info.value.details()
        run.cancel()


# ------------------------------------------------------------------------------------ bad requests


def test_bad_start_requests_name_the_field(client: Client) -> None:
    model = client.create_model(SPEC)
    inputs = client.upload_dataset(X)
    targets = client.upload_dataset(Y)
    cases: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (lambda: model.start_run(X[:, :3], Y), InvalidArgumentError, "inputs.shape"),
        (lambda: model.start_run(X, np.ones((256, 2))), InvalidArgumentError, "targets.shape"),
        (lambda: model.start_run(X, Y[:100]), InvalidArgumentError, "targets.shape"),
        (lambda: model.start_run("f" * 64, targets), NotFoundError, "inputs.dataset_id"),
        (lambda: model.start_run(X, Y, validation_data=(X, Y), validation_split=0.2), InvalidArgumentError,
         "options.validation_fraction"),
        (lambda: model.start_run(X, Y, optimizer="lbfgs"), InvalidArgumentError, "options.optimizer.name"),
    ]  # fmt: skip
    for call, error, field in cases:
        with pytest.raises(error) as info:
            call()
        if error is InvalidArgumentError:
            assert field in info.value.fields, (field, info.value)  # type: ignore[attr-defined]
        else:
            assert field in str(info.value) or "not found" in str(info.value)
    request = pb.StartRunRequest(model_id=model.id, inputs=pb.DataSource(dataset_id=inputs.id))
    with pytest.raises(grpc.RpcError) as raw:
        client.stub.StartRun(request, timeout=10)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "targets" in raw.value.details()
    assert list(client.list_runs(model.id)) == []  # nothing was started


def test_a_run_that_cannot_train_fails_saying_why(client: Client) -> None:
    model = client.create_model(SPEC)
    with pytest.raises(RunFailedError) as info:  # a hold-out of one row leaves none for training
        model.fit(X[:1], Y[:1], epochs=1, validation_split=0.5)
    assert info.value.reason == "invalid"
    assert "validation_fraction" in info.value.run.error
    request = pb.TrainRequest(
        model_id=model.id, options=codec.options_from_dict({"epochs": 1, "validation_fraction": 0.5})
    )
    codec.array_to_tensor(X[:1], into=request.inputs)
    codec.array_to_tensor(Y[:1], into=request.targets)
    with pytest.raises(grpc.RpcError) as raw:  # Train ends with the status of the run's failure
        list(client.stub.Train(request, timeout=30))
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validation_fraction" in raw.value.details()
    assert model.refresh().version == 1


def test_request_ids_make_creations_happen_once(client: Client) -> None:
    first = client.create_model(SPEC, name="m", request_id="create-1")
    again = client.create_model(SPEC, name="m", request_id="create-1")
    assert first.id == again.id
    assert len(list(client.list_models())) == 1
    with pytest.raises(InvalidArgumentError) as info:
        client.create_model(SPEC, name="other", request_id="create-1")
    assert info.value.fields == ("request_id",)
    run = first.start_run(X, Y, epochs=1, request_id="start-1")
    assert first.start_run(X, Y, epochs=1, request_id="start-1").id == run.id
    assert len(list(client.list_runs(first.id))) == 1
    with pytest.raises(InvalidArgumentError):
        client.create_model(SPEC).start_run(X, Y, epochs=1, request_id="start-1")


@pytest.mark.parametrize("executor", ["thread"])  # it counts the commits of this process's store
def test_checkpoint_writes_never_queue_up(
    server: Running, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1M-parameter model on a few rows: epochs take milliseconds, a checkpoint (weights, best
    weights and both Adam moments, 16 MB) much longer. With a checkpoint due after every epoch,
    at most one write is ever in flight and the others are folded into it; no epoch is lost."""
    commit = server.app.store.runs.commit
    lock = threading.Lock()
    seen = {"calls": 0, "in_flight": 0, "most": 0}

    def counting(*args: Any, **kwargs: Any) -> bool:
        with lock:
            seen["calls"] += 1
            seen["in_flight"] += 1
            seen["most"] = max(seen["most"], seen["in_flight"])
        try:
            return commit(*args, **kwargs)  # the real write, to the real database
        finally:
            with lock:
                seen["in_flight"] -= 1

    monkeypatch.setattr(server.app.store.runs, "commit", counting)
    layers = [{"kind": "dense", "units": 1000}, SPEC["layers"][1]]
    wide = {**SPEC, "dtype": "float32", "input_dim": 1000, "layers": layers}
    model = client.create_model(wide)
    assert model.info.parameter_count > 1_000_000
    rows = np.random.default_rng(5).normal(size=(4, 1000)).astype(np.float32)
    history = model.fit(rows, rows[:, :1], epochs=40, batch_size=4, optimizer="adam", learning_rate=1e-4)
    assert [e["epoch"] for e in history.epochs] == list(range(1, 41))
    assert seen["most"] == 1
    assert 1 <= seen["calls"] < 40  # writes were folded together, not queued one per epoch


def test_a_run_resumed_from_the_checkpoint_of_its_stopping_epoch_stops_there(
    start_server: Callable[..., Running],
) -> None:
    """A crash after the checkpoint of the epoch that met loss_threshold, before the end was
    recorded: the resumed run must not train on, but end as the uninterrupted one did."""
    options = {
        "epochs": 500,
        "batch_size": 32,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "loss_threshold": 0.3,
    }
    first = start_server()
    with Client(first.address) as client:
        reference = client.create_model(SPEC)
        whole = reference.fit(X, Y, **options)
        assert whole.stop_reason == "loss_threshold"
        expected = reference.export()
        first.app.supervisor.stop()  # from now on this process claims nothing: it plays the dead server
        model = client.create_model(SPEC)
        crashed = model.start_run(X, Y, **options).id

    # What the dead server had committed: every epoch up to the stopping one, with the checkpoint
    # taken in that epoch's callback (the same training, in this process, gives the same state).
    trainer = Trainer(
        Network(NetworkSpec.from_dict(SPEC)),
        TrainConfig.from_dict(first.app.store.runs.get(T, crashed).options),
    )
    saved: list[Any] = []
    trainer.fit(X, Y, callback=lambda r: saved.append((new_epoch(r), checkpoint_of(trainer))))
    assert saved[-1][1].epoch == whole.epochs[-1]["epoch"]
    runs = first.app.store.runs
    lease = runs.claim_next("dead-server")
    assert lease is not None
    runs.commit(crashed, lease.owner, [record for record, _ in saved], saved[-1][1])
    assert runs.reap(lease_seconds=0) == [crashed]

    second = start_server()  # queues it again by itself, claims it, and resumes it
    with Client(second.address) as client:
        history = client.run(crashed).wait()
        assert (history.status, history.stop_reason, history.epochs[-1]["epoch"]) == (
            "completed",
            "loss_threshold",
            whole.epochs[-1]["epoch"],
        )
        resumed = client.model(model.id).export()
    for name, array in expected.items():
        np.testing.assert_array_equal(resumed[name], array)


def test_a_run_whose_model_moved_on_meanwhile_fails_and_publishes_nothing(
    server: Running, client: Client
) -> None:
    """Another writer moves the model's version while the run trains: the run cannot publish by
    compare-and-set; it fails, saying so, and Train ends ABORTED."""
    model = client.create_model(SPEC)
    call = client.stub.Train(train_request(model.id, epochs=CONFLICT_EPOCHS))
    run_id = dict(call.initial_metadata())["gradwire-run-id"]
    next(call)  # it trains: its first epoch is committed, seconds of epochs are to come
    with server.app.store.engine.begin() as connection:
        connection.execute(text("UPDATE models SET current_version = 7 WHERE id = :id"), {"id": model.id})
    with pytest.raises(grpc.RpcError) as info:  # its end would publish version 2, built on version 1
        list(call)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "version 7" in info.value.details()
    run = client.run(run_id).info
    assert (run.status, run.stop_reason, run.version) == ("failed", "version_conflict", 0)
    assert run.epochs_done >= 1  # its epochs are kept


def test_a_running_runs_epochs_are_committed_at_each_heartbeat_before_any_checkpoint(
    start_server: Callable[..., Running],
) -> None:
    """Listings and watchers follow a run as it trains: its epochs are committed every heartbeat,
    though a checkpoint is due only every checkpoint_interval (runs list showed epoch 0 of 2,000
    two seconds into a run, until the first checkpoint)."""
    running = start_server(checkpoint_interval=3600.0, heartbeat_seconds=0.2, lease_seconds=5.0)
    with Client(running.address) as client:
        run = client.create_model(SPEC).start_run(X, Y, **LONG)
        first = next(run.epochs(timeout=60))  # before: nothing until the first checkpoint, an hour
        assert first["epoch"] >= 1
        info = run.refresh()
        assert info.status == "running"
        assert info.epochs_done >= first["epoch"]
        assert running.app.store.runs.load_checkpoint(run.id) is None  # none due for an hour
        run.cancel()
        assert run.wait().status == "cancelled"
