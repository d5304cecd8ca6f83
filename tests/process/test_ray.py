"""Runs on a Ray cluster, proved with real processes: a local cluster of a head and two single-CPU
worker nodes on this machine (Ray's own ``ray.cluster_utils.Cluster``, as Ray tests itself), and
a real ``gradwire serve --executor ray`` queueing, watching and serving. The node executing a run
dies: the run completes on the other node with exactly the weights of a run never interrupted.
The server that queued a run dies: the run goes on, uninterrupted. A cancel reaches the cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerProcess
from reference_run import OPTIONS, SPEC, TAKEOVER, check_matches, dataset, follow_to, with_reference

from gradwire.client import Client
from gradwire.storage import open_store

ray = pytest.importorskip(
    "ray", reason="the Ray tests need Ray: pip install 'gradwire[ray]' (make test installs it)"
)
from ray._private import ray_constants  # noqa: E402 (after the skip: Ray may be missing)
from ray.cluster_utils import Cluster  # noqa: E402

SETTINGS = {**TAKEOVER, "executor": "ray", "ray_cpus_per_run": 1}
HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
"""A dead node is known to the head within about 1.5 s (Ray's default: about 15 s)."""


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, list[Any]]]:
    """A head that trains nothing and two worker nodes of one CPU each, on loopback, in a folder
    of their own (a short one: Ray's sockets live there)."""
    folder = tempfile.mkdtemp(prefix="gwray", dir="/tmp")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's word for "loopback only"
    Path("/tmp/ray").mkdir(exist_ok=True)  # Cluster notes its address there, whatever temp_dir says
    local = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 << 20}
    head = {**local, "num_cpus": 0, "include_dashboard": False, "temp_dir": folder}
    made = Cluster(initialize_head=True, head_node_args={**head, "_system_config": HEALTH_CHECKS})
    try:
        nodes = [made.add_node(num_cpus=1, **local) for _ in range(2)]
        made.wait_for_nodes()
        yield made, nodes
    finally:
        made.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def served(database_url: str, made: Cluster) -> ServerProcess:
    return ServerProcess(database_url, ray_address=made.address, **SETTINGS)


def executing_pid(database_url: str, run_id: str) -> int:
    """The process holding the run's lease (``host:pid:suffix/claim``): a Ray actor's worker."""
    store = open_store(database_url)
    try:
        owner = store.runs.read(run_id).owner
    finally:
        store.close()
    assert owner is not None
    return int(owner.split("/")[0].split(":")[1])


def node_of(nodes: list[Any], pid: int) -> Any:
    """The node whose raylet started the worker ``pid``."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return next(
        n for n in nodes if n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid == parent
    )


def children(pid: int) -> list[int]:
    return [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]


def test_a_run_survives_the_death_of_the_node_executing_it(
    database_url: str, cluster: tuple[Cluster, list[Any]]
) -> None:
    made, nodes = cluster
    with served(database_url, made) as server, Client(server.address) as client:
        server.wait_for_log("training on Ray")
        assert children(server.process.pid) == []  # the server trains nothing itself
        data, reference = with_reference(client)
        model = client.create_model(SPEC, name="on ray")
        run = model.start_run(*data, **OPTIONS)
        follow_to(run, OPTIONS["epochs"] // 3)
        worker = executing_pid(database_url, run.id)
        node = node_of(nodes, worker)
        os.kill(worker, signal.SIGKILL)  # the node dies, its processes with it
        made.remove_node(node, allow_graceful=False)
        history = client.run(run.id).wait()
        assert history.status == "completed"
        assert client.run(run.id).info.attempts == 2
        check_matches(client, run.id, model.id, reference)


def test_a_run_goes_on_when_the_server_that_queued_it_dies(
    database_url: str, cluster: tuple[Cluster, list[Any]]
) -> None:
    made, _ = cluster
    first = served(database_url, made)
    try:
        with Client(first.address) as client:
            data, reference = with_reference(client)
            model = client.create_model(SPEC, name="orphaned")
            run = model.start_run(*data, **OPTIONS)
            follow_to(run, 3)
    finally:
        first.kill()
    with served(database_url, made) as second, Client(second.address) as client:
        assert second.wait_for_log("training on Ray")["retired"] == []  # the same settings: the same actors
        history = client.run(run.id).wait()
        assert history.status == "completed"
        assert client.run(run.id).info.attempts == 1  # never interrupted: it ran on the cluster all along
        check_matches(client, run.id, model.id, reference)


def test_a_server_with_other_settings_retires_the_old_actors_and_their_run_resumes_on_its_own(
    database_url: str, cluster: tuple[Cluster, list[Any]]
) -> None:
    """Actors keep the settings they were made with: a server with others makes its own, and the
    old ones stop their run at an epoch's end and exit; the run resumes on a new one, from its
    checkpoint (that a resume is bit for bit, the tests above prove)."""
    made, _ = cluster
    with served(database_url, made) as first, Client(first.address) as client:
        old = first.wait_for_log("training on Ray")
        X, Y = dataset()
        run = client.create_model(SPEC, name="retired under it").start_run(
            X, Y, **{**OPTIONS, "epochs": 100_000}
        )
        last = follow_to(run, 3)
        before = executing_pid(database_url, run.id)
        other = {**SETTINGS, "auth_cache_seconds": 7.0}  # any other setting: the actors' names differ
        with ServerProcess(database_url, ray_address=made.address, **other) as second:
            assert len(second.wait_for_log("training on Ray")["retired"]) == old["actors"] == 2
            while client.run(run.id).info.attempts < 2:  # each turn waits for an epoch, not a clock
                last = follow_to(run, last + 1)
            info = client.run(run.id).info
            assert (info.status, info.stop_reason) == ("running", "")
            assert executing_pid(database_url, run.id) != before  # an actor of the new settings
            assert info.epochs_done >= 3  # resumed from its checkpoint, not from the start
            run.cancel()
            assert client.run(run.id).wait().status == "cancelled"


def test_a_cancel_reaches_a_run_on_the_cluster(database_url: str, cluster: tuple[Cluster, list[Any]]) -> None:
    made, _ = cluster
    with served(database_url, made) as server, Client(server.address) as client:
        X, Y = dataset()
        model = client.create_model(SPEC, name="cancelled")
        run = model.start_run(X, Y, **{**OPTIONS, "epochs": 100_000})
        follow_to(run, 2)
        run.cancel()
        assert client.run(run.id).wait().status == "cancelled"
