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

from helpers import ServerProcess
from reference_run import EPOCHS, OPTIONS, SETTINGS, SPEC, Reference, check_matches, dataset, follow_to

from gradwire.client import Client, Run
from gradwire.storage import open_store


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
