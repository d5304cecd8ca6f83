"""One service, many replicas, proved with real processes: ``gradwire serve`` replicas on one
PostgreSQL database, and one client balancing over them. Replicas are SIGKILLed under a run and
under its watch: the watch goes on through another replica from its last epoch, missing and
repeating nothing; the run is taken over once its lease runs out and ends with exactly the
weights of the same run never interrupted; while it waits, the watch and GetRun say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import ServerProcess
from reference_run import EPOCHS, OPTIONS, SPEC, TAKEOVER, check_matches, with_reference

from gradwire.client import Client
from gradwire.v1 import gradwire_pb2 as pb

SETTINGS = {**TAKEOVER, "train_workers": 1}


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        pytest.skip("replicas share one PostgreSQL database (a SQLite file belongs to one machine)")
    return database_url


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[list[ServerProcess]]:
    started = [ServerProcess(postgres_url, **SETTINGS) for _ in range(3)]
    yield started
    for replica in started:
        replica.kill() if replica.process.poll() is None else None


def logged(replica: ServerProcess, message: str, run_id: str) -> bool:
    return any(e.get("message") == message and e.get("run") == run_id for e in replica.logs)


def test_a_watch_and_its_run_go_on_through_the_replicas_left(replicas: list[ServerProcess]) -> None:
    """The replica serving the watch is killed a quarter of the way in, the one executing the run
    halfway (the same one, sometimes: then once is enough); the client follows to the end."""
    with Client([r.address for r in replicas], reconnect_seconds=60) as client:
        data, reference = with_reference(client)
        model = client.create_model(SPEC, name="replicated")
        run = model.start_run(*data, **OPTIONS)
        killed: list[ServerProcess] = []

        def kill(message: str) -> None:
            (replica,) = [r for r in replicas if logged(r, message, run.id) and r not in killed]
            replica.kill()
            killed.append(replica)

        def at(epoch: dict[str, Any]) -> None:
            if epoch["epoch"] == EPOCHS // 4:
                kill("watch started")
            if epoch["epoch"] == EPOCHS // 2 and not any(logged(r, "run claimed", run.id) for r in killed):
                kill("run claimed")

        history = client.run(run.id).wait(callbacks=(at,))
        assert [e["epoch"] for e in history.epochs] == list(range(1, EPOCHS + 1))
        assert 1 <= len(killed) <= 2
        check_matches(client, run.id, model.id, reference)


def test_a_run_whose_server_died_is_shown_stalled_until_taken_over(replicas: list[ServerProcess]) -> None:
    with Client([r.address for r in replicas]) as client:
        data, reference = with_reference(client)
        model = client.create_model(SPEC, name="stalled")
        run = model.start_run(*data, **OPTIONS)
        for epoch in run.epochs():
            if epoch["epoch"] >= 3:
                break
        (executing,) = [r for r in replicas if logged(r, "run claimed", run.id)]
        executing.kill()
        shown = client.run(run.id).refresh()
        assert shown.lease_expires_at is not None
        now = datetime.now(UTC).replace(tzinfo=None)  # the SDK's times are naive UTC, as protobuf's
        assert shown.lease_expires_at <= now + timedelta(seconds=SETTINGS["lease_seconds"])
        events = client.stub.WatchRun(pb.WatchRunRequest(run_id=run.id, after_epoch=3), timeout=60)
        stalled = next(event.stalled for event in events if event.HasField("stalled"))
        events.cancel()
        assert stalled.status == "running"
        assert stalled.HasField("lease_expires_at")
        history = client.run(run.id).wait()
        assert history.status == "completed"
        check_matches(client, run.id, model.id, reference)
