"""Real server processes killed under a detached run: nothing committed is lost, and the resumed
run ends with exactly the weights of the same run never interrupted.

Each test runs `gradwire serve` as a child process over a SQLite file or a PostgreSQL schema,
SIGKILLs it (or SIGTERMs it) at random epochs of a run, starts a new one on the same database,
resumes the run, and compares everything at the end, bit for bit, with an uninterrupted run of the
same model, data and seeds made by the same kind of process.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
from helpers import ServerProcess

from gradwire.client import Client, Run
from gradwire.engine import one_hot
from gradwire.storage import open_store

EPOCHS = 40
SETTINGS = {
    "checkpoint_interval": 0.05,  # a checkpoint about every epoch: kills land between and during them
    "lease_seconds": 1.0,
    "heartbeat_seconds": 0.25,
    "poll_seconds": 0.1,
    "train_workers": 1,
}
SPEC: dict[str, Any] = {
    "input_dim": 16,
    "layers": [
        {"kind": "dense", "units": 64, "activation": "relu"},
        {"kind": "batchnorm", "activation": "identity"},
        {"kind": "dense", "units": 64, "activation": "relu"},
        {"kind": "dense", "units": 3, "activation": "softmax", "init": "xavier_uniform"},
    ],
    "loss": "softmax_crossentropy",
    "dtype": "float64",
    "seed": 5,
}
OPTIONS: dict[str, Any] = {
    "epochs": EPOCHS,
    "batch_size": 16,
    "optimizer": "adam",
    "learning_rate": 0.003,
    "validation_split": 0.2,  # held out by the seed, again identically after every restart
    "schedule": {"name": "plateau", "patience": 2, "factor": 0.5},  # a schedule with state
    "seed": 9,
}


def dataset() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 16))
    labels = (X[:, 0] * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, one_hot(labels, 3)


def losses(epochs: list[dict[str, Any]]) -> list[tuple[int, float, float | None, float]]:
    return [(e["epoch"], e["train_loss"], e["val_loss"], e["learning_rate"]) for e in epochs]


class Reference:
    """An uninterrupted run and what it left."""

    def __init__(self, client: Client, data: tuple[Any, Any]) -> None:
        model = client.create_model(SPEC, name="reference")
        run = model.start_run(*data, **OPTIONS)
        self.history = run.wait()
        self.weights = model.export()
        assert self.history.status == "completed"


def follow_to(run: Run, epoch: int) -> int:
    """Block until the run has committed ``epoch`` (or ended); the last epoch committed."""
    last = 0
    for entry in run.epochs(after_epoch=run.info.epochs_done):
        last = entry["epoch"]
        if last >= epoch:
            break
    return max(last, run.refresh().epochs_done)


def await_interrupted(client: Client, run_id: str, committed: int) -> Run:
    """On a new server: the run is reaped once its dead owner's lease runs out; watching it ends
    there. Nothing committed before the kill is missing."""
    run = client.run(run_id)
    for _ in run.epochs(after_epoch=committed):
        pass  # no epoch can come: nobody executes it
    assert run.info.status == "interrupted", run.info
    assert run.info.stop_reason == "lease_expired"
    assert run.info.epochs_done >= committed
    return run


def check_matches(client: Client, run_id: str, model_id: str, reference: Reference) -> None:
    run = client.run(run_id)
    history = client.model(model_id).history()[-1]
    assert run.info.status == "completed"
    assert losses(history.epochs) == losses(reference.history.epochs)  # every epoch once, identical
    exported = client.model(model_id).export()
    assert list(exported) == list(reference.weights)
    for name, array in reference.weights.items():
        np.testing.assert_array_equal(exported[name], array, err_msg=name)
    assert run.info.receipt["weights_sha256"] == reference.history.receipt["weights_sha256"]


def test_sigkill_at_random_epochs_then_resume_gives_the_uninterrupted_weights(database_url: str) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    kills = sorted(rng.sample(range(2, EPOCHS - 5), 5))
    print(f"random seed {seed}: SIGKILL after epochs {kills}")
    server = ServerProcess(database_url, auto_resume=0, **SETTINGS)
    try:
        with Client(server.address) as client:
            X, Y = dataset()
            data = (client.upload_dataset(X), client.upload_dataset(Y))
            reference = Reference(client, data)
            model = client.create_model(SPEC, name="killed")
            run_id = model.start_run(*data, **OPTIONS).id
        for target in kills:
            with Client(server.address) as client:
                committed = follow_to(client.run(run_id), target)
                time.sleep(rng.uniform(0.0, 0.05))  # not to wait for anything: a random moment to die
                server.kill()
            server = ServerProcess(database_url, auto_resume=0, **SETTINGS)
            with Client(server.address) as client:
                await_interrupted(client, run_id, committed).resume()
        with Client(server.address) as client:
            client.run(run_id).wait()
            check_matches(client, run_id, model.id, reference)
            assert client.run(run_id).info.attempts == len(kills) + 1
    finally:
        server.kill()


def test_sigterm_keeps_the_epoch_it_stops_at_and_a_restarted_server_resumes_by_itself(
    database_url: str,
) -> None:
    """A graceful stop: the run stops at the end of an epoch, its checkpoint committed, and becomes
    interrupted; the next server queues it again on its own (auto_resume) and it completes."""
    server = ServerProcess(database_url, auto_resume=3, **SETTINGS)
    try:
        with Client(server.address) as client:
            X, Y = dataset()
            data = (client.upload_dataset(X), client.upload_dataset(Y))
            reference = Reference(client, data)
            model = client.create_model(SPEC, name="stopped")
            run = model.start_run(*data, **OPTIONS)
            follow_to(run, EPOCHS // 3)
        assert server.terminate() == 0
        stopped = open_store(database_url)
        kept = stopped.runs.read(run.id)
        assert (kept.status, kept.stop_reason, kept.owner) == ("interrupted", "shutdown", None)
        checkpoint = stopped.runs.load_checkpoint(run.id)
        assert checkpoint is not None
        assert checkpoint.epoch == kept.epochs_done >= EPOCHS // 3  # the epoch it stopped at, committed
        stopped.close()
        server = ServerProcess(database_url, auto_resume=3, **SETTINGS)
        with Client(server.address) as client:
            history = client.run(run.id).wait()
            assert history.status == "completed"
            check_matches(client, run.id, model.id, reference)
    finally:
        server.kill()
