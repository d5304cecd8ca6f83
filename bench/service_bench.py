"""``make bench`` (service part): gradwire over gRPC against its references, in one run.

Child processes serve on free loopback ports, as deployed (authentication on: the client sends
an API key made with ``gradwire keys create``): ``gradwire serve`` on SQLite (a scratch folder),
``gradwire serve`` on a scratch PostgreSQL database (when a server answers at
``GRADWIRE_BENCH_POSTGRES_URL``, default postgresql://postgres@127.0.0.1:5432/postgres; the
database is created for the run and dropped after it; elsewhere those figures are skipped, saying
why), and a bare grpcio echo service (which can also store what it receives). This process is
the client of all of them, and also runs the in-process engine. Each figure is the best of
interleaved rounds with its reference.

* Upload: the 182 MiB float32 training set (60,000 × 784 inputs and their 60,000 × 10 targets)
  through ``client.upload_dataset``, MiB/s, against a bare grpcio client stream of the same bytes
  in the same 1 MiB chunks that the echo process receives, hashes and stores in the same SQLite
  database (4 MiB rows, a transaction each): the limit of durable storage here. The same stream
  to an echo that only counts the bytes shows the wire alone.
* Train: the 784-256-128-10 ReLU / softmax cross-entropy workload (float32, batch 128, Adam),
  5 epochs over those 60,000 rows, run on the uploaded datasets, against ``Trainer.fit`` in this
  process. The service's rate counts the run's ``train_seconds`` (training and the commits of
  epochs and checkpoints); the upload and the run's ``load_seconds`` (reading its datasets from
  the database) are reported beside it, with the end-to-end rate.
* Server memory: the SQLite server's resident size before the upload (idle) and its peak
  (``VmHWM``) over the upload and the training runs, against the dataset's size.
* Predict of 20,000 × 784 float32 rows: request bytes per second, against the echo's bytes per
  second for the very same serialised request.
* Single-row Predict: median round-trip latency, against the echo's for the same request.
* Small runs: 20-64-1 (squared error), 2,000 rows, 50 epochs, Adam, batch 32, on SQLite and on
  PostgreSQL: samples/s over the run's ``train_seconds`` against the in-process engine.
* XOR (the README's 2-4-1 spec), 500 epochs, batch 4, Adam: the wall time of ``model.fit``
  through the SDK on SQLite and on PostgreSQL, beside the in-process engine's time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table

from bench.common import (
    PostgresUnavailable,
    postgres_admin_url,
    reset_peak,
    scratch_postgres,
    status_kib,
    write_results,
)
from bench.engine_bench import WORKLOADS, Workload, dataset, spec_for
from gradwire.client import Client
from gradwire.client.sdk import UPLOAD_CHUNK, DatasetInfo, RunInfo
from gradwire.engine import Network, NetworkSpec, OptimizerConfig, TrainConfig, Trainer
from gradwire.inference import open_inference_pb2 as ip
from gradwire.storage import CHUNK_BYTES, make_engine
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.digest import array_id, raw

RESULTS = Path(__file__).parent / "results" / "service.json"
ECHO_METHOD = "/bench.Echo/Echo"
COUNT_METHOD = "/bench.Echo/Count"
STORE_METHOD = "/bench.Echo/Store"
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", 512 << 20),
    ("grpc.max_receive_message_length", 512 << 20),
]
MiB = 2**20
BACKENDS = ("sqlite", "postgresql")

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0], dtype=np.float32)
XOR_SPEC = {  # the README's
    "input_dim": 2,
    "layers": [
        {"kind": "dense", "units": 4, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "sigmoid", "init": "xavier_uniform"},
    ],
    "loss": "binary_crossentropy",
    "dtype": "float32",
    "seed": 1,
}

# Targets: a ratio against the reference (at least), or XOR's wall time in seconds (at most).
UPLOAD_TARGET = 0.8
TRAIN_TARGET = 0.95
SMALL_TARGET = 0.9
XOR_TARGET_S = 0.5
MEMORY_TARGET = 1.25
PREDICT_TARGET = 0.8
LATENCY_TARGET = 2
INFER_THROUGHPUT_TARGET = 0.8  # ModelInfer's bulk rows/s over Predict's, at least
INFER_LATENCY_TARGET = 1.5  # ModelInfer's single-row median latency over Predict's, at most


@dataclass(frozen=True)
class Sizes:
    rows: int  # the 784 workload's rows (upload, train, memory)
    epochs: int
    train_rounds: int
    upload_rounds: int
    small_rows: int
    small_epochs: int
    small_rounds: int
    xor_epochs: int
    xor_rounds: int
    predict_rows: int
    predict_rounds: int
    predict_calls: int


# The small runs and XOR take well under a second a round: more rounds steady their best. The
# 784 run takes seconds, and on a shared 2-core machine a round of the same work varies by half:
# five rounds of each side before the best of each is compared.
FULL = Sizes(60_000, 5, 5, 3, 2_000, 50, 10, 500, 10, 20_000, 5, 300)
# Two upload rounds even when quick, so the delete between rounds is exercised.
QUICK = Sizes(2_000, 1, 1, 2, 200, 2, 1, 20, 1, 500, 1, 20)


# ------------------------------------------------------------------------------------ processes


def echo_server(database_url: str) -> None:
    """Child process: a grpcio server whose ``Echo`` returns its request's bytes, whose
    client-streaming ``Count`` consumes a stream of byte chunks and answers their total length,
    and whose ``Store`` receives such a stream, hashes it (SHA-256) and stores it in 4 MiB chunks in
    a scratch table of ``database_url``, a transaction each (what an upload must do, bare)."""

    def count(chunks: Iterator[bytes], context: Any) -> bytes:
        return str(sum(len(chunk) for chunk in chunks)).encode()

    store = BareStore(database_url)
    server = grpc.server(futures.ThreadPoolExecutor(4), options=MESSAGE_OPTIONS)
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "Count": grpc.stream_unary_rpc_method_handler(count),
        "Store": grpc.stream_unary_rpc_method_handler(lambda chunks, context: store.put(chunks)),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


class BareStore:
    """Bytes into the database with nothing of gradwire's around them: SHA-256 as they come, and a
    row of 4 MiB (gradwire's storage chunk) per transaction, in a table like its blob chunks."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)  # the same driver and pragmas as the server's
        self.table = Table(
            "bench_bare_chunks",
            MetaData(),
            Column("blob_id", String(32), primary_key=True),
            Column("seq", Integer, primary_key=True),
            Column("data", LargeBinary),
        )
        self.table.create(self.engine, checkfirst=True)

    def put(self, chunks: Iterator[bytes]) -> bytes:
        blob_id, digest, pending, seq = uuid.uuid4().hex, hashlib.sha256(), bytearray(), 0
        for chunk in chunks:
            digest.update(chunk)
            pending += chunk
            while len(pending) >= CHUNK_BYTES:
                self._write(blob_id, seq, bytes(pending[:CHUNK_BYTES]))
                del pending[:CHUNK_BYTES]
                seq += 1
        if pending:
            self._write(blob_id, seq, bytes(pending))
        with self.engine.begin() as connection:  # the next round stores the same bytes anew
            connection.execute(self.table.delete().where(self.table.c.blob_id == blob_id))
        return digest.hexdigest().encode()

    def _write(self, blob_id: str, seq: int, data: bytes) -> None:
        with self.engine.begin() as connection:
            connection.execute(self.table.insert().values(blob_id=blob_id, seq=seq, data=data))


@dataclass(frozen=True)
class Child:
    address: str
    pid: int
    token: str = ""  # a gradwire server's API key


@contextmanager
def child(argv: list[str]) -> Iterator[Child]:
    """Start a server process; yield the address it prints once it listens, and its pid."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"listening on (\S+)", line)
            if not match:
                process.terminate()
                process.wait(timeout=30)
                errors.seek(0)
                raise RuntimeError(f"{argv[:2]} did not start: {line!r}\n{errors.read()[-2000:]}")
            yield Child(match.group(1), process.pid)
        finally:
            process.terminate()
            process.wait(timeout=120)


def gradwire_server(stack: ExitStack, database_url: str, *flags: str) -> Child:
    """``gradwire serve`` as deployed, authentication on, with an API key made for the client;
    ``flags`` are more of its flags (``--train-workers 1``)."""
    gradwire = str(Path(sys.executable).with_name("gradwire"))
    at = ["--database-url", database_url]
    made = subprocess.run(
        [gradwire, "keys", "create", "--tenant", "bench", *at], capture_output=True, text=True
    )
    if made.returncode:
        raise RuntimeError(f"gradwire keys create failed: {made.stderr}")
    argv = [gradwire, "serve", "--address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", *at]
    argv += ["--log-level", "warning", *flags]
    server = stack.enter_context(child(argv))
    return Child(server.address, server.pid, made.stdout.strip())


def postgres_server(stack: ExitStack) -> tuple[Child | None, dict[str, Any]]:
    """A gradwire server on a fresh PostgreSQL database (dropped when ``stack`` closes), or None
    and why not."""
    name = f"gradwire_bench_{os.getpid()}"
    try:
        url = stack.enter_context(scratch_postgres(postgres_admin_url(), name))
    except PostgresUnavailable as error:
        return None, {"skipped": str(error)}
    return gradwire_server(stack, url), {"database": name}


# ------------------------------------------------------------------------------------ helpers


def judge(value: float, target: float, at_most: bool = False, unit: str = "×") -> dict[str, Any]:
    """Whether ``value`` meets ``target`` (at least it, or ``at_most``); the target is kept in
    words with its unit (× for a ratio to the reference, s, ms), as the report prints it."""
    met = value <= target if at_most else value >= target
    return {
        "target": f"{'≤' if at_most else '≥'} {target}{'' if unit == '×' else ' '}{unit}",
        "meets_target": met,
    }


def verdict(row: dict[str, Any]) -> str:
    return f"(target {row['target']}: {'met' if row['meets_target'] else 'MISSED'})"


def engine_seconds(spec: NetworkSpec, config: TrainConfig, X: np.ndarray, Y: np.ndarray) -> float:
    """The same training in this process: the seconds ``Trainer.fit`` takes."""
    trainer = Trainer(Network(spec), config)
    start = time.perf_counter()
    trainer.fit(X, Y)
    return time.perf_counter() - start


def service_run(client: Client, spec: NetworkSpec, x: Any, y: Any, **options: Any) -> tuple[RunInfo, float]:
    """One run on a fresh model: the finished run and the wall time from StartRun to its end."""
    model = client.create_model(spec.to_dict())
    start = time.perf_counter()
    run = model.start_run(x, y, **options)
    run.wait()
    wall = time.perf_counter() - start
    model.delete()
    if run.info.status != "completed":
        raise RuntimeError(f"run {run.id} ended {run.info.status} ({run.info.stop_reason}): {run.info.error}")
    return run.info, wall


def adam(w: Workload, epochs: int) -> tuple[TrainConfig, dict[str, Any]]:
    """The engine's config and the SDK's arguments for the same training."""
    config = TrainConfig(epochs=epochs, batch_size=w.batch, optimizer=OptimizerConfig("adam", 0.001), seed=1)
    options = {
        "epochs": epochs,
        "batch_size": w.batch,
        "optimizer": "adam",
        "learning_rate": 0.001,
        "seed": 1,
    }
    return config, options


# ------------------------------------------------------------------------------------ measures


def upload_figures(
    client: Client, echo: grpc.Channel, arrays: tuple[np.ndarray, ...], rounds: int
) -> tuple[dict[str, Any], list[DatasetInfo]]:
    """Best-of-``rounds`` upload of ``arrays`` through the SDK, against the same bytes in the same
    1 MiB chunks over a bare grpcio client stream that the echo process receives, hashes and
    stores in the same database (the reference: the durable-storage limit), and one it only
    counts (the wire alone). The datasets of the last round are kept (the training runs use them)."""
    count = echo.stream_unary(COUNT_METHOD)  # raw bytes in, raw bytes out: no protobuf at all
    store = echo.stream_unary(STORE_METHOD)
    total = sum(a.nbytes for a in arrays)

    def bare(call: Any) -> float:
        start = time.perf_counter()
        for array in arrays:
            view = raw(array)
            chunks = (bytes(view[i : i + UPLOAD_CHUNK]) for i in range(0, len(view), UPLOAD_CHUNK))
            call(chunks, timeout=600)
        return time.perf_counter() - start

    def sdk() -> tuple[float, list[DatasetInfo]]:
        start = time.perf_counter()
        infos = [
            client.upload_dataset(a, name) for a, name in zip(arrays, ("inputs", "targets"), strict=True)
        ]
        return time.perf_counter() - start, infos

    # Each upload of identical bytes is deduplicated by content (the SDK asks the server for the
    # array's content address first and sends nothing if it is stored). So the datasets are
    # deleted between rounds rather than one byte varied per round: every round then sends,
    # checks, hashes and stores exactly the same bytes (the very data the training runs use),
    # and the scratch database holds one copy instead of one per round.
    wire_s = stored_s = upload_s = float("inf")
    infos: list[DatasetInfo] = []
    for round_ in range(rounds):
        if round_:
            for info in infos:
                client.delete_dataset(info.id)
        wire_s = min(wire_s, bare(count))
        stored_s = min(stored_s, bare(store))
        seconds, infos = sdk()
        upload_s = min(upload_s, seconds)
    start = time.perf_counter()
    for array in arrays:
        array_id(array)  # the SDK's first step: the content address, SHA-256 over the bytes
    hash_s = time.perf_counter() - start
    figures = {
        "dataset_mb": total / MiB,
        "chunk_bytes": UPLOAD_CHUNK,
        "upload_seconds": upload_s,
        "stored_seconds": stored_s,
        "echo_seconds": wire_s,
        "upload_bytes_per_s": total / upload_s,
        "stored_bytes_per_s": total / stored_s,
        "echo_bytes_per_s": total / wire_s,
        "upload_vs_stored": stored_s / upload_s,
        "upload_vs_echo": wire_s / upload_s,
        "client_sha256_seconds": hash_s,
        "rounds": rounds,
        "repeat_uploads": "dataset deleted between rounds",
    }
    return figures | judge(stored_s / upload_s, UPLOAD_TARGET), infos


def train_figures(
    client: Client, X: np.ndarray, Y: np.ndarray, datasets: list[DatasetInfo], sizes: Sizes, upload_s: float
) -> dict[str, Any]:
    """The 784 workload on the uploaded datasets, against the engine in this process."""
    w = WORKLOADS[0]
    config, options = adam(w, sizes.epochs)
    engine_s = float("inf")
    runs: list[tuple[float, float, float]] = []  # (train_seconds, load_seconds, wall)
    for _ in range(sizes.train_rounds):  # interleaved, best of each
        engine_s = min(engine_s, engine_seconds(spec_for(w), config, X, Y))
        info, wall = service_run(client, spec_for(w), datasets[0], datasets[1], **options)
        runs.append((info.train_seconds, info.load_seconds, wall))
    train_s, load_s, wall_s = min(runs)
    samples = sizes.rows * sizes.epochs
    figures = {
        "engine_samples_per_s": samples / engine_s,
        "service_samples_per_s": samples / train_s,
        "service_vs_engine": engine_s / train_s,
        "dataset_mb": (X.nbytes + Y.nbytes) / MiB,
        "upload_seconds": upload_s,
        "load_seconds": load_s,
        "transfer_seconds": upload_s + load_s,
        "run_wall_seconds": wall_s,
        "end_to_end_samples_per_s": samples / (upload_s + wall_s),
    }
    return figures | judge(engine_s / train_s, TRAIN_TARGET)


@dataclass
class MemoryProbe:
    """The SQLite server's resident size: idle before the upload, peak over the upload, then
    (the peak reset) over the training runs."""

    pid: int
    idle_kib: int = 0
    upload_peak_kib: int = 0
    resettable: bool = False

    def idle(self) -> None:
        self.resettable = reset_peak(self.pid)
        self.idle_kib = status_kib(self.pid, "VmRSS")

    def uploaded(self) -> None:
        self.upload_peak_kib = status_kib(self.pid, "VmHWM")
        reset_peak(self.pid)

    def trained(self, dataset_bytes: int) -> dict[str, Any]:
        last_kib = status_kib(self.pid, "VmHWM")
        peak = 1024 * max(self.upload_peak_kib, last_kib)
        idle = 1024 * self.idle_kib
        growth = (peak - idle) / dataset_bytes
        figures = {
            "idle_bytes": idle,
            "peak_bytes": peak,
            "upload_peak_bytes": 1024 * self.upload_peak_kib if self.resettable else None,
            "train_peak_bytes": 1024 * last_kib if self.resettable else None,
            "dataset_bytes": dataset_bytes,
            "growth_over_dataset": growth,
            "peak_over_dataset": peak / dataset_bytes,
        }
        return figures | judge(growth, MEMORY_TARGET, at_most=True)


def predict_figures(client: Client, echo: grpc.Channel, sizes: Sizes) -> dict[str, Any]:
    w = WORKLOADS[0]
    model = client.create_model(spec_for(w).to_dict())
    X = np.random.default_rng(0).standard_normal((sizes.predict_rows, w.sizes[0]), np.float32)
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
    for _ in range(sizes.predict_rounds):
        predict_s = min(predict_s, timed(predict, big))
        echo_s = min(echo_s, timed(send_echo, big))
    latencies: dict[str, list[float]] = {"predict": [], "echo": []}
    for _ in range(sizes.predict_calls):
        latencies["predict"].append(timed(predict, one))
        latencies["echo"].append(timed(send_echo, one))
    model.delete()
    p50 = {name: statistics.median(values) for name, values in latencies.items()}
    bytes_ratio, latency_ratio = echo_s / predict_s, p50["predict"] / p50["echo"]
    bytes_target, latency_target = (
        judge(bytes_ratio, PREDICT_TARGET),
        judge(latency_ratio, LATENCY_TARGET, True),
    )
    return {
        "request_mb": len(big) / MiB,
        "predict_bytes_per_s": len(big) / predict_s,
        "echo_bytes_per_s": len(big) / echo_s,
        "predict_vs_echo_bytes": bytes_ratio,
        "predict_target": bytes_target["target"],
        "predict_meets_target": bytes_target["meets_target"],
        "single_row_predict_p50_ms": 1000 * p50["predict"],
        "single_row_echo_p50_ms": 1000 * p50["echo"],
        "latency_predict_over_echo": latency_ratio,
        "latency_target": latency_target["target"],
        "latency_meets_target": latency_target["meets_target"],
    }


def infer_figures(client: Client, sizes: Sizes) -> dict[str, Any]:
    """The open inference protocol's ModelInfer over gRPC beside gradwire's Predict, on the same
    server, model and payloads (raw bytes both ways), interleaved: bulk throughput (best of
    rounds) and single-row median latency."""
    w = WORKLOADS[0]
    model = client.create_model(spec_for(w).to_dict())
    X = np.random.default_rng(0).standard_normal((sizes.predict_rows, w.sizes[0]), np.float32)

    def infer_request(x: np.ndarray) -> bytes:
        tensor = ip.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
        request = ip.ModelInferRequest(model_name=model.id, inputs=[tensor], raw_input_contents=[x.tobytes()])
        return request.SerializeToString()

    def predict_request(x: np.ndarray) -> bytes:
        return pb.PredictRequest(model_id=model.id, inputs=codec.array_to_tensor(x)).SerializeToString()

    calls = {
        "predict": client.channel.unary_unary("/gradwire.v1.Trainer/Predict"),
        "infer": client.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer"),
    }
    payloads = {
        "predict": (predict_request(X), predict_request(X[:1])),
        "infer": (infer_request(X), infer_request(X[:1])),
    }
    for name, call in calls.items():  # warm-up: connections, caches, the model's network
        for payload in payloads[name]:
            call(payload, timeout=120)

    def timed(name: str, which: int) -> float:
        start = time.perf_counter()
        calls[name](payloads[name][which], timeout=120)
        return time.perf_counter() - start

    bulk = dict.fromkeys(calls, float("inf"))
    for _ in range(sizes.predict_rounds):
        for name in calls:
            bulk[name] = min(bulk[name], timed(name, 0))
    single: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(sizes.predict_calls):
        for name in calls:
            single[name].append(timed(name, 1))
    model.delete()
    p50 = {name: statistics.median(values) for name, values in single.items()}
    throughput, latency = bulk["predict"] / bulk["infer"], p50["infer"] / p50["predict"]
    return {
        "rows": sizes.predict_rows,
        "columns": w.sizes[0],
        "bulk_seconds": bulk,
        "single_row_p50_ms": {name: 1000 * value for name, value in p50.items()},
        "throughput": {"infer_over_predict": throughput} | judge(throughput, INFER_THROUGHPUT_TARGET),
        "latency": {"infer_over_predict": latency} | judge(latency, INFER_LATENCY_TARGET, at_most=True),
    }


def small_figures(clients: dict[str, Client], sizes: Sizes) -> dict[str, Any]:
    """20-64-1 on inline data, on each backend, against the engine; interleaved rounds."""
    w = WORKLOADS[1]
    X, Y = dataset(w, sizes.small_rows)
    config, options = adam(w, sizes.small_epochs)
    engine_s = float("inf")
    best = {name: float("inf") for name in clients}
    for _ in range(sizes.small_rounds):
        engine_s = min(engine_s, engine_seconds(spec_for(w), config, X, Y))
        for name, client in clients.items():
            info, _ = service_run(client, spec_for(w), X, Y, **options)
            best[name] = min(best[name], info.train_seconds)
    samples = sizes.small_rows * sizes.small_epochs
    figures: dict[str, Any] = {"rows": sizes.small_rows, "epochs": sizes.small_epochs}
    figures["engine_samples_per_s"] = samples / engine_s
    for name, train_s in best.items():
        figures[name] = {
            "service_samples_per_s": samples / train_s,
            "service_vs_engine": engine_s / train_s,
        } | judge(engine_s / train_s, SMALL_TARGET)
    return figures


def xor_figures(clients: dict[str, Client], sizes: Sizes) -> dict[str, Any]:
    """Wall time of ``model.fit`` on XOR through the SDK, beside the engine's; interleaved rounds."""
    config = TrainConfig(epochs=sizes.xor_epochs, batch_size=4, optimizer=OptimizerConfig("adam", 0.05))
    spec = NetworkSpec.from_dict(XOR_SPEC)
    options: dict[str, Any] = {
        "epochs": sizes.xor_epochs,
        "batch_size": 4,
        "optimizer": "adam",
        "learning_rate": 0.05,
    }
    engine_s = float("inf")
    best = {name: float("inf") for name in clients}
    for _ in range(sizes.xor_rounds):
        engine_s = min(engine_s, engine_seconds(spec, config, XOR_X, XOR_Y.reshape(-1, 1)))
        for name, client in clients.items():
            model = client.create_model(XOR_SPEC, name="xor")
            start = time.perf_counter()
            model.fit(XOR_X, XOR_Y, **options)
            best[name] = min(best[name], time.perf_counter() - start)
            model.delete()
    figures: dict[str, Any] = {"epochs": sizes.xor_epochs, "engine_seconds": engine_s}
    for name, fit_s in best.items():
        figures[name] = {"fit_seconds": fit_s, "fit_over_engine": fit_s / engine_s} | judge(
            fit_s, XOR_TARGET_S, at_most=True, unit="s"
        )
    return figures


# ------------------------------------------------------------------------------------ report


def report(results: dict[str, Any]) -> None:
    u, t, m, p = results["upload"], results["train"], results["memory"], results["predict"]
    print(
        f"upload {u['dataset_mb']:.1f} MiB (inputs and targets, 1 MiB chunks): "
        f"gradwire {u['upload_bytes_per_s'] / MiB:,.0f} MiB/s  "
        f"bare stream received, hashed and stored in the same database (the reference) "
        f"{u['stored_bytes_per_s'] / MiB:,.0f} MiB/s  "
        f"upload/stored {u['upload_vs_stored']:.3f} {verdict(u)}\n"
        f"  the wire alone (a bare stream that stores nothing) {u['echo_bytes_per_s'] / MiB:,.0f} MiB/s\n"
        f"  of the upload's {u['upload_seconds']:.2f} s, the SDK's content address (SHA-256 in this "
        f"process) takes {u['client_sha256_seconds']:.2f} s"
    )
    print(
        f"train 784-256-128-10 adam on the uploaded datasets: engine {t['engine_samples_per_s']:,.0f}/s  "
        f"service {t['service_samples_per_s']:,.0f}/s  "
        f"service/engine {t['service_vs_engine']:.3f} {verdict(t)}\n"
        f"  upload {t['upload_seconds']:.2f} s, load from the database {t['load_seconds']:.2f} s; "
        f"end to end (upload + run) {t['end_to_end_samples_per_s']:,.0f}/s"
    )
    phases = ""
    if m["train_peak_bytes"] is not None:
        upload_mb, train_mb = m["upload_peak_bytes"] / MiB, m["train_peak_bytes"] / MiB
        phases = f" (upload {upload_mb:,.0f} MiB, training {train_mb:,.0f} MiB)"
    print(
        f"server memory (SQLite), {m['dataset_bytes'] / MiB:.0f} MiB dataset: "
        f"idle {m['idle_bytes'] / MiB:,.0f} MiB  "
        f"peak {m['peak_bytes'] / MiB:,.0f} MiB{phases}\n"
        f"  (peak − idle)/dataset {m['growth_over_dataset']:.2f} {verdict(m)}  "
        f"peak/dataset {m['peak_over_dataset']:.2f}"
    )
    print(
        f"predict {p['request_mb']:.1f} MiB: {p['predict_bytes_per_s'] / MiB:,.0f} MiB/s  "
        f"echo {p['echo_bytes_per_s'] / MiB:,.0f} MiB/s  "
        f"predict/echo {p['predict_vs_echo_bytes']:.3f} "
        f"{verdict({'target': p['predict_target'], 'meets_target': p['predict_meets_target']})}"
    )
    print(
        f"single-row latency p50: predict {p['single_row_predict_p50_ms']:.3f} ms  "
        f"echo {p['single_row_echo_p50_ms']:.3f} ms  "
        f"predict/echo {p['latency_predict_over_echo']:.2f} "
        f"{verdict({'target': p['latency_target'], 'meets_target': p['latency_meets_target']})}"
    )
    i = results["infer"]
    print(
        f"open inference protocol, ModelInfer over gRPC vs Predict, {i['rows']:,} × {i['columns']} float32: "
        f"{i['bulk_seconds']['infer'] * 1000:.1f} vs {i['bulk_seconds']['predict'] * 1000:.1f} ms, "
        f"throughput infer/predict {i['throughput']['infer_over_predict']:.2f} {verdict(i['throughput'])}\n"
        f"  single row p50: {i['single_row_p50_ms']['infer']:.3f} "
        f"vs {i['single_row_p50_ms']['predict']:.3f} ms, "
        f"infer/predict {i['latency']['infer_over_predict']:.2f} {verdict(i['latency'])}"
    )
    s, x, pg = results["small"], results["xor"], results["postgresql"]
    print(
        f"train 20-64-1 adam, {s['rows']:,} rows × {s['epochs']} epochs: "
        f"engine {s['engine_samples_per_s']:,.0f}/s"
    )
    for name in BACKENDS:
        if name in s:
            print(
                f"  {name:10s} service {s[name]['service_samples_per_s']:,.0f}/s  "
                f"service/engine {s[name]['service_vs_engine']:.3f} {verdict(s[name])}"
            )
    print(f"XOR 2-4-1, {x['epochs']} epochs, batch 4, adam: engine {x['engine_seconds']:.3f} s")
    for name in BACKENDS:
        if name in x:
            print(
                f"  {name:10s} model.fit {x[name]['fit_seconds']:.3f} s {verdict(x[name])}, "
                f"{x[name]['fit_over_engine']:.1f}× the engine's time (the reference)"
            )
    if "skipped" in pg:
        print(f"PostgreSQL figures skipped: {pg['skipped']}")


def measure(clients: dict[str, Client], echo: grpc.Channel, sqlite_pid: int, sizes: Sizes) -> dict[str, Any]:
    client = clients["sqlite"]
    X, Y = dataset(WORKLOADS[0], sizes.rows)
    warm = client.upload_dataset(np.ones((8, 8), np.float32), "warm-up")  # connection, threads
    client.delete_dataset(warm.id)
    memory = MemoryProbe(sqlite_pid)
    memory.idle()
    upload, datasets = upload_figures(client, echo, (X, Y), sizes.upload_rounds)
    memory.uploaded()
    results: dict[str, Any] = {"upload": upload}
    results["train"] = train_figures(client, X, Y, datasets, sizes, upload["upload_seconds"])
    results["memory"] = memory.trained(X.nbytes + Y.nbytes)
    del X, Y
    results["predict"] = predict_figures(client, echo, sizes)
    results["infer"] = infer_figures(client, sizes)
    results["small"] = small_figures(clients, sizes)
    results["xor"] = xor_figures(clients, sizes)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the speed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)  # the database URL it stores into
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sqlite = gradwire_server(stack, f"sqlite:///{data_dir / 'gradwire.db'}")
        sqlite_url = f"sqlite:///{data_dir / 'gradwire.db'}"
        echo_argv = [sys.executable, "-m", "bench.service_bench", "--echo-server", sqlite_url]
        echo = stack.enter_context(child(echo_argv))
        postgres, postgres_info = postgres_server(stack)
        clients = {"sqlite": stack.enter_context(Client(sqlite.address, timeout=600, token=sqlite.token))}
        if postgres is not None:
            client = Client(postgres.address, timeout=600, token=postgres.token)
            clients["postgresql"] = stack.enter_context(client)
        channel = stack.enter_context(grpc.insecure_channel(echo.address, options=MESSAGE_OPTIONS))
        results = measure(clients, channel, sqlite.pid, QUICK if args.quick else FULL)
        results["postgresql"] = postgres_info
    report(results)
    write_results(args.output, results, args.quick)


if __name__ == "__main__":
    main()
