"""``make bench`` (Ray part): training on a Ray cluster against training in local workers, each
figure beside its reference measured in the same run, on SQLite.

A local cluster (Ray's ``ray.cluster_utils.Cluster``: a head that trains nothing, and worker
nodes, on loopback) and real ``gradwire serve`` processes:

* The 784-256-128-10 run (float32, Adam, batch 128) on a Ray actor of as many CPUs as this
  machine has (one node of that many), against the same run alone in a
  server's worker process (target: at least 0.9×), itself against ``Trainer.fit`` in this process
  (at least 0.95×): samples a second over each run's ``train_seconds``.
* Four concurrent 20-64-1 runs (2,000 rows, 300 epochs): the time until all completed on two
  single-CPU worker nodes, against one node (at least 1.5×), on the database's clock (the first
  run's queueing to the last one's end): a server learns of a run's end on an actor by reading
  the database every ``poll_seconds``, and that wait (0 to 0.5 s, at random) is no node's work.

Skipped, saying why, where Ray is not installed (``pip install 'gradwire[ray]'``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import arguments, write_results
from bench.engine_bench import WORKLOADS, dataset, spec_for
from bench.scaling_bench import Sizes as ScalingSizes
from bench.scaling_bench import concurrent_runs
from bench.service_bench import adam, engine_seconds, gradwire_server, judge, service_run, verdict
from gradwire.client import Client
from gradwire.service.core.settings import usable_cpus

RESULTS = Path(__file__).parent / "results" / "ray.json"
RAY_TARGET = 0.9  # the 784 run on Ray over the same run in a local worker, at least
WORKER_TARGET = 0.95  # that run in a local worker over the engine in this process, at least
NODES_TARGET = 1.5  # four small runs: two nodes over one, at least
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's word for "keep to loopback"
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


@dataclass(frozen=True)
class Sizes:
    rows: int
    epochs: int
    rounds: int
    small: ScalingSizes


FULL = Sizes(20_000, 2, 3, ScalingSizes(4, 2_000, 300, 3, 1, 1, 1, 0))
QUICK = Sizes(500, 1, 1, ScalingSizes(2, 200, 3, 1, 1, 1, 1, 0))


@contextmanager
def cluster(nodes: int, cpus: int = 1) -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    folder = tempfile.mkdtemp(prefix="gwray", dir="/tmp")
    Path("/tmp/ray").mkdir(exist_ok=True)  # Cluster notes its address there
    local = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 << 20}
    head = {**local, "num_cpus": 0, "include_dashboard": False, "temp_dir": folder}
    made = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(nodes):
            made.add_node(num_cpus=cpus, **local)
        made.wait_for_nodes()
        yield made
    finally:
        made.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def ray_server(stack: ExitStack, url: str, address: str, actors: int, cpus: int = 1) -> Client:
    flags = ("--executor", "ray", "--ray-address", address, "--ray-actors", str(actors))
    flags += ("--ray-cpus-per-run", str(cpus))
    server = gradwire_server(stack, url, *flags)
    return stack.enter_context(Client(server.address, timeout=600, token=server.token))


def local_server(stack: ExitStack, url: str) -> Client:
    server = gradwire_server(stack, url, "--train-workers", "1")
    return stack.enter_context(Client(server.address, timeout=600, token=server.token))


def big_run_figures(sizes: Sizes, folder: str) -> dict[str, Any]:
    w = WORKLOADS[0]
    X, Y = dataset(w, sizes.rows)
    config, options = adam(w, sizes.epochs)
    with ExitStack() as stack:
        cpus = usable_cpus()  # a run alone in a local worker computes with every core: so does it on Ray
        made = stack.enter_context(cluster(1, cpus))
        clients = {
            "ray": ray_server(stack, f"sqlite:///{folder}/ray.db", made.address, 1, cpus),
            "worker": local_server(stack, f"sqlite:///{folder}/worker.db"),
        }
        data = {name: (c.upload_dataset(X), c.upload_dataset(Y)) for name, c in clients.items()}
        best = {"engine": float("inf"), "ray": float("inf"), "worker": float("inf")}
        for _ in range(sizes.rounds):  # interleaved
            best["engine"] = min(best["engine"], engine_seconds(spec_for(w), config, X, Y))
            for name, client in clients.items():
                info, _ = service_run(client, spec_for(w), *data[name], **options)
                best[name] = min(best[name], info.train_seconds)
    samples = sizes.rows * sizes.epochs
    rates = {name: samples / seconds for name, seconds in best.items()}
    ray_ratio, worker_ratio = best["worker"] / best["ray"], best["engine"] / best["worker"]
    return {
        "rows": sizes.rows,
        "epochs": sizes.epochs,
        "samples_per_s": rates,
        "ray_vs_worker": ray_ratio,
        "worker_vs_engine": worker_ratio,
        "ray": judge(ray_ratio, RAY_TARGET),
        "worker": judge(worker_ratio, WORKER_TARGET),
    }


def nodes_figures(sizes: Sizes, folder: str) -> dict[str, Any]:
    """Both clusters up at once, each with its server, their rounds interleaved: the machine's
    noise falls on both alike (measured one after the other, the second's rounds took its bursts)."""
    with ExitStack() as stack:
        clients = {}
        for nodes in (1, 2):
            made = stack.enter_context(cluster(nodes))
            clients[nodes] = ray_server(stack, f"sqlite:///{folder}/nodes{nodes}.db", made.address, nodes)
        for client in clients.values():
            concurrent_runs(client, sizes.small)  # warm-up: every actor started and claiming
        seconds = dict.fromkeys(clients, float("inf"))
        wall = dict.fromkeys(clients, float("inf"))  # as the client saw it, for the record
        for _ in range(sizes.small.rounds):
            for nodes, client in clients.items():
                on_database, on_client = timed_both_ways(client, sizes.small)
                seconds[nodes], wall[nodes] = min(seconds[nodes], on_database), min(wall[nodes], on_client)
    speedup = seconds[1] / seconds[2]
    figures = {
        "seconds": {str(n): s for n, s in seconds.items()},
        "client_seconds": {str(n): s for n, s in wall.items()},
        "speedup": speedup,
        "client_speedup": wall[1] / wall[2],
    }
    return figures | judge(speedup, NODES_TARGET)


def timed_both_ways(client: Client, sizes: ScalingSizes) -> tuple[float, float]:
    """Concurrent runs (see :func:`.scaling_bench.concurrent_runs`): the time from the first one
    queued to the last one ended, both read from the database; and the client's wall time."""
    wall, ended = concurrent_runs(client, sizes)
    first = min(info.created_at for info in ended if info.created_at is not None)
    last = max(info.finished_at for info in ended if info.finished_at is not None)
    return (last - first).total_seconds(), wall


def report(results: dict[str, Any]) -> None:
    if "skipped" in results:
        print(f"Ray figures skipped: {results['skipped']}")
        return
    b, n = results["big"], results["nodes"]
    rates = b["samples_per_s"]
    print(
        f"train 784-256-128-10 adam, {b['rows']:,} rows × {b['epochs']} epochs, samples/s: "
        f"Ray actor {rates['ray']:,.0f}, local worker process {rates['worker']:,.0f} (the "
        f"reference), Trainer.fit here {rates['engine']:,.0f}\n"
        f"  Ray/worker {b['ray_vs_worker']:.3f} {verdict(b['ray'])}; "
        f"worker/engine {b['worker_vs_engine']:.3f} {verdict(b['worker'])}"
    )
    s = n["seconds"]
    print(
        f"{results['sizes']['small']['runs']} concurrent 20-64-1 runs on Ray, time until all "
        f"completed (the database's clock): 2 single-CPU nodes {s['2']:.2f} s, 1 node {s['1']:.2f} s "
        f"(the reference): {n['speedup']:.2f}× {verdict(n)}; as the client saw them "
        f"{n['client_seconds']['2']:.2f} s and {n['client_seconds']['1']:.2f} s: {n['client_speedup']:.2f}×"
    )


def main() -> None:
    args = arguments(__doc__, RESULTS)
    sizes = QUICK if args.quick else FULL
    results: dict[str, Any] = {"sizes": {"rows": sizes.rows, "small": sizes.small.__dict__}}
    try:
        import ray  # noqa: F401 (only whether it is there)
    except ImportError:
        results["skipped"] = "Ray is not installed: pip install 'gradwire[ray]'"
    else:
        os.environ.update(LOOPBACK_ENV)  # for the cluster's processes and the servers, started below
        with tempfile.TemporaryDirectory() as folder:
            results["big"] = big_run_figures(sizes, folder)
            results["nodes"] = nodes_figures(sizes, folder)
    report(results)
    write_results(args.output, results, args.quick)


if __name__ == "__main__":
    main()
