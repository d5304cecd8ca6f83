"""API keys and tenants through real servers: every method of every service the server offers
refuses a call without a valid key (health excepted) and does no work for it; a valid key works
on every kind of call; a tenant's models, datasets, runs and request ids are not found by another
tenant, exactly as ids that do not exist; quotas refuse what would go past them and write
nothing; a revoked key stops working within the cache bound; keys are stored hashed."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from helpers import Running
from sqlalchemy import func, select, text

from gradwire.client import Client
from gradwire.client.sdk import TLS_VARIABLES, TOKEN_VARIABLE
from gradwire.inference import open_inference_pb2 as ip
from gradwire.service.transport.auth import (
    BAD_KEY,
    KEY,
    NO_KEY,
    OPEN_METHODS,
    OPEN_SERVICES,
    NewKey,
    key_hash,
    new_key,
)
from gradwire.storage import DEFAULT_TENANT, Store
from gradwire.storage.schema import Base
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc

SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 3, "activation": "identity", "init": "xavier_uniform"}],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 0,
}
PARAMETERS = 2 * 3 + 3
"""Trainable parameters of a SPEC model."""
X = np.random.default_rng(1).normal(size=(32, 2))
Y = np.random.default_rng(2).normal(size=(32, 3))
SHORT = {"epochs": 2, "batch_size": 8}
LONG = {"epochs": 100_000, "batch_size": 1}
"""Options of a run that goes on until it is cancelled."""
TIMEOUT = 30.0
Metadata = tuple[tuple[str, str], ...]

# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def no_client_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say what each client sends: no token or TLS comes from the environment."""
    for name in (*TLS_VARIABLES.values(), TOKEN_VARIABLE):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(start_server: Callable[..., Running]) -> Running:
    """A server that needs keys. Its runs commit once a second, not every 0.05 s: these tests
    never wait for epochs, and on SQLite a long run committing that often can keep another
    writer (a call made meanwhile) waiting past the busy timeout ("database is locked")."""
    return start_server(auth=True, checkpoint_interval=1.0)


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """Closes the clients and channels a test opens."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def channel(server: Running, closing: ExitStack) -> grpc.Channel:
    """A plain channel to the server: each call says what metadata it sends."""
    return closing.enter_context(grpc.insecure_channel(server.address))


def enrol(server: Running, tenant: str) -> NewKey:
    """A new key of ``tenant`` (made if it is new), kept by the server's store."""
    key = new_key()
    server.app.store.tenants.add_key(tenant, key.id, key.hash, name=f"a key of {tenant}")
    return key


@dataclass
class Tenant:
    name: str
    key: NewKey
    client: Client

    @property
    def stub(self) -> pb_grpc.TrainerStub:
        return self.client.stub


def tenant(server: Running, name: str, closing: ExitStack) -> Tenant:
    """A tenant with a key, and an SDK client sending it."""
    key = enrol(server, name)
    client = closing.enter_context(Client(server.address, token=key.token, timeout=TIMEOUT, retries=0))
    return Tenant(name, key, client)


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def rows(store: Store, *tables: str) -> dict[str, int]:
    """Rows in each of ``tables`` (every table of the schema if none is named)."""
    with store.db.read() as s:
        return {
            name: int(s.scalar(select(func.count()).select_from(Base.metadata.tables[name])) or 0)
            for name in tables or tuple(Base.metadata.tables)
        }


def start_request(
    model_id: str, x: str | np.ndarray, y: str | np.ndarray, options: dict[str, Any], request_id: str = ""
) -> pb.StartRunRequest:
    """A StartRun of ``model_id`` on datasets, by id (str) or inline (an array)."""
    request = pb.StartRunRequest(
        model_id=model_id, options=codec.options_from_dict(options), request_id=request_id
    )
    for source, value in ((request.inputs, x), (request.targets, y)):
        if isinstance(value, str):
            source.dataset_id = value
        else:
            codec.array_to_tensor(value, into=source.tensor)
    return request


def upload_request(array: np.ndarray, request_id: str = "") -> Iterator[pb.UploadDatasetRequest]:
    header = pb.DatasetHeader(dtype=pb.FLOAT64, shape=array.shape, request_id=request_id)
    yield pb.UploadDatasetRequest(header=header)
    yield pb.UploadDatasetRequest(chunk=array.astype("<f8").tobytes())


def watch_to_end(stub: pb_grpc.TrainerStub, run_id: str) -> pb.Run:
    """Follow a run until it ends; the run as it ended."""
    events = list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=120))
    assert events, f"run {run_id}: no events"
    assert events[-1].HasField("result"), events[-1]
    return events[-1].result


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    """The error ``call`` ends with (a stream is read to its end); it must fail."""
    try:
        answer = call()
        if isinstance(answer, Iterator):
            list(answer)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"the call was not refused: {answer!r}")


# ------------------------------------------------------------------------------------ no valid key, no call

DESCRIPTORS = (pb.DESCRIPTOR, ip.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
"""The proto files of every service the server registers: gradwire, the open inference protocol,
health, reflection."""
EVERY_METHOD: list[MethodDescriptor] = [
    method
    for descriptor in DESCRIPTORS
    for service in descriptor.services_by_name.values()
    for method in service.methods
]
KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}
"""The channel's method making a call, by (client streams, server streams)."""


@dataclass(frozen=True)
class Answer:
    """How a call ended: its code, and its first response (OK) or its status message."""

    code: grpc.StatusCode
    response: Message | None = None
    message: str = ""


def invoke(
    channel: grpc.Channel, method: MethodDescriptor, metadata: Metadata, requests: list[Message] | None = None
) -> Answer:
    """Call ``method`` through a generic channel with ``requests`` (by default one empty message of
    its input type; all of them for a client stream, else the first); of a stream, the first
    response only (then the call is cancelled)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    multicallable = getattr(channel, KINDS[method.client_streaming, method.server_streaming])
    call = multicallable(
        path,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=GetMessageClass(method.output_type).FromString,
    )
    requests = requests or [GetMessageClass(method.input_type)()]
    try:
        answer = call(
            iter(requests) if method.client_streaming else requests[0], metadata=metadata, timeout=10
        )
        if not method.server_streaming:
            return Answer(grpc.StatusCode.OK, answer)
        first = next(answer, None)
        answer.cancel()
        return Answer(grpc.StatusCode.OK, first)
    except grpc.RpcError as error:
        return Answer(error.code(), message=error.details() or "")


def name_of(method: MethodDescriptor) -> str:
    return f"{method.containing_service.full_name}/{method.name}"


HEALTH = "grpc.health.v1.Health"
"""The one service open to callers without a key: load balancers and probes ask it."""
PROBES = ("inference.GRPCInferenceService/ServerLive", "inference.GRPCInferenceService/ServerReady")
"""The open inference protocol's probes, open too: they say whether the server is up, no more."""


def is_open(method: MethodDescriptor) -> bool:
    return method.containing_service.full_name == HEALTH or name_of(method) in PROBES


def revoked_key(server: Running) -> NewKey:
    key = enrol(server, "acme")
    server.app.store.tenants.revoke(key.id)
    return key


CALLERS: dict[str, tuple[Callable[[Running], Metadata], str]] = {
    "no key": (lambda server: (), NO_KEY),
    "a valid key under another scheme": (
        lambda server: (("authorization", f"Basic {enrol(server, 'acme').token}"),),
        NO_KEY,
    ),
    "an empty bearer": (lambda server: (("authorization", "Bearer "),), NO_KEY),
    "a malformed key": (lambda server: bearer("gw_0123456789ab_short"), BAD_KEY),
    "an unknown key": (lambda server: bearer(new_key().token), BAD_KEY),
    "a revoked key": (lambda server: bearer(revoked_key(server).token), BAD_KEY),
}
"""What each kind of caller without a valid key sends, and the message it is refused with."""
TRAINER = pb.DESCRIPTOR.services_by_name["Trainer"]
CREATING: dict[str, tuple[MethodDescriptor, list[Message]]] = {
    "CreateModel": (
        TRAINER.methods_by_name["CreateModel"],
        [pb.CreateModelRequest(spec=codec.spec_from_dict(SPEC), request_id="r1")],
    ),
    "UploadDataset": (TRAINER.methods_by_name["UploadDataset"], list(upload_request(X, request_id="r2"))),
}
"""Requests that do work (a model, a dataset, request ids) when they are let through."""


def test_the_methods_called_are_those_of_every_service_the_server_offers(
    server: Running, channel: grpc.Channel
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=bearer(enrol(server, "acme").token),
        timeout=TIMEOUT,
    )
    offered = {service.name for reply in replies for service in reply.list_services_response.service}
    assert offered == {method.containing_service.full_name for method in EVERY_METHOD}
    assert (HEALTH,) == OPEN_SERVICES
    assert {f"/{name}" for name in PROBES} == OPEN_METHODS
    assert health_pb2.DESCRIPTOR.services_by_name["Health"].full_name == HEALTH


@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_method_but_health_refuses_a_caller_without_a_valid_key_and_does_nothing(
    server: Running, channel: grpc.Channel, caller: str
) -> None:
    make_metadata, message = CALLERS[caller]
    metadata = make_metadata(server)
    before = rows(server.app.store)
    answers = {name_of(m): invoke(channel, m, metadata) for m in EVERY_METHOD}
    answers |= {f"{name} (real)": invoke(channel, m, metadata, r) for name, (m, r) in CREATING.items()}

    opened = {name_of(m) for m in EVERY_METHOD if is_open(m)}
    closed = {name: (a.code, a.message) for name, a in answers.items() if name not in opened}
    assert closed == dict.fromkeys(closed, (grpc.StatusCode.UNAUTHENTICATED, message))
    assert len(closed) == sum(not is_open(m) for m in EVERY_METHOD) + len(CREATING)
    refused_open = [name for name in opened if answers[name].code == grpc.StatusCode.UNAUTHENTICATED]
    assert refused_open == []  # List is UNIMPLEMENTED by grpc_health's servicer: answered all the same
    assert answers[PROBES[0]].response.live  # type: ignore[union-attr]
    health = {name: answers[name] for name in opened if name.startswith(HEALTH)}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health["grpc.health.v1.Health/Check"].response.status == serving  # type: ignore[union-attr]
    assert health["grpc.health.v1.Health/Watch"].response.status == serving  # type: ignore[union-attr]
    assert rows(server.app.store) == before  # no model, dataset, upload, request id: nothing


def test_the_same_calls_with_a_valid_key_reach_their_handlers(server: Running, channel: grpc.Channel) -> None:
    metadata = bearer(enrol(server, "acme").token)
    answers = {name_of(m): invoke(channel, m, metadata) for m in EVERY_METHOD}
    unauthenticated = [name for name, a in answers.items() if a.code == grpc.StatusCode.UNAUTHENTICATED]
    assert unauthenticated == []
    assert answers["gradwire.v1.Trainer/ListModels"].code == grpc.StatusCode.OK
    assert answers["gradwire.v1.Trainer/CreateModel"].code == grpc.StatusCode.INVALID_ARGUMENT  # no spec
    assert answers["gradwire.v1.Trainer/GetModel"].code == grpc.StatusCode.NOT_FOUND
    reflected = answers["grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
    assert reflected.code == grpc.StatusCode.OK

    before = rows(server.app.store, "models", "datasets", "request_ids")
    created = {name: invoke(channel, m, metadata, r).code for name, (m, r) in CREATING.items()}
    assert created == dict.fromkeys(CREATING, grpc.StatusCode.OK)
    after = rows(server.app.store, "models", "datasets", "request_ids")
    assert after == {name: count + {"request_ids": 2}.get(name, 1) for name, count in before.items()}


# ------------------------------------------------------------------------------------ a valid key


def test_a_valid_key_works_on_unary_and_streaming_calls_as_its_tenant(
    server: Running, closing: ExitStack
) -> None:
    acme = tenant(server, "acme", closing)
    model = acme.client.create_model(SPEC, name="keyed")  # unary
    assert model.refresh().name == "keyed"
    assert [m.id for m in acme.client.list_models()] == [model.id]
    x, y = acme.client.upload_dataset(X), acme.client.upload_dataset(Y)  # client stream
    assert (x.shape, y.shape) == (X.shape, Y.shape)
    run = acme.stub.StartRun(start_request(model.id, x.id, y.id, SHORT), timeout=TIMEOUT)
    assert watch_to_end(acme.stub, run.run_id).status == "completed"  # server stream
    train = pb.TrainRequest(model_id=model.id, options=codec.options_from_dict(SHORT))
    codec.array_to_tensor(X, into=train.inputs)
    codec.array_to_tensor(Y, into=train.targets)
    events = list(acme.stub.Train(train, timeout=120))  # server stream
    assert events[-1].result.version == 3
    assert set(model.export()) == {"0.W", "0.b"}  # server stream
    assert model.predict(X).shape == (32, 3)

    usage = server.app.store.tenants.usage("acme")
    assert (usage["max_models"], usage["max_parameters"]) == (1, PARAMETERS)
    assert server.app.store.tenants.usage(DEFAULT_TENANT)["max_models"] == 0


def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_key_are_ignored(
    server: Running, channel: grpc.Channel
) -> None:
    token = enrol(server, "acme").token
    headers = {
        f"Bearer {token}": "OK",
        f"bearer {token}": "OK",
        f"BEARER {token}": "OK",
        f"bEaReR {token}": "OK",
        f"  Bearer   {token}  ": "OK",  # bearer() strips the value and the token
        token: NO_KEY,  # no scheme
        f"Token {token}": NO_KEY,
        "Bearer": NO_KEY,
        f"Bearer {token} {token}": BAD_KEY,
        f"Bearer {token}x": BAD_KEY,
        f"Bearer {token.upper()}": BAD_KEY,  # the key itself is case-sensitive
    }
    list_models = pb.DESCRIPTOR.services_by_name["Trainer"].methods_by_name["ListModels"]
    seen = {}
    for header in headers:
        answer = invoke(channel, list_models, (("authorization", header),))
        seen[header] = answer.message if answer.code == grpc.StatusCode.UNAUTHENTICATED else answer.code.name
    assert seen == headers


# ------------------------------------------------------------------------------------ tenants


@dataclass(frozen=True)
class Refusal:
    """How a call was refused, with the id it named replaced by ``<id>`` (the message quotes at
    most a prefix of a long id): what a caller can learn from it."""

    code: grpc.StatusCode
    message: str
    status: bytes

    @classmethod
    def of(cls, call: Callable[[str], Any], key: str) -> Refusal:
        """How ``call(key)`` was refused."""
        error = refused(lambda: call(key))
        status = rpc_status.from_call(error)
        message = error.details() or ""
        shown = next((key[:n] for n in range(len(key), 7, -1) if key[:n] in message), key)
        raw = b"" if status is None else status.SerializeToString()
        return cls(error.code(), message.replace(shown, "<id>"), raw.replace(shown.encode(), b"<id>"))


def random_model_id() -> str:
    return uuid.uuid4().hex


def random_dataset_id() -> str:
    return hashlib.sha256(os.urandom(16)).hexdigest()


def tensor(array: np.ndarray) -> pb.Tensor:
    out = pb.Tensor()
    codec.array_to_tensor(array, into=out)
    return out


def test_another_tenants_ids_are_not_found_exactly_like_ids_that_do_not_exist(
    server: Running, closing: ExitStack
) -> None:
    a, b = tenant(server, "a", closing), tenant(server, "b", closing)
    a_model = a.client.create_model(SPEC, name="a's")
    a_x, a_y = a.client.upload_dataset(X), a.client.upload_dataset(Y)
    a_run = a.stub.StartRun(start_request(a_model.id, a_x.id, a_y.id, SHORT), timeout=TIMEOUT)
    assert watch_to_end(a.stub, a_run.run_id).status == "completed"
    a_model.predict(X)  # A's network is cached by the server now: B must not reach it through that
    a_busy = a.client.create_model(SPEC, name="a's busy one")
    a_live = a.stub.StartRun(start_request(a_busy.id, a_x.id, a_y.id, LONG), timeout=TIMEOUT)
    b_model = b.client.create_model(SPEC, name="b's")
    b_x, b_y = b.client.upload_dataset(X + 1), b.client.upload_dataset(Y + 1)

    def train(model_id: str) -> Any:
        request = pb.TrainRequest(model_id=model_id, options=codec.options_from_dict(SHORT))
        request.inputs.CopyFrom(tensor(X + 2))
        request.targets.CopyFrom(tensor(Y + 2))
        return b.stub.Train(request, timeout=TIMEOUT)

    s = b.stub
    by_model: dict[str, Callable[[str], Any]] = {
        "GetModel": lambda i: s.GetModel(pb.GetModelRequest(model_id=i), timeout=TIMEOUT),
        "DeleteModel": lambda i: s.DeleteModel(pb.DeleteModelRequest(model_id=i), timeout=TIMEOUT),
        "ExportModel": lambda i: s.ExportModel(pb.ExportModelRequest(model_id=i), timeout=TIMEOUT),
        "ExportModel version 1": lambda i: s.ExportModel(
            pb.ExportModelRequest(model_id=i, version=1), timeout=TIMEOUT
        ),
        "Predict": lambda i: s.Predict(pb.PredictRequest(model_id=i, inputs=tensor(X)), timeout=TIMEOUT),
        "Predict version 2": lambda i: s.Predict(
            pb.PredictRequest(model_id=i, inputs=tensor(X), version=2), timeout=TIMEOUT
        ),
        "GetGradients": lambda i: s.GetGradients(
            pb.GetGradientsRequest(model_id=i, inputs=tensor(X), targets=tensor(Y), version=2),
            timeout=TIMEOUT,
        ),
        "GetTrainingHistory": lambda i: s.GetTrainingHistory(
            pb.GetTrainingHistoryRequest(model_id=i), timeout=TIMEOUT
        ),
        "StartRun of the model": lambda i: s.StartRun(
            start_request(i, b_x.id, b_y.id, SHORT), timeout=TIMEOUT
        ),
        "Train": train,
    }
    by_dataset: dict[str, Callable[[str], Any]] = {
        "GetDataset": lambda i: s.GetDataset(pb.GetDatasetRequest(dataset_id=i), timeout=TIMEOUT),
        "DeleteDataset": lambda i: s.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=i), timeout=TIMEOUT),
        "StartRun on the dataset as inputs": lambda i: s.StartRun(
            start_request(b_model.id, i, b_y.id, SHORT), timeout=TIMEOUT
        ),
        "StartRun on the dataset as targets": lambda i: s.StartRun(
            start_request(b_model.id, b_x.id, i, SHORT), timeout=TIMEOUT
        ),
    }
    by_run: dict[str, Callable[[str], Any]] = {
        "GetRun": lambda i: s.GetRun(pb.GetRunRequest(run_id=i), timeout=TIMEOUT),
        "WatchRun": lambda i: s.WatchRun(pb.WatchRunRequest(run_id=i), timeout=TIMEOUT),
        "CancelRun": lambda i: s.CancelRun(pb.CancelRunRequest(run_id=i), timeout=TIMEOUT),
        "ResumeRun": lambda i: s.ResumeRun(pb.ResumeRunRequest(run_id=i), timeout=TIMEOUT),
    }
    cases = [
        *((name, call, a_model.id, random_model_id()) for name, call in by_model.items()),
        *((name, call, a_x.id, random_dataset_id()) for name, call in by_dataset.items()),
        *((name, call, a_run.run_id, random_model_id()) for name, call in by_run.items()),
        *((f"{name} (a live run)", call, a_live.run_id, random_model_id()) for name, call in by_run.items()),
    ]
    before = rows(server.app.store, "models", "datasets", "training_runs", "weight_versions")
    differs = {}
    for name, call, theirs, nobodys in cases:
        seen, unknown = Refusal.of(call, theirs), Refusal.of(call, nobodys)
        assert seen.code == grpc.StatusCode.NOT_FOUND, (name, seen)
        assert "<id>" in seen.message, (name, seen)
        if seen != unknown:
            differs[name] = (seen, unknown)
    assert differs == {}
    assert rows(server.app.store, "models", "datasets", "training_runs", "weight_versions") == before

    # ListRuns by another tenant's model: an empty list, as for a model that does not exist
    by_theirs = s.ListRuns(pb.ListRunsRequest(model_id=a_model.id), timeout=TIMEOUT)
    by_nobodys = s.ListRuns(pb.ListRunsRequest(model_id=random_model_id()), timeout=TIMEOUT)
    assert by_theirs == by_nobodys == pb.ListRunsResponse()

    # B's lists show B's own only; A's things are as they were
    assert [m.id for m in b.client.list_models()] == [b_model.id]
    assert [d.id for d in b.client.list_datasets()] == [b_x.id, b_y.id]
    assert list(b.client.list_runs()) == []
    assert [m.id for m in a.client.list_models()] == [a_model.id, a_busy.id]
    assert [d.id for d in a.client.list_datasets()] == [a_x.id, a_y.id]
    assert [r.id for r in a.client.list_runs()] == [a_run.run_id, a_live.run_id]
    live = a.client.run(a_live.run_id)
    assert (live.info.status in ("queued", "running"), live.info.cancel_requested) == (True, False)
    live.cancel()
    assert watch_to_end(a.stub, a_live.run_id).status == "cancelled"


def test_request_ids_belong_to_their_tenant(server: Running, closing: ExitStack) -> None:
    a, b = tenant(server, "a", closing), tenant(server, "b", closing)
    a_model = a.client.create_model(SPEC, name="same", request_id="shared")
    b_model = b.client.create_model(SPEC, name="same", request_id="shared")
    assert b_model.id != a_model.id
    assert b.client.model(b_model.id).id == b_model.id
    assert a.client.create_model(SPEC, name="same", request_id="shared").id == a_model.id  # still A's retry

    a_data = a.stub.UploadDataset(upload_request(X, "shared upload"), timeout=TIMEOUT)
    b_data = b.stub.UploadDataset(upload_request(X + 1, "shared upload"), timeout=TIMEOUT)  # other data
    assert b_data.dataset_id != a_data.dataset_id
    targets = a.client.upload_dataset(Y).id, b.client.upload_dataset(Y).id

    a_run = a.stub.StartRun(
        start_request(a_model.id, a_data.dataset_id, targets[0], SHORT, "run"), timeout=TIMEOUT
    )
    b_run = b.stub.StartRun(
        start_request(b_model.id, b_data.dataset_id, targets[1], SHORT, "run"), timeout=TIMEOUT
    )
    assert (b_run.run_id != a_run.run_id, b_run.model_id) == (True, b_model.id)
    assert [r.id for r in b.client.list_runs()] == [b_run.run_id]
    for who, run in ((a, a_run), (b, b_run)):
        assert watch_to_end(who.stub, run.run_id).status == "completed"


def test_two_tenants_uploading_the_same_bytes_each_get_their_own_dataset(
    server: Running, closing: ExitStack
) -> None:
    a, b = tenant(server, "a", closing), tenant(server, "b", closing)
    a_x, b_x = a.client.upload_dataset(X, name="a's"), b.client.upload_dataset(X, name="b's")
    assert a_x.id == b_x.id  # the same content address
    assert (a.client.dataset(a_x.id).name, b.client.dataset(b_x.id).name) == ("a's", "b's")
    with server.app.store.db.read() as s:
        owners = s.execute(text("SELECT tenant_id FROM datasets WHERE id = :id"), {"id": a_x.id}).scalars()
        assert sorted(owners) == ["a", "b"]

    b.client.delete_dataset(b_x.id)
    assert b.client.dataset_or_none(b_x.id) is None
    assert a.client.dataset(a_x.id).nbytes == X.nbytes
    model = a.client.create_model(SPEC)
    a_y = a.client.upload_dataset(Y)
    run = a.stub.StartRun(start_request(model.id, a_x.id, a_y.id, SHORT), timeout=TIMEOUT)
    ended = watch_to_end(a.stub, run.run_id)
    assert (ended.status, ended.rows) == ("completed", len(X))  # A's bytes are intact and load


# ------------------------------------------------------------------------------------ quotas


def quota_refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """The code, the first words of the message, and the QuotaFailure violations of a refusal."""
    status = rpc_status.from_call(error)
    assert status is not None, error
    violations = []
    for detail in status.details:
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(failure):
            violations += [(v.subject, v.description) for v in failure.violations]
    return error.code(), " ".join((error.details() or "").split()[:3]), violations


def over(quota: str, limit: int, tenant: str = "acme") -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    return (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"quota {quota} exceeded:",
        [(f"tenant:{tenant}", f"{quota} is {limit}")],
    )


@pytest.mark.parametrize(("quota", "limit"), [("max_models", 1), ("max_parameters", PARAMETERS + 4)])
def test_the_model_quotas_refuse_a_model_past_them_until_one_is_deleted(
    server: Running, closing: ExitStack, quota: str, limit: int
) -> None:
    acme = tenant(server, "acme", closing)
    server.app.store.tenants.set_quotas("acme", {quota: limit})
    first = acme.client.create_model(SPEC)
    before = rows(server.app.store)
    create = pb.CreateModelRequest(spec=codec.spec_from_dict(SPEC), request_id="refused")
    error = refused(lambda: acme.stub.CreateModel(create, timeout=TIMEOUT))
    assert quota_refusal(error) == over(quota, limit)
    assert rows(server.app.store) == before
    assert [m.id for m in acme.client.list_models()] == [first.id]

    first.delete()
    second = acme.stub.CreateModel(create, timeout=TIMEOUT)
    assert [m.id for m in acme.client.list_models()] == [second.model_id]


def test_the_dataset_quota_refuses_an_upload_on_its_header_before_its_bytes(
    server: Running, closing: ExitStack
) -> None:
    acme = tenant(server, "acme", closing)
    server.app.store.tenants.set_quotas("acme", {"max_dataset_bytes": X.nbytes})
    held = acme.client.upload_dataset(X)
    before = rows(server.app.store)
    released, sent = threading.Event(), []

    def header_then_bytes() -> Iterator[pb.UploadDatasetRequest]:
        header, chunk = upload_request(X + 1, "refused")
        yield header
        released.wait(10)  # the bytes come only once the call is answered (or 10 s later)
        sent.append(chunk)
        yield chunk

    error = refused(lambda: acme.stub.UploadDataset(header_then_bytes(), timeout=2 * TIMEOUT))
    answered_without_the_bytes = not sent
    released.set()
    assert quota_refusal(error) == over("max_dataset_bytes", X.nbytes)
    assert answered_without_the_bytes
    assert rows(server.app.store) == before  # no upload, no chunk, no request id
    assert [d.id for d in acme.client.list_datasets()] == [held.id]

    acme.client.delete_dataset(held.id)
    stored = acme.stub.UploadDataset(upload_request(X + 1, "refused"), timeout=TIMEOUT)
    assert [d.id for d in acme.client.list_datasets()] == [stored.dataset_id]


def test_the_dataset_quota_counts_inline_training_data(server: Running, closing: ExitStack) -> None:
    acme = tenant(server, "acme", closing)
    model = acme.client.create_model(SPEC)
    server.app.store.tenants.set_quotas("acme", {"max_dataset_bytes": X.nbytes + Y.nbytes})
    held = acme.client.upload_dataset(np.ones((1, 128)))  # 1024 of 1280 bytes: X (512) does not fit
    before = rows(server.app.store)
    start = start_request(model.id, X, Y, SHORT, "refused")
    error = refused(lambda: acme.stub.StartRun(start, timeout=TIMEOUT))
    assert quota_refusal(error) == over("max_dataset_bytes", X.nbytes + Y.nbytes)
    assert rows(server.app.store) == before

    acme.client.delete_dataset(held.id)
    run = acme.stub.StartRun(start, timeout=TIMEOUT)
    assert watch_to_end(acme.stub, run.run_id).status == "completed"
    assert server.app.store.tenants.usage("acme")["max_dataset_bytes"] == X.nbytes + Y.nbytes


def test_the_run_quota_refuses_a_second_active_run_until_the_first_ends(
    server: Running, closing: ExitStack
) -> None:
    acme = tenant(server, "acme", closing)
    first, second = acme.client.create_model(SPEC), acme.client.create_model(SPEC)
    x, y = acme.client.upload_dataset(X).id, acme.client.upload_dataset(Y).id
    server.app.store.tenants.set_quotas("acme", {"max_active_runs": 1})
    long = acme.stub.StartRun(start_request(first.id, x, y, LONG), timeout=TIMEOUT)
    counted = ("training_runs", "run_datasets", "datasets", "request_ids")
    before = rows(server.app.store, *counted)
    start = start_request(second.id, x, y, SHORT, "refused")
    error = refused(lambda: acme.stub.StartRun(start, timeout=TIMEOUT))
    assert quota_refusal(error) == over("max_active_runs", 1)
    assert rows(server.app.store, *counted) == before
    assert [r.id for r in acme.client.list_runs()] == [long.run_id]

    acme.stub.CancelRun(pb.CancelRunRequest(run_id=long.run_id), timeout=TIMEOUT)
    assert watch_to_end(acme.stub, long.run_id).status == "cancelled"
    run = acme.stub.StartRun(start, timeout=TIMEOUT)
    assert watch_to_end(acme.stub, run.run_id).status == "completed"


@pytest.mark.parametrize("quota", ["max_dataset_bytes", "max_active_runs"])
def test_a_start_run_refused_for_a_quota_stores_none_of_its_inline_data(
    server: Running, closing: ExitStack, quota: str
) -> None:
    acme = tenant(server, "acme", closing)
    first, second = acme.client.create_model(SPEC), acme.client.create_model(SPEC)
    if quota == "max_active_runs":
        x, y = acme.client.upload_dataset(X).id, acme.client.upload_dataset(Y).id
        long = acme.stub.StartRun(start_request(first.id, x, y, LONG), timeout=TIMEOUT)
        server.app.store.tenants.set_quotas("acme", {quota: 1})
    else:
        server.app.store.tenants.set_quotas("acme", {quota: X.nbytes + Y.nbytes - 1})  # X fits, Y not
    before = rows(server.app.store, "datasets", "blob_chunks", "training_runs", "request_ids")
    start = start_request(second.id, X + 3, Y + 3, SHORT, "refused")
    error = refused(lambda: acme.stub.StartRun(start, timeout=TIMEOUT))
    assert quota_refusal(error)[:2] == over(quota, 0)[:2]
    try:
        assert rows(server.app.store, "datasets", "blob_chunks", "training_runs", "request_ids") == before
    finally:
        if quota == "max_active_runs":
            acme.stub.CancelRun(pb.CancelRunRequest(run_id=long.run_id), timeout=TIMEOUT)


# ------------------------------------------------------------------------------------ revocation


def test_a_revoked_key_stops_working_within_the_cache_bound_and_a_new_key_works_at_once(
    start_server: Callable[..., Running], closing: ExitStack, record_property: Callable[[str, object], None]
) -> None:
    bound = 1.0
    server = start_server(auth=True, auth_cache_seconds=bound)
    acme = tenant(server, "acme", closing)
    list_models = pb.ListModelsRequest()
    assert acme.stub.ListModels(list_models, timeout=TIMEOUT) == pb.ListModelsResponse()  # cached now

    server.app.store.tenants.revoke(acme.key.id)
    revoked_at = time.monotonic()
    deadline = revoked_at + bound + 5.0
    ended: tuple[grpc.StatusCode, str] | None = None
    while ended is None and time.monotonic() < deadline:
        try:
            acme.stub.ListModels(list_models, timeout=TIMEOUT)
            time.sleep(0.02)  # a polling interval
        except grpc.RpcError as failed:
            ended = failed.code(), failed.details() or ""
    took = time.monotonic() - revoked_at
    record_property("revoked_key_refused_after_seconds", round(took, 3))
    assert ended == (grpc.StatusCode.UNAUTHENTICATED, BAD_KEY)
    assert took <= bound + 1.0, f"the revoked key worked {took:.2f} s after its revocation"

    fresh = new_key()
    stub = pb_grpc.TrainerStub(closing.enter_context(grpc.insecure_channel(server.address)))
    unknown = refused(lambda: stub.ListModels(list_models, metadata=bearer(fresh.token), timeout=TIMEOUT))
    assert (unknown.code(), unknown.details()) == (grpc.StatusCode.UNAUTHENTICATED, BAD_KEY)
    server.app.store.tenants.add_key("acme", fresh.id, fresh.hash)  # unknown a moment ago: not remembered so
    with Client(server.address, token=fresh.token, timeout=TIMEOUT, retries=0) as client:
        assert list(client.list_models()) == []


def test_on_postgresql_a_revocation_reaches_every_replica_at_once(
    start_server: Callable[..., Running], closing: ExitStack, database_url: str
) -> None:
    """Two servers on one PostgreSQL database remember keys for five minutes; a revocation is
    announced as it commits (LISTEN/NOTIFY) and both forget it, long before their caches expire."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no notices: the cache's time bound is all (the test above)")
    heard, logger = KeysCleared(), logging.getLogger("gradwire.service.transport.auth")
    closing.callback(logger.setLevel, logger.level)
    closing.callback(logger.removeHandler, heard)
    logger.addHandler(heard)
    logger.setLevel(logging.INFO)
    first, second = (start_server(auth=True, auth_cache_seconds=300) for _ in range(2))
    acme = tenant(first, "acme", closing)
    list_models = pb.ListModelsRequest()
    stubs = [
        pb_grpc.TrainerStub(closing.enter_context(grpc.insecure_channel(server.address)))
        for server in (first, second)
    ]
    for stub in stubs:  # both remember the key now
        assert stub.ListModels(list_models, metadata=bearer(acme.key.token), timeout=TIMEOUT) is not None
    first.app.store.tenants.revoke(acme.key.id)
    heard.wait_for(2)
    for stub in stubs:
        error = refused(
            lambda stub=stub: stub.ListModels(list_models, metadata=bearer(acme.key.token), timeout=TIMEOUT)
        )
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, BAD_KEY)


class KeysCleared(logging.Handler):
    """Counts the servers' "API key cache cleared" lines; a test waits for them, not for time."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "API key cache cleared":
            with self.changed:
                self.count += 1
                self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= count, timeout), (
                f"{self.count} of {count} caches cleared"
            )


# ------------------------------------------------------------------------------------ keys at rest


def test_keys_are_stored_as_hashes_only(server: Running) -> None:
    store = server.app.store
    key = enrol(server, "acme")
    assert KEY.fullmatch(key.token), key.token
    secret = key.token.split("_", 2)[2]
    assert len(secret) == 43
    with store.engine.connect() as connection:
        stored = [dict(row._mapping) for row in connection.execute(text("SELECT * FROM api_keys"))]
    assert [row["id"] for row in stored] == [key.id]
    values = [str(value) for row in stored for value in row.values()]
    assert [v for v in values if key.token in v or secret in v] == []
    assert stored[0]["secret_hash"] == key_hash(key.token) == hashlib.sha256(key.token.encode()).hexdigest()

    found = store.tenants.find_key(key_hash(key.token))
    assert found is not None
    assert (found.id, found.tenant, found.active) == (key.id, "acme", True)
    assert store.tenants.find_key(key_hash(new_key().token)) is None
    assert [k.id for k in store.tenants.keys("acme")] == [key.id]
