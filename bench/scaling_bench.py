"""``make bench`` (scaling part): training on every core, each figure beside its reference
measured in the same run, on SQLite and on PostgreSQL.

Every server is a real ``gradwire serve`` child process (as in :mod:`bench.service_bench`):

* Concurrency: four small runs (20-64-1, 2,000 rows, 300 epochs, Adam, batch 32) started at
  once, timed from the first StartRun until all four completed. The reference is the same
  server kind with one training worker; the target is a speed-up of at least 0.8 × the CPUs
  this process may use. The thread executor with as many threads is measured beside it.
* Responsiveness: the median latency of GetModel and of a single-row Predict while every worker
  trains a batch-size-1 run, against the same calls on the same server idle (at most 3×).
* Fixed cost of a fit: ``model.fit`` of 20-64-1 on 2,000 rows × 50 epochs through the SDK,
  through worker processes and through threads, against ``Trainer.fit`` in this process
  (best of rounds): what a fit costs beyond its training. The target bounds it on worker
  processes (the default executor), per database.
* A worker at rest: the resident memory of an idle worker process, beside the idle server's.
* History commits: how many commits of one epoch's history a second the database takes from one
  writer (what a run's committer sends, without a checkpoint), through the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import Any

from bench.common import (
    PostgresUnavailable,
    arguments,
    postgres_admin_url,
    scratch_postgres,
    status_kib,
    write_results,
)
from bench.engine_bench import WORKLOADS, dataset, spec_for
from bench.service_bench import Child, adam, engine_seconds, gradwire_server, judge, verdict
from gradwire.client import Client, RunInfo, calls
from gradwire.engine import Network, TrainConfig, Trainer
from gradwire.service.core.settings import usable_cpus
from gradwire.service.execution.jobs import new_epoch
from gradwire.storage import DEFAULT_TENANT, DatasetMeta, NewEpoch, NewRun, open_store
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.digest import array_id, raw

RESULTS = Path(__file__).parent / "results" / "scaling.json"
MiB = 2**20
CONCURRENCY_TARGET = 0.8  # × the CPUs: the speed-up of cores workers over one
LATENCY_TARGET = 3.0  # busy over idle median latency, at most
FIT_TARGET_MS = {"sqlite": 20.0, "postgresql": 30.0}  # a fit's fixed cost on worker processes, at most
SMALL = WORKLOADS[1]  # 20-64-1


@dataclass(frozen=True)
class Sizes:
    runs: int
    rows: int
    epochs: int
    rounds: int
    calls: int
    fit_epochs: int
    fit_rounds: int
    commit_seconds: float


FULL = Sizes(4, rows=2_000, epochs=300, rounds=3, calls=200, fit_epochs=50, fit_rounds=5, commit_seconds=5)
QUICK = Sizes(2, rows=200, epochs=3, rounds=1, calls=5, fit_epochs=2, fit_rounds=1, commit_seconds=0.2)


def servers(stack: ExitStack, database: Callable[[str], str], cores: int) -> dict[str, tuple[Child, Client]]:
    """The three kinds of server compared, each on a database of its own (``database(kind)``):
    a server claims any run its database holds."""
    kinds = {
        "one_worker": ("--train-workers", "1"),
        "workers": ("--train-workers", str(cores)),
        "threads": ("--train-workers", str(cores), "--executor", "thread"),
    }
    started = {}
    for name, flags in kinds.items():
        server = gradwire_server(stack, database(name), *flags)
        client = stack.enter_context(Client(server.address, timeout=600, token=server.token))
        started[name] = (server, client)
    return started


def concurrent_seconds(client: Client, sizes: Sizes) -> float:
    """Wall time from the first of ``sizes.runs`` StartRuns to the last run's end."""
    return concurrent_runs(client, sizes)[0]


def concurrent_runs(client: Client, sizes: Sizes) -> tuple[float, list[RunInfo]]:
    """:func:`concurrent_seconds`, and the runs as they ended."""
    X, Y = dataset(SMALL, sizes.rows)
    _, options = adam(SMALL, sizes.epochs)
    models = [client.create_model(spec_for(SMALL).to_dict()) for _ in range(sizes.runs)]
    inputs, targets = client.upload_dataset(X), client.upload_dataset(Y)
    start = time.perf_counter()
    runs = [model.start_run(inputs, targets, **options) for model in models]
    for run in runs:
        run.wait()  # its info then holds how it ended
    seconds = time.perf_counter() - start
    ended = [run.info for run in runs]
    for info in ended:
        if info.status != "completed":
            raise RuntimeError(f"run {info.id} ended {info.status}: {info.error}")
    for model in models:
        model.delete()
    return seconds, ended


def concurrency_figures(started: dict[str, tuple[Child, Client]], sizes: Sizes, cores: int) -> dict[str, Any]:
    best = dict.fromkeys(started, float("inf"))
    for _ in range(sizes.rounds):  # interleaved: the machine's noise falls on every kind alike
        for name, (_, client) in started.items():
            best[name] = min(best[name], concurrent_seconds(client, sizes))
    speedup = best["one_worker"] / best["workers"]
    return {
        "seconds": best,
        "workers_speedup": speedup,
        "threads_speedup": best["one_worker"] / best["threads"],
        "cores": cores,
    } | judge(speedup, round(CONCURRENCY_TARGET * cores, 2))


def median_ms(call: Any, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def responsiveness_figures(client: Client, sizes: Sizes, cores: int) -> dict[str, Any]:
    """GetModel and single-row Predict, idle and beside ``cores`` batch-size-1 runs."""
    X, Y = dataset(SMALL, sizes.rows)
    probe = client.create_model(spec_for(SMALL).to_dict())
    calls = {"get_model": probe.refresh, "predict_one_row": lambda: probe.predict(X[:1])}
    for call in calls.values():  # warm-up: the connection, the model's network in the cache
        call()
    idle = {name: median_ms(call, sizes.calls) for name, call in calls.items()}
    trainers = [client.create_model(spec_for(SMALL).to_dict()) for _ in range(cores)]
    runs = [model.start_run(X, Y, epochs=100_000, batch_size=1) for model in trainers]
    for run in runs:  # every one of them training before the calls are timed
        next(iter(run.epochs()), None)
    busy = {name: median_ms(call, sizes.calls) for name, call in calls.items()}
    for run in runs:
        run.cancel()
    for run in runs:
        run.wait()
    for model in (probe, *trainers):
        model.delete()
    figures: dict[str, Any] = {"busy_runs": cores}
    for name in calls:
        ratio = busy[name] / idle[name]
        figures[name] = {"idle_ms": idle[name], "busy_ms": busy[name], "busy_over_idle": ratio} | judge(
            ratio, LATENCY_TARGET, at_most=True
        )
    return figures


def fit_figures(started: dict[str, tuple[Child, Client]], sizes: Sizes, backend: str) -> dict[str, Any]:
    """``model.fit`` wall time on worker processes and on threads, against the engine here; the
    fixed cost on worker processes judged against the backend's target."""
    X, Y = dataset(SMALL, sizes.rows)
    config, options = adam(SMALL, sizes.fit_epochs)
    engine_s = float("inf")
    best = {"workers": float("inf"), "threads": float("inf")}
    timeline: tuple[RunInfo, float, float] | None = None  # the best worker round's run and its ends
    for _ in range(sizes.fit_rounds):
        engine_s = min(engine_s, engine_seconds(spec_for(SMALL), config, X, Y))
        for name in best:
            client = started[name][1]
            model = client.create_model(spec_for(SMALL).to_dict())
            start, wall_start = time.perf_counter(), time.time()
            history = model.fit(X, Y, **options)
            seconds, wall_end = time.perf_counter() - start, time.time()
            if seconds < best[name]:
                best[name] = seconds
                if name == "workers":
                    timeline = (client.run(history.run_id).info, wall_start, wall_end)
            model.delete()
    figures: dict[str, Any] = {"engine_seconds": engine_s} | {
        name: {"fit_seconds": seconds, "fixed_ms": 1000 * (seconds - engine_s)}
        for name, seconds in best.items()
    }
    figures["workers"] |= judge(
        figures["workers"]["fixed_ms"], FIT_TARGET_MS[backend], at_most=True, unit="ms"
    )
    assert timeline is not None
    figures["workers"]["hops_ms"] = fit_hops(*timeline, engine_s)
    client = started["workers"][1]
    model = client.create_model(spec_for(SMALL).to_dict())
    run_id = model.fit(X, Y, **options).run_id
    figures["workers"]["transport_ms"] = transport_floor(client, run_id, sizes.fit_rounds)
    model.delete()
    return figures


def transport_floor(client: Client, run_id: str, rounds: int) -> dict[str, float]:
    """What the calls of a fit cost with nothing else to do (ms, best of rounds), on a run of the
    same fit, finished: a unary call (GetRun, one read), and its WatchRun through the bare stub,
    its epochs one message each (as a watch that does not ask for them together gets them) and
    together, as the SDK asks: the part of a fit's fixed cost that no change below the calls can
    lower."""
    best: dict[str, float] = {}

    def timed(name: Callable[[Any], str], call: Callable[[], Any]) -> None:
        start = time.perf_counter()
        answer = call()
        ms = 1000 * (time.perf_counter() - start)
        best[name(answer)] = min(best.get(name(answer), float("inf")), ms)

    for _ in range(rounds):
        timed(lambda _: "unary call", lambda: client.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=60))
        for per_event, how in ((1, "one per epoch"), (calls.EPOCHS_PER_EVENT, "epochs together")):
            request = pb.WatchRunRequest(run_id=run_id, max_epochs_per_event=per_event)
            timed(
                lambda events, how=how: f"watch, {how} ({len(events)} events)",
                lambda request=request: list(client.stub.WatchRun(request, timeout=60)),
            )
    return best


def fit_hops(run: RunInfo, wall_start: float, wall_end: float, engine_s: float) -> dict[str, float]:
    """Where a fit's fixed cost goes, hop by hop (ms), from the run's own record (the database's
    clock, the same machine's) and the client's ends of the call: they add up to the fixed cost."""
    moments = (run.created_at, run.started_at, run.finished_at)
    created, begun, ended = (
        moment.replace(tzinfo=UTC).timestamp() for moment in moments if moment is not None
    )
    hops = {
        "StartRun": created - wall_start,
        "queued": begun - created,
        "load": run.load_seconds,
        "training over the engine's": run.train_seconds - engine_s,
        "finish": ended - begun - run.load_seconds - run.train_seconds,
        "to the client": wall_end - ended,
    }
    return {hop: 1000 * seconds for hop, seconds in hops.items()}


def worker_pids(server_pid: int) -> list[int]:
    """The server's child processes: its workers."""
    children = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


def memory_figures(server: Child) -> dict[str, Any]:
    workers = [1024 * status_kib(pid, "VmRSS") for pid in worker_pids(server.pid)]
    return {
        "server_idle_bytes": 1024 * status_kib(server.pid, "VmRSS"),
        "worker_idle_bytes": workers,
    }


def commit_figures(url: str, seconds: float) -> dict[str, Any]:
    """Commits of one real epoch record each, by one claimed run, for ``seconds``: commits a second."""
    store = open_store(url)
    try:
        spec = spec_for(SMALL)
        network = Network(spec)
        model = store.models.create(DEFAULT_TENANT, "commits", spec.to_dict(), network.state_arrays(), 1)
        X, Y = dataset(SMALL, 64)
        records: list[NewEpoch] = []
        Trainer(network, TrainConfig(epochs=1, batch_size=32)).fit(
            X, Y, callback=lambda r: records.append(new_epoch(r))
        )
        data = raw(X).tobytes()
        meta = DatasetMeta(array_id(X), hashlib.sha256(data).hexdigest(), "x", "float32", 64, 20, len(data))
        held = store.datasets.put(DEFAULT_TENANT, meta, data).id
        new = NewRun(model.id, {"epochs": 1}, {"inputs": held, "targets": held}, 64)
        store.runs.create(DEFAULT_TENANT, new, 1)
        run = store.runs.claim_next("bench")
        assert run is not None
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            done += 1
            epoch = replace(records[0], epoch=done, record={**records[0].record, "epoch": done})
            store.runs.commit(run.id, run.owner, [epoch], None, float(done))
        size = len(json.dumps(records[0].record))
        return {"commits": done, "commits_per_s": done / seconds, "record_bytes": size}
    finally:
        store.close()


def measure(backend: str, sizes: Sizes, cores: int) -> dict[str, Any]:
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())

        def database(kind: str) -> str:
            if backend == "sqlite":
                return f"sqlite:///{folder}/{kind}.db"
            return stack.enter_context(
                scratch_postgres(postgres_admin_url(), f"gradwire_scaling_{kind}_{os.getpid()}")
            )

        try:
            started = servers(stack, database, cores)
        except PostgresUnavailable as error:
            return {"skipped": str(error)}
        return {
            "memory": memory_figures(started["workers"][0]),
            "concurrency": concurrency_figures(started, sizes, cores),
            "responsiveness": responsiveness_figures(started["workers"][1], sizes, cores),
            "fit": fit_figures(started, sizes, backend),
            "commits": commit_figures(database("commits"), sizes.commit_seconds),
        }


def report(results: dict[str, Any]) -> None:
    for backend, figures in results["backends"].items():
        if "skipped" in figures:
            print(f"{backend}: skipped: {figures['skipped']}")
            continue
        c, r, f, m = figures["concurrency"], figures["responsiveness"], figures["fit"], figures["memory"]
        s, n, epochs = c["seconds"], c["cores"], results["sizes"]["fit_epochs"]
        print(
            f"{backend}: {results['sizes']['runs']} concurrent 20-64-1 runs, wall time until all "
            f"completed: {n} workers {s['workers']:.2f} s, 1 worker {s['one_worker']:.2f} s (the "
            f"reference), {n} threads {s['threads']:.2f} s\n"
            f"  speed-up over 1 worker: workers {c['workers_speedup']:.2f}× {verdict(c)}, "
            f"threads {c['threads_speedup']:.2f}×"
        )
        for name in ("get_model", "predict_one_row"):
            row = r[name]
            print(
                f"  {name} median latency beside {r['busy_runs']} batch-size-1 runs: "
                f"{row['busy_ms']:.2f} ms, idle {row['idle_ms']:.2f} ms (the reference): "
                f"{row['busy_over_idle']:.2f}× {verdict(row)}"
            )
        print(
            f"  model.fit 20-64-1 × {epochs} epochs: workers {f['workers']['fit_seconds']:.3f} s, "
            f"threads {f['threads']['fit_seconds']:.3f} s, Trainer.fit here {f['engine_seconds']:.3f} s "
            f"(the reference): fixed cost {f['workers']['fixed_ms']:.0f} ms (workers) "
            f"{verdict(f['workers'])}, {f['threads']['fixed_ms']:.0f} ms (threads)"
        )
        hops = ", ".join(f"{hop} {ms:.1f}" for hop, ms in f["workers"]["hops_ms"].items())
        print(f"    where the fixed cost goes on workers (ms): {hops}")
        floor = ", ".join(f"{call} {ms:.1f}" for call, ms in f["workers"]["transport_ms"].items())
        print(f"    its calls alone, with nothing else to do (ms): {floor}")
        idle = ", ".join(f"{size / MiB:.0f}" for size in m["worker_idle_bytes"])
        server = m["server_idle_bytes"] / MiB
        print(f"  resident memory at rest: server {server:.0f} MiB, each worker {idle} MiB")
        k = figures["commits"]
        rate, size = k["commits_per_s"], k["record_bytes"]
        print(f"  history commits from one writer: {rate:,.0f} a second ({size} B each)")


def main() -> None:
    args = arguments(__doc__, RESULTS)
    sizes = QUICK if args.quick else FULL
    cores = usable_cpus()
    backends = {
        name: measure(name, sizes, cores) for name in ("sqlite", "postgresql")[: 1 if args.quick else 2]
    }
    results: dict[str, Any] = {"sizes": sizes.__dict__, "backends": backends}
    report(results)
    write_results(args.output, results, args.quick)


if __name__ == "__main__":
    main()
