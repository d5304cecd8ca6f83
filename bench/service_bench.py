"""``make bench`` (service part): gradwire over gRPC against its references, in one run.

Two child processes serve on free loopback ports: ``gradwire serve`` (SQLite in a scratch
folder) and a bare grpcio echo service that returns the bytes it receives. This process is the
client of both, and also runs the in-process engine.

* Train: the 784-256-128-10 ReLU / softmax cross-entropy workload (float32, batch 128, Adam),
  5 epochs over 60,000 synthetic rows, through the SDK, against ``Trainer.fit`` in this process.
  The service's rate counts the server's training span (training, per-epoch commits, progress
  events); the one-off transfer of the data (client encoding, wire, server decoding) is
  reported separately, with the end-to-end rate.
* Predict of 20,000 × 784 float32 rows: request bytes per second, against the echo's bytes per
  second for the very same serialised request.
* Single-row Predict: median round-trip latency, against the echo's for the same request.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.common import write_results
from bench.engine_bench import WORKLOADS, dataset, spec_for
from gradwire.client import Client
from gradwire.engine import Network, OptimizerConfig, TrainConfig, Trainer
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

RESULTS = Path(__file__).parent / "results" / "service.json"
ECHO_METHOD = "/bench.Echo/Echo"
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", 512 << 20),
    ("grpc.max_receive_message_length", 512 << 20),
]


def echo_server() -> None:
    """Child process: a grpcio server whose one method returns its request's bytes."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=MESSAGE_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


@contextmanager
def child(argv: list[str]) -> Iterator[str]:
    """Start a server process; yield the address it prints once it listens."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if not match:
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=120)


def best_of(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def train_figures(client: Client, rows: int, epochs: int, rounds: int) -> dict[str, float]:
    w = WORKLOADS[0]
    X, Y = dataset(w, rows)
    config = TrainConfig(epochs=epochs, batch_size=w.batch, optimizer=OptimizerConfig("adam", 0.001), seed=1)

    def engine() -> float:
        trainer = Trainer(Network(spec_for(w)), config)
        start = time.perf_counter()
        trainer.fit(X, Y)
        return time.perf_counter() - start

    service_runs: list[tuple[float, float]] = []

    def service() -> float:
        model = client.create_model(spec_for(w).to_dict())
        start = time.perf_counter()
        history = model.fit(
            X, Y, epochs=epochs, batch_size=w.batch, optimizer="adam", learning_rate=0.001, seed=1
        )
        total = time.perf_counter() - start
        service_runs.append((history.train_seconds, total))
        model.delete()
        return history.train_seconds

    engine_s = service_s = float("inf")
    for _ in range(rounds):  # interleaved, best of each
        engine_s = min(engine_s, engine())
        service_s = min(service_s, service())
    train_s, total_s = min(service_runs)
    samples = rows * epochs
    return {
        "engine_samples_per_s": samples / engine_s,
        "service_samples_per_s": samples / service_s,
        "service_vs_engine": engine_s / service_s,
        "transfer_seconds": total_s - train_s,
        "dataset_mb": (X.nbytes + Y.nbytes) / 2**20,
        "end_to_end_samples_per_s": samples / total_s,
    }


def predict_figures(
    client: Client, echo: grpc.Channel, rows: int, rounds: int, calls: int
) -> dict[str, float]:
    w = WORKLOADS[0]
    model = client.create_model(spec_for(w).to_dict())
    X = np.random.default_rng(0).standard_normal((rows, w.sizes[0]), np.float32)
    big = pb.PredictRequest(model_id=model.id, inputs=codec.array_to_tensor(X)).SerializeToString()
    one = pb.PredictRequest(model_id=model.id, inputs=codec.array_to_tensor(X[:1])).SerializeToString()
    predict = client.channel.unary_unary("/gradwire.v1.Trainer/Predict")  # raw bytes, like the echo
    send_echo = echo.unary_unary(ECHO_METHOD)
    for call in (predict, send_echo):  # warm-up: connections, caches, the model's network
        call(big, timeout=120)
        call(one, timeout=30)

    def timed(call: Any, payload: bytes) -> float:
        start = time.perf_counter()
        call(payload, timeout=120)
        return time.perf_counter() - start

    predict_s = echo_s = float("inf")
    for _ in range(rounds):
        predict_s = min(predict_s, timed(predict, big))
        echo_s = min(echo_s, timed(send_echo, big))
    latencies: dict[str, list[float]] = {"predict": [], "echo": []}
    for _ in range(calls):
        latencies["predict"].append(timed(predict, one))
        latencies["echo"].append(timed(send_echo, one))
    model.delete()
    p50 = {name: statistics.median(values) for name, values in latencies.items()}
    return {
        "request_mb": len(big) / 2**20,
        "predict_bytes_per_s": len(big) / predict_s,
        "echo_bytes_per_s": len(big) / echo_s,
        "predict_vs_echo_bytes": echo_s / predict_s,
        "single_row_predict_p50_ms": 1000 * p50["predict"],
        "single_row_echo_p50_ms": 1000 * p50["echo"],
        "latency_predict_over_echo": p50["predict"] / p50["echo"],
    }


def report(results: dict[str, Any]) -> None:
    t, p = results["train"], results["predict"]
    print(
        f"train 784-256-128-10 adam: engine {t['engine_samples_per_s']:,.0f}/s  "
        f"service {t['service_samples_per_s']:,.0f}/s  "
        f"service/engine {t['service_vs_engine']:.3f} (target ≥ 0.9)\n"
        f"  one-off transfer of {t['dataset_mb']:.0f} MiB: {t['transfer_seconds']:.2f} s; "
        f"end to end {t['end_to_end_samples_per_s']:,.0f}/s"
    )
    mib = 2**20
    print(
        f"predict {p['request_mb']:.1f} MiB: {p['predict_bytes_per_s'] / mib:,.0f} MiB/s  "
        f"echo {p['echo_bytes_per_s'] / mib:,.0f} MiB/s  "
        f"predict/echo {p['predict_vs_echo_bytes']:.3f} (target ≥ 0.8)"
    )
    print(
        f"single-row latency p50: predict {p['single_row_predict_p50_ms']:.3f} ms  "
        f"echo {p['single_row_echo_p50_ms']:.3f} ms  "
        f"predict/echo {p['latency_predict_over_echo']:.2f} (target ≤ 2)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the speed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server()
        return
    gradwire = str(Path(sys.executable).with_name("gradwire"))
    with (
        tempfile.TemporaryDirectory() as data_dir,
        child(
            [gradwire, "serve", "--address", "127.0.0.1:0", "--data-dir", data_dir, "--log-level", "warning"]
        ) as address,
        child([sys.executable, "-m", "bench.service_bench", "--echo-server"]) as echo_address,
        Client(address, timeout=600) as client,
        grpc.insecure_channel(echo_address, options=MESSAGE_OPTIONS) as echo,
    ):
        quick = args.quick
        results: dict[str, Any] = {
            "train": train_figures(client, 2_000 if quick else 60_000, 1 if quick else 5, 1 if quick else 3),
            "predict": predict_figures(
                client, echo, 500 if quick else 20_000, 1 if quick else 5, 20 if quick else 300
            ),
        }
    report(results)
    write_results(args.output, results, quick)


if __name__ == "__main__":
    main()
