"""An uninterrupted run to compare interrupted ones with, bit for bit: the model, data and
options of the tests that kill servers and workers under a run (tests/process)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradwire.client import Client, Run
from gradwire.engine import one_hot

EPOCHS = 40
TAKEOVER = {
    "checkpoint_interval": 0.05,  # a checkpoint about every epoch
    "lease_seconds": 2.0,  # a run whose executor died is taken over soon
    "heartbeat_seconds": 0.25,
    "poll_seconds": 0.1,
    "auto_resume": 3,
}
"""Settings of the servers of the tests that take an executor away under a run."""
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


def with_reference(client: Client) -> tuple[tuple[Any, Any], Reference]:
    """The data uploaded as datasets, and the uninterrupted run on them."""
    X, Y = dataset()
    data = (client.upload_dataset(X), client.upload_dataset(Y))
    return data, Reference(client, data)
