"""Two real server processes on one PostgreSQL database: what they agree on is in the database.

Runs started through one are watched through the other; Predict on either answers the newest
version; two starts on one model, one through each, have exactly one winner; a starting server
leaves a live peer's runs alone; a run of a dead peer cannot overwrite a newer version.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from helpers import ServerProcess

from gradwire.client import Client, GradwireError, ModelBusyError

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

SETTINGS = {"checkpoint_interval": 0.05, "lease_seconds": 2.0, "heartbeat_seconds": 0.25, "poll_seconds": 0.1}
SPEC: dict[str, Any] = {
    "input_dim": 3,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 1,
}
RNG = np.random.default_rng(4)
X = RNG.normal(size=(200, 3))
Y = X[:, :1] - X[:, 1:2]
LONG = {"epochs": 100_000, "batch_size": 1}


def test_watched_through_the_other_and_both_answer_the_newest_version(database_url: str) -> None:
    with (
        ServerProcess(database_url, **SETTINGS) as one,
        ServerProcess(database_url, **SETTINGS) as other,
        Client(one.address) as a,
        Client(other.address) as b,
    ):
        model = a.create_model(SPEC)
        before_a, before_b = a.model(model.id).predict(X), b.model(model.id).predict(X)  # both cache v1
        np.testing.assert_array_equal(before_a, before_b)
        run = a.model(model.id).start_run(X, Y, epochs=15, batch_size=16)
        watched = b.run(run.id).wait()  # through the server that did not start it
        assert [e["epoch"] for e in watched.epochs] == list(range(1, 16))
        assert (watched.status, watched.version) == ("completed", 2)
        for client in (a, b):
            answer = client.model(model.id).predict_full(X)
            assert answer.version == 2
            assert not np.array_equal(answer.outputs, before_a)
        b.model(model.id).fit(X, Y, epochs=3)  # version 3, made wherever it was claimed
        assert {client.model(model.id).predict_full(X).version for client in (a, b)} == {3}


def race_to_start(model_id: str, clients: tuple[Client, ...]) -> list[Any]:
    """Each client starts a run of the model at the same moment; the runs or errors they got."""
    start = threading.Barrier(len(clients))
    outcomes: list[Any] = []

    def race(client: Client) -> None:
        start.wait()
        try:
            outcomes.append(client.model(model_id).start_run(X, Y, **LONG))
        except GradwireError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=race, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_starts_on_one_model_through_two_servers_have_one_winner(database_url: str) -> None:
    with (
        ServerProcess(database_url, **SETTINGS) as one,
        ServerProcess(database_url, **SETTINGS) as other,
        Client(one.address) as a,
        Client(other.address) as b,
    ):
        for _ in range(5):
            outcomes = race_to_start(a.create_model(SPEC).id, (a, b))
            winners = [o for o in outcomes if not isinstance(o, GradwireError)]
            losers = [o for o in outcomes if isinstance(o, GradwireError)]
            seen = (outcomes, one.logs[-15:], other.logs[-15:])  # what to read if this ever fails
            assert len(winners) == len(losers) == 1, seen
            assert isinstance(losers[0], ModelBusyError), seen
            assert winners[0].id in losers[0].message, seen  # the error names the run holding the model
            winners[0].cancel()
            winners[0].wait()


def test_a_new_server_leaves_a_live_peers_run_alone_and_a_dead_peers_run_cannot_overwrite(
    database_url: str,
) -> None:
    owner = ServerProcess(database_url, **SETTINGS)
    try:
        with Client(owner.address) as a:
            model = a.create_model(SPEC)
            stale = model.start_run(X, Y, **LONG)
            started = next(stale.epochs())["elapsed"]
        with (
            ServerProcess(database_url, auto_resume=0, **SETTINGS) as newcomer,
            Client(newcomer.address) as c,
        ):
            # The run goes on for three leases' time after the newcomer started, and is still A's.
            for epoch in c.run(stale.id).epochs(after_epoch=1):
                if epoch["elapsed"] > started + 3 * SETTINGS["lease_seconds"] + 1:
                    break
            info = c.run(stale.id).info
            assert (info.status, info.attempts) == ("running", 1)
            owner.kill()
            for _ in c.run(stale.id).epochs(after_epoch=info.epochs_done):
                pass  # until the newcomer reaps it
            assert c.run(stale.id).status == "interrupted"
            fresh = c.model(model.id).fit(X, Y, epochs=2)  # the model moves on to version 2
            assert fresh.version == 2
            with pytest.raises(ModelBusyError, match="start a new run"):
                c.run(stale.id).resume()
            assert c.model(model.id).predict_full(X).version == 2
    finally:
        owner.kill()
