"""Runs in worker processes, proved with real processes: a real ``gradwire serve``, whose worker
processes are SIGKILLed and SIGSTOPped in the middle of a run. The run loses only the work since
its last checkpoint and ends with exactly the weights of the same run never interrupted; the
server keeps serving, and a new worker takes the dead one's place. Workers run below the
server's priority with their share of BLAS threads, and die with a server that is killed.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerProcess
from reference_run import (
    OPTIONS,
    SPEC,
    TAKEOVER,
    Reference,
    check_matches,
    dataset,
    follow_to,
    with_reference,
)

from gradwire.client import Client
from gradwire.service.core.settings import usable_cpus

SETTINGS = TAKEOVER


def worker_pids(server: ServerProcess, count: int) -> list[int]:
    """The pids of the first ``count`` workers the server said it started, waiting for them."""
    server.wait_for_entry(lambda _: len(started(server)) >= count, what=f"{count} workers started")
    return started(server)[:count]


def started(server: ServerProcess) -> list[int]:
    return [entry["pid"] for entry in server.logs if entry.get("message") == "worker started"]


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether process ``pid`` ended within ``timeout`` (a pidfd becomes readable when it does)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([handle], [], [], timeout)[0])
    finally:
        os.close(handle)


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[ServerProcess, Client, tuple[Any, Any], Reference]]:
    """A server with one worker, the data uploaded, and the uninterrupted reference run."""
    server = ServerProcess(database_url, train_workers=1, **SETTINGS)
    try:
        with Client(server.address) as client:
            yield server, client, *with_reference(client)
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("stop", "logged"),
    [
        (signal.SIGKILL, "run interrupted: its worker process ended"),
        (signal.SIGSTOP, "worker silent past its lease; killed"),
    ],
    ids=["killed", "stopped"],
)
def test_a_worker_lost_mid_run_costs_only_its_checkpoint_and_is_replaced(
    served: tuple[ServerProcess, Client, tuple[Any, Any], Reference], stop: signal.Signals, logged: str
) -> None:
    server, client, data, reference = served
    (first,) = worker_pids(server, 1)
    model = client.create_model(SPEC, name="lost")
    run = model.start_run(*data, **OPTIONS)
    follow_to(run, OPTIONS["epochs"] // 3)
    os.kill(first, stop)
    server.wait_for_log(logged)
    assert wait_gone(first)
    second = server.wait_for_entry(
        lambda e: e.get("message") == "worker started" and e["pid"] != first, what="a new worker"
    )["pid"]
    history = client.run(run.id).wait()
    assert history.status == "completed"
    info = client.run(run.id).info
    assert info.attempts == 2
    check_matches(client, run.id, model.id, reference)
    # The run's clock survived the lost attempt: each epoch's elapsed time (training since the run
    # started, all attempts) goes on from the last one committed before the loss, never back to 0.
    elapsed = [epoch["elapsed"] for epoch in client.model(model.id).history()[-1].epochs]
    assert elapsed == sorted(elapsed)
    assert info.train_seconds >= elapsed[-1]
    assert client.model(model.id).refresh().version == 2  # the server kept serving throughout
    assert set(started(server)) == {first, second}


def test_workers_run_below_the_server_with_their_share_of_blas_threads(database_url: str) -> None:
    with ServerProcess(database_url, train_workers=2, worker_nice=7, **SETTINGS) as server:
        pids = worker_pids(server, 2)
        entries = [e for e in server.logs if e.get("message") == "worker started"]
        assert {e["blas_threads"] for e in entries} == {max(1, usable_cpus() // 2)}
        for pid in pids:
            assert niceness(pid) == niceness(server.process.pid) + 7
            assert parent(pid) == server.process.pid


@pytest.mark.skipif(usable_cpus() < 2, reason="sharing the cores between runs needs two of them")
def test_a_run_alone_computes_on_every_core_and_runs_side_by_side_share_them(database_url: str) -> None:
    def computes_with(server: ServerProcess, run_id: str, threads: int) -> None:
        """Waits until the BLAS threads the run was last set to are ``threads``."""

        def last(_: dict[str, Any]) -> bool:
            sets = [
                e["threads"]
                for e in server.logs
                if e.get("message") == "BLAS threads set" and e.get("run") == run_id
            ]
            return bool(sets) and sets[-1] == threads

        server.wait_for_entry(last, what=f"run {run_id} on {threads} BLAS threads")

    with ServerProcess(database_url, train_workers=2, cpus={0, 1}, **SETTINGS) as server:
        worker_pids(server, 2)
        with Client(server.address) as client:
            X, Y = dataset()
            long = {**OPTIONS, "epochs": 100_000}
            first = client.create_model(SPEC).start_run(X, Y, **long)
            follow_to(first, 1)
            computes_with(server, first.id, 2)  # alone: both cores
            second = client.create_model(SPEC).start_run(X, Y, **long)
            follow_to(second, 1)
            computes_with(server, second.id, 1)  # side by side: one core each
            computes_with(server, first.id, 1)
            second.cancel()
            computes_with(server, first.id, 2)  # alone again
            first.cancel()


def test_a_killed_server_takes_its_workers_with_it(database_url: str) -> None:
    """The workers read their orders from the server: killed, it closes them, and they exit."""
    server = ServerProcess(database_url, train_workers=2, **SETTINGS)
    try:
        pids = worker_pids(server, 2)
        with Client(server.address) as client:
            X, Y = dataset()
            model = client.create_model(SPEC)
            follow_to(model.start_run(X, Y, **{**OPTIONS, "epochs": 1000}), 2)  # one worker is mid-run
    finally:
        server.kill()
    assert all(wait_gone(pid) for pid in pids)


def test_train_workers_default_to_the_cpus_the_server_may_use(database_url: str) -> None:
    with ServerProcess(database_url, cpus={0}, **SETTINGS) as server:
        configuration = server.wait_for_log("configuration")["settings"]
        assert configuration["train_workers"] == 1
        assert configuration["executor"] == "process"
        assert len(worker_pids(server, 1)) == 1


def niceness(pid: int) -> int:
    return int(stat_fields(pid)[16])  # field 19 of /proc/PID/stat (the two before it are split off)


def parent(pid: int) -> int:
    return int(stat_fields(pid)[1])


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command's name, which may hold spaces: state first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
