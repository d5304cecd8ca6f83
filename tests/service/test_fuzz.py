"""Fuzzing every RPC of gradwire.v1.Trainer through a real server over a real database.

Requests come from :mod:`fuzzing` and go on the wire as bytes, so nothing the Python API would
refuse is out of reach: first a sweep (a valid request of each method with one field at a time
set to each extreme of its type, each array given each impossible shape and dtype: about 700
requests), then random cases (descriptor-driven messages, mutations of valid requests, raw
bytes), the methods in turn. Every answer must be a status the client can act on: INTERNAL,
UNKNOWN (a bug behind the door) and DEADLINE_EXCEEDED (a call that does not end promptly) fail
the test. Afterwards the server still answers, the objects planted before the fuzz are byte for
byte what they were, and the models and datasets listed are those that successful calls created
and did not delete.

Environment variables:

- ``GRADWIRE_FUZZ_REQUESTS``: random cases per database after the sweep (default 800: with the
  sweep, about 1,500 requests and tens of seconds); set it to 20000 or more for a long run;
- ``GRADWIRE_FUZZ_SEED``: the seed (default 20250611). A failure prints it, and the failures
  grouped by status and by the error the server logged, each with its methods, its kinds of
  input and its first case's index and bytes in hex: ``fuzzing.make_case(seed, index, method,
  known)`` (``fuzzing.sweep(seed, method, known)`` for a ``sweep:`` case) makes it again.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from fuzzing import Case, Known, make_case, message_class, sweep, valid_spec
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import Running

from gradwire.service import Limits
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc

REQUESTS = int(os.environ.get("GRADWIRE_FUZZ_REQUESTS", "800"))
SEED = int(os.environ.get("GRADWIRE_FUZZ_SEED", "20250611"))
DEADLINE = 10.0
"""Seconds any fuzzed call may take: every path must end well within it."""
BROKEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})
NOTED = frozenset({grpc.StatusCode.UNAVAILABLE})
"""Allowed, but printed with their cases: "retry later" is a trap if the request itself is why."""

SERVICE = pb.DESCRIPTOR.services_by_name["Trainer"]
READ_ONLY = frozenset({
    "GetModel", "ListModels", "ExportModel", "GetDataset", "ListDatasets", "WatchRun", "GetRun",
    "ListRuns", "Predict", "GetGradients", "GetTrainingHistory",
})  # fmt: skip
"""Methods that change nothing: only they are given the ids of the planted objects, which must
stay as they are. A new method is kept away from them until it is listed here."""

SETTINGS: dict[str, Any] = {
    "train_workers": 1,
    "max_queued_runs": 4,
    "max_streams": 8,
    "max_message_mb": 4,
    "upload_idle_seconds": 5.0,
    "limits": Limits(
        max_layers=16,
        max_units=256,
        max_parameters=20_000,
        max_batch_size=4096,
        max_epochs=20,
        max_gradcheck_parameters=2_000,
        max_gradcheck_rows=32,
        max_dataset_mb=4,
        max_inline_mb=1,
        max_request_mb=64,
    ),
}
"""Small limits: a valid-looking fuzzed run ends within a second, a model fits in kilobytes."""

SHAPE = Known(input_dim=3, outputs=2)
"""The width of the planted models, which the generators' tensors fit."""


def data(salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and one-hot targets of 12 rows; a different salt, other bytes (another dataset id)."""
    rng = np.random.default_rng([SEED, salt])
    return rng.normal(size=(12, SHAPE.input_dim)), np.eye(SHAPE.outputs)[rng.integers(0, SHAPE.outputs, 12)]


# ------------------------------------------------------------------------------------ calls


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[bytes] = field(default_factory=list)


def unary_unary(channel: grpc.Channel, path: str, messages: tuple[bytes, ...]) -> list[bytes]:
    return [channel.unary_unary(path)(messages[0], timeout=DEADLINE)]


def unary_stream(channel: grpc.Channel, path: str, messages: tuple[bytes, ...]) -> list[bytes]:
    return list(channel.unary_stream(path)(messages[0], timeout=DEADLINE))


def stream_unary(channel: grpc.Channel, path: str, messages: tuple[bytes, ...]) -> list[bytes]:
    return [channel.stream_unary(path)(iter(messages), timeout=DEADLINE)]


def stream_stream(channel: grpc.Channel, path: str, messages: tuple[bytes, ...]) -> list[bytes]:
    return list(channel.stream_stream(path)(iter(messages), timeout=DEADLINE))


CALLS: dict[tuple[bool, bool], Callable[[grpc.Channel, str, tuple[bytes, ...]], list[bytes]]] = {
    (False, False): unary_unary,
    (False, True): unary_stream,
    (True, False): stream_unary,
    (True, True): stream_stream,
}
"""How to call a method, by (client streaming, server streaming): bytes in, bytes out, every
response read."""


def send(channel: grpc.Channel, case: Case) -> Outcome:
    method = SERVICE.methods_by_name[case.method]
    call = CALLS[method.client_streaming, method.server_streaming]
    try:
        responses = call(channel, f"/{SERVICE.full_name}/{case.method}", case.messages)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK, "", responses)


# ------------------------------------------------------------------------------------ the world


def upload(stub: pb_grpc.TrainerStub, array: np.ndarray, name: str) -> str:
    tensor = codec.array_to_tensor(array)
    header = pb.DatasetHeader(name=name, dtype=tensor.dtype, shape=tensor.shape)
    messages = [pb.UploadDatasetRequest(header=header), pb.UploadDatasetRequest(chunk=tensor.data)]
    return stub.UploadDataset(iter(messages), timeout=DEADLINE).dataset_id


def finished_run(stub: pb_grpc.TrainerStub, model_id: str, datasets: list[str]) -> str:
    """A run of two epochs over ``datasets`` (inputs, targets), watched to its end."""
    inputs, targets = (pb.DataSource(dataset_id=d) for d in datasets)
    options = pb.TrainOptions(epochs=2, batch_size=4, seed=1)
    run = stub.StartRun(
        pb.StartRunRequest(model_id=model_id, inputs=inputs, targets=targets, options=options)
    )
    *_, last = stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=60)
    assert last.result.status == "completed", last
    return run.run_id


def new_model(stub: pb_grpc.TrainerStub, name: str, seed: int) -> str:
    spec = valid_spec(np.random.default_rng([SEED, seed]), SHAPE)
    return stub.CreateModel(pb.CreateModelRequest(name=name, spec=spec), timeout=DEADLINE).model_id


def plant(stub: pb_grpc.TrainerStub, name: str, salt: int) -> Known:
    """A model trained once over two uploaded datasets: ids that reach every method's deep paths."""
    model = new_model(stub, name, salt)
    datasets = [
        upload(stub, array, f"{name} {role}")
        for array, role in zip(data(salt), ("inputs", "targets"), strict=True)
    ]
    return Known([model], datasets, [finished_run(stub, model, datasets)], SHAPE.input_dim, SHAPE.outputs)


def listed(stub: pb_grpc.TrainerStub, method: str, request: Any, items: str) -> list[Any]:
    """Every item of a List method, page after page."""
    out: list[Any] = []
    while True:
        page = getattr(stub, method)(request, timeout=DEADLINE)
        out += getattr(page, items)
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


def snapshot(stub: pb_grpc.TrainerStub, planted: Known) -> list[bytes]:
    """Everything the server says about the planted objects, as deterministic bytes."""
    model, run = planted.models[0], planted.runs[0]
    inputs = codec.array_to_tensor(data(0)[0])
    answers: list[Any] = [
        stub.GetModel(pb.GetModelRequest(model_id=model)),
        *stub.ExportModel(pb.ExportModelRequest(model_id=model), timeout=DEADLINE),
        stub.Predict(pb.PredictRequest(model_id=model, inputs=inputs)),
        stub.GetTrainingHistory(pb.GetTrainingHistoryRequest(model_id=model)),
        stub.GetRun(pb.GetRunRequest(run_id=run)),
        *(stub.GetDataset(pb.GetDatasetRequest(dataset_id=d)) for d in planted.datasets),
    ]
    return [answer.SerializeToString(deterministic=True) for answer in answers]


@dataclass
class World:
    """The planted objects (``frozen`` must not change; ``playground`` is there to be changed),
    and the models and datasets that the successful calls say exist."""

    stub: pb_grpc.TrainerStub
    frozen: Known
    playground: Known
    models: set[str] = field(default_factory=set)
    datasets: set[str] = field(default_factory=set)

    def known(self, method: str) -> Known:
        return self.frozen + self.playground if method in READ_ONLY else self.playground

    def created_model(self, model: pb.Model) -> None:
        self.models.add(model.model_id)
        layers = model.spec.layers
        fits = layers and layers[-1].dense.units == SHAPE.outputs and model.spec.input_dim == SHAPE.input_dim
        if fits:  # the generators' tensors fit it: Predict, GetGradients and runs go deep
            self.playground.models.append(model.model_id)

    def deleted_model(self, model_id: str) -> None:
        self.models.discard(model_id)
        self.playground.models = [m for m in self.playground.models if m != model_id]
        if not self.playground.models:
            self.created_model(
                self.stub.GetModel(pb.GetModelRequest(model_id=new_model(self.stub, "again", 1)))
            )

    def deleted_dataset(self, dataset_id: str) -> None:
        self.datasets.discard(dataset_id)
        self.playground.datasets = [d for d in self.playground.datasets if d != dataset_id]
        if not self.playground.datasets:
            self.uploaded(
                self.stub.GetDataset(pb.GetDatasetRequest(dataset_id=upload(self.stub, data(1)[0], "again")))
            )

    def uploaded(self, dataset: pb.Dataset) -> None:
        self.datasets.add(dataset.dataset_id)
        if dataset.dataset_id not in self.frozen.datasets:  # the same bytes again: the planted one
            self.playground.datasets.append(dataset.dataset_id)

    def started(self, run: pb.Run) -> None:
        self.playground.runs.append(run.run_id)
        self.datasets.update(run.datasets.values())


SUCCESSES: dict[str, Callable[[World, Case, list[bytes]], None]] = {
    "CreateModel": lambda w, case, out: w.created_model(pb.Model.FromString(out[0])),
    "DeleteModel": lambda w, case, out: w.deleted_model(
        pb.DeleteModelRequest.FromString(case.messages[0]).model_id
    ),
    "UploadDataset": lambda w, case, out: w.uploaded(pb.Dataset.FromString(out[0])),
    "DeleteDataset": lambda w, case, out: w.deleted_dataset(
        pb.DeleteDatasetRequest.FromString(case.messages[0]).dataset_id
    ),
    "StartRun": lambda w, case, out: w.started(pb.Run.FromString(out[0])),
}
"""What a successful call changed, from its request and its answer."""


def answers_parse(case: Case, outcome: Outcome) -> bool:
    """Whether the answers of a successful call are messages of the method's response type."""
    response_type = message_class(SERVICE.methods_by_name[case.method].output_type)
    try:
        for response in outcome.responses:
            response_type.FromString(response)
    except DecodeError:
        return False
    return True


# ------------------------------------------------------------------------------------ the report


class ServerErrors(logging.Handler):
    """The last line of every traceback the server logs (its servicer's "unexpected error",
    grpc's "Exception deserializing request!"): calls go one at a time, so what is logged during
    a call says why that call broke, where the status itself only says INTERNAL. A handler may
    log after its client has its status (an error raised into a call that already ended): that
    line comes first in the next call's, so the last line is the one that call caused."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            self.causes.append(f"{type(exc).__name__}: {exc}")

    def drain(self) -> str:
        causes, self.causes = self.causes, []
        return causes[-1] if causes else ""


def shape_of(message: str) -> str:
    """A message with its numbers, ids and type names blurred, so that alike failures group."""
    message = re.sub(r"'gradwire\.v1\.\w+'", "'T'", message)
    return re.sub(r"[0-9a-f]{16,}|\d+", "N", message)[:200]


@dataclass
class Tally:
    """Every outcome's code, and the cases that got a broken one with what the server logged."""

    codes: Counter[str] = field(default_factory=Counter)
    broken: list[tuple[Case, Outcome, str]] = field(default_factory=list)
    noted: list[tuple[Case, Outcome, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, case: Case, outcome: Outcome, cause: str) -> None:
        self.codes[outcome.code.name] += 1
        if outcome.code in BROKEN:
            self.broken.append((case, outcome, cause))
        elif outcome.code in NOTED:
            self.noted.append((case, outcome, cause))

    def summary(self) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in self.codes.most_common())
        return f"seed {SEED}, {sum(self.codes.values())} requests in {self.seconds:.1f} s: {codes}"

    def report(self, entries: list[tuple[Case, Outcome, str]], groups_shown: int = 30) -> str:
        """The summary, then ``entries`` grouped by code and cause, with the methods and input
        kinds that met each, and the first such case in hex."""
        groups: dict[tuple[str, str], list[tuple[Case, Outcome, str]]] = {}
        for case, outcome, cause in entries:
            groups.setdefault((outcome.code.name, shape_of(cause or outcome.details)), []).append(
                (case, outcome, cause)
            )
        lines = [self.summary(), f"{len(entries)} answers, {len(groups)} kinds:"]
        for (code, _), members in sorted(groups.items(), key=lambda g: -len(g[1]))[:groups_shown]:
            case, outcome, cause = members[0]
            methods = Counter(c.method for c, _, _ in members)
            kinds = Counter(c.kind.split(" ")[0] for c, _, _ in members)
            lines += [
                f"  {len(members)} x {code} {outcome.details!r}, server: {cause[:300]!r}",
                f"      methods: {dict(methods.most_common())}",
                f"      inputs: {dict(kinds.most_common())}",
                f"      first: case {case.index}, {case.method} ({case.kind}): {case.hex(120)}",
            ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the test


def cases(world: World) -> Iterator[Case]:
    """The sweep of every method, then ``REQUESTS`` random cases, the methods in turn; made as
    they are sent, so that they use the ids that exist by then."""
    for method in SERVICE.methods:
        yield from sweep(SEED, method, world.known(method.name))
    methods = list(SERVICE.methods)
    for index in range(REQUESTS):
        method = methods[index % len(methods)]
        yield make_case(SEED, index, method, world.known(method.name))


def fuzz(channel: grpc.Channel, world: World, tally: Tally) -> None:
    """Send every case, keeping ``world`` up to date with what the successful ones changed."""
    errors = ServerErrors()
    root = logging.getLogger()
    root.addHandler(errors)
    started = time.perf_counter()
    try:
        for case in cases(world):
            outcome = send(channel, case)
            tally.add(case, outcome, errors.drain())
            if outcome.code == grpc.StatusCode.OK:
                assert answers_parse(case, outcome), f"{case.method} answered unparseable bytes to {case}"
                SUCCESSES.get(case.method, lambda *_: None)(world, case, outcome.responses)
    finally:
        root.removeHandler(errors)
        tally.seconds = time.perf_counter() - started


def test_fuzzed_requests_get_clean_statuses_and_change_only_what_succeeded(
    start_server: Callable[..., Running],
) -> None:
    running = start_server(**SETTINGS)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(running.address, options=options) as channel:
        stub = pb_grpc.TrainerStub(channel)
        world = World(stub, plant(stub, "frozen", 0), plant(stub, "playground", 1))
        world.models = {*world.frozen.models, *world.playground.models}
        world.datasets = {*world.frozen.datasets, *world.playground.datasets}
        before = snapshot(stub, world.frozen)
        tally = Tally()

        fuzz(channel, world, tally)
        print(tally.report(tally.noted) if tally.noted else tally.summary())

        broken = len(tally.broken)
        assert broken == 0, tally.report(tally.broken)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE.full_name)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert snapshot(stub, world.frozen) == before, "a planted object changed"
        models = {
            m.model_id for m in listed(stub, "ListModels", pb.ListModelsRequest(page_size=500), "models")
        }
        assert models == world.models, f"listed {len(models)} models, the answers say {len(world.models)}"
        datasets = listed(stub, "ListDatasets", pb.ListDatasetsRequest(page_size=500), "datasets")
        unexplained = {d.dataset_id for d in datasets if not d.name.startswith("inline ")} - world.datasets
        assert world.datasets <= {d.dataset_id for d in datasets}, "an uploaded dataset is gone"
        assert not unexplained, f"datasets that no successful call stored: {sorted(unexplained)}"
