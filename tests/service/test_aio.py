"""The asyncio SDK (``gradwire.client.AsyncClient``) against real servers, SQLite and PostgreSQL:
the same calls, records and errors as the sync client, many calls at once, cancellation, tokens.
Each test runs its coroutine with ``asyncio.run`` (no pytest plugin)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
import trustme
from helpers import CallsEnded, Running

from gradwire.client import (
    TLS,
    AsyncClient,
    Client,
    ClientClosedError,
    DatasetInfo,
    DeadlineExceededError,
    History,
    InvalidArgumentError,
    ModelInfo,
    NotFoundError,
    RunInfo,
    UnauthenticatedError,
    UnavailableError,
)
from gradwire.client.aio import AsyncModel, AsyncRun
from gradwire.client.sdk import TLS_VARIABLES, TOKEN_VARIABLE
from gradwire.service.transport.auth import new_key
from gradwire.storage import DEFAULT_TENANT
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 4,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": "squared_error",
    "dtype": "float64",
    "seed": 7,
}
RNG = np.random.default_rng(11)
X = RNG.normal(size=(64, 4))
Y = np.sin(X[:, :1])
SHORT = {"epochs": 3, "batch_size": 16}
LONG = {"epochs": 100_000, "batch_size": 1}
"""Options of a run that goes on until it is cancelled."""
TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def no_client_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say what each client sends: no token or TLS comes from the environment."""
    for name in (*TLS_VARIABLES.values(), TOKEN_VARIABLE):
        monkeypatch.delenv(name, raising=False)


def enrol(server: Running) -> str:
    """A new key of the default tenant, kept by the server's store; its token."""
    key = new_key()
    server.app.store.tenants.add_key(DEFAULT_TENANT, key.id, key.hash, name="an async client's key")
    return str(key.token)


async def first_epoch_then_cancel(run: AsyncRun) -> None:
    """Watch ``run`` in a task until it has streamed an epoch, cancel that task, see it end."""
    seen = asyncio.Event()

    async def watch() -> None:
        async for _ in run.epochs():
            seen.set()

    task = asyncio.create_task(watch())
    await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------------ the calls


def test_create_upload_train_watch_predict_export_delete(server: Running) -> None:
    """Every kind of call, giving the sync client's record types; the predictions, gradients and
    weights are the sync client's for the same model."""

    async def main() -> tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            assert await client.healthy()
            model = await client.create_model(SPEC, name="async")
            assert isinstance(model, AsyncModel)
            assert isinstance(model.info, ModelInfo)
            assert (model.info.name, model.info.version) == ("async", 1)

            inputs = await client.upload_dataset(X, name="inputs")
            targets = await client.upload_dataset(Y, name="targets")
            assert isinstance(inputs, DatasetInfo)
            assert (inputs.shape, inputs.dtype) == ((64, 4), "float64")
            assert (await client.upload_dataset(X)).id == inputs.id  # by content: not sent again
            assert {d.id async for d in client.list_datasets()} == {inputs.id, targets.id}

            heard: list[int] = []
            awaited: list[int] = []

            async def later(epoch: dict[str, Any]) -> None:
                awaited.append(epoch["epoch"])

            history = await model.fit(
                inputs, targets, callbacks=(lambda e: heard.append(e["epoch"]), later), **SHORT
            )
            assert isinstance(history, History)
            assert heard == awaited == [1, 2, 3]  # plain and coroutine callbacks hear every epoch
            assert (history.status, history.stop_reason, history.version) == ("completed", "max_epochs", 2)
            assert model.info.version == 2

            run = await model.start_run(X, Y, **SHORT)  # small arrays: inline
            assert isinstance(run.info, RunInfo)
            assert [e["epoch"] async for e in run.epochs()] == [1, 2, 3]
            assert (run.status, run.info.version) == ("completed", 3)
            assert (await client.run(run.id)).info == run.info
            assert [r.id async for r in client.list_runs(model.id)] == [history.run_id, run.id]
            assert [len(h.epochs) for h in await model.history()] == [3, 3]

            await model.refresh()
            outputs = await model.predict(X)
            gradients = await model.gradients(X, Y)
            weights = await model.export()
            assert [m.id async for m in client.list_models()] == [model.id]
            return model.id, outputs, gradients.loss, weights

    model_id, outputs, loss, weights = asyncio.run(main())
    with Client(server.address, timeout=TIMEOUT) as sync:
        model = sync.model(model_id)
        assert model.info.version == 3
        np.testing.assert_array_equal(outputs, model.predict(X))
        assert loss == model.gradients(X, Y).loss
        expected = model.export()
        assert weights.keys() == expected.keys()
        for name, array in expected.items():
            np.testing.assert_array_equal(weights[name], array)

    async def delete() -> None:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            await (await client.model(model_id)).delete()
            with pytest.raises(NotFoundError):
                await client.model(model_id)

    asyncio.run(delete())


def test_a_model_exported_and_imported_again_answers_as_before(server: Running, tmp_path: Path) -> None:
    """import_model and export_onnx, as the sync client's: the imported copy predicts bit for bit
    as the original, and the ONNX bytes are the sync client's."""
    x = np.random.default_rng(2).normal(size=(6, SPEC["input_dim"]))

    async def main() -> tuple[np.ndarray, np.ndarray, bytes, str]:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            original = await client.create_model(SPEC)
            copy = await client.import_model(SPEC, await original.export(), name="copy")
            onnx_bytes = await original.export_onnx(tmp_path / "model.onnx")
            return await original.predict(x), await copy.predict(x), onnx_bytes, original.id

    before, after, onnx_bytes, model_id = asyncio.run(main())
    np.testing.assert_array_equal(before, after)
    assert (tmp_path / "model.onnx").read_bytes() == onnx_bytes
    with Client(server.address) as sync:
        assert sync.model(model_id).export_onnx() == onnx_bytes


def test_twenty_predicts_at_once(client: Client, server: Running) -> None:
    """asyncio.gather over one channel: each answer is its own request's, as the sync client's."""
    model = client.create_model(SPEC)
    model.fit(X, Y, **SHORT)
    batches = [X[i : i + 3 + i % 5] for i in range(20)]

    async def main() -> list[np.ndarray]:
        async with AsyncClient(server.address, timeout=TIMEOUT) as aclient:
            handle = await aclient.model(model.id)
            return list(await asyncio.gather(*(handle.predict(batch) for batch in batches)))

    outputs = asyncio.run(main())
    assert len(outputs) == 20
    for batch, output in zip(batches, outputs, strict=True):
        np.testing.assert_array_equal(output, model.predict(batch))


# ------------------------------------------------------------------------------------ errors


def test_errors_are_the_sync_clients(server: Running) -> None:
    async def main() -> None:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            with pytest.raises(NotFoundError) as missing:
                await client.model("no-such-model")
            assert isinstance(missing.value.__cause__, grpc.RpcError)

            with pytest.raises(InvalidArgumentError) as bad_spec:
                await client.create_model({**SPEC, "loss": "hinge"})
            assert "spec.loss" in bad_spec.value.fields, bad_spec.value.field_violations
            model = await client.create_model(SPEC)
            with pytest.raises(InvalidArgumentError) as bad_options:
                await model.fit(X, Y, epochs=2, batch_size=0)
            assert "options.batch_size" in bad_options.value.fields
            with pytest.raises(ValueError, match="expected a 2-D array"):  # checked before sending
                await model.predict(np.ones((2, 2, 2)))
            assert await model.history() == []
            run = await model.start_run(X, Y, **SHORT)
            await run.wait()
            with pytest.raises(NotFoundError):  # a stream's error, too
                await anext(AsyncRun(client, replace(run.info, id="no-such-run")).epochs())

        with pytest.raises(ClientClosedError):
            await client.model(model.id)

    asyncio.run(main())


def test_a_server_with_auth_refuses_a_client_without_a_token(start_server: Callable[..., Running]) -> None:
    server = start_server(auth=True, checkpoint_interval=1.0)

    async def main() -> None:
        async with AsyncClient(server.address, timeout=TIMEOUT, retries=0) as client:
            with pytest.raises(UnauthenticatedError):
                await client.create_model(SPEC)
            with pytest.raises(UnauthenticatedError):
                [m async for m in client.list_models()]
            with pytest.raises(UnauthenticatedError):
                await client.upload_dataset(X)

    asyncio.run(main())


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counting(grpc.aio.UnaryUnaryClientInterceptor):
    """Records the attempts that leave the client, per method."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = {}

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls.setdefault(method.rsplit("/", 1)[1], []).append(request)
        return await continuation(details, request)


def test_only_calls_safe_to_repeat_are_retried_on_unavailable() -> None:
    counter = Counting()

    async def main() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}", interceptors=[counter])
        async with AsyncClient(channel=channel, retries=2, backoff=0.0, timeout=5) as client:
            with pytest.raises(UnavailableError) as info:
                await client.model("any")
            assert isinstance(info.value.__cause__, grpc.RpcError)
            with pytest.raises(UnavailableError):
                await client.create_model(SPEC)
            with pytest.raises(UnavailableError):
                await client.delete_model("any")

    asyncio.run(main())
    assert {method: len(requests) for method, requests in counter.calls.items()} == {
        "GetModel": 3,
        "CreateModel": 3,
        "DeleteModel": 1,
    }
    assert len({request.request_id for request in counter.calls["CreateModel"]}) == 1


def test_a_client_belongs_to_the_event_loop_it_was_made_in() -> None:
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(RuntimeError, match="inside the event loop"):
        AsyncClient(address)

    async def make() -> AsyncClient:
        return AsyncClient(address)

    client = asyncio.run(make())

    async def use() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            await client.model("any")

    asyncio.run(use())


# ------------------------------------------------------------------------------------ cancellation


def test_cancelling_a_watching_task_ends_the_stream(server: Running, calls_ended: CallsEnded) -> None:
    async def main() -> RunInfo:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            model = await client.create_model(SPEC)
            run = await model.start_run(X, Y, **LONG)
            await first_epoch_then_cancel(run)
            assert (
                await asyncio.to_thread(calls_ended.wait_for, "WatchRun") == "CANCELLED"
            )  # as the server saw it
            assert (await run.refresh()).status == "running"  # the watch ended, not the run
            await run.cancel()
            await run.wait()
            return run.info

    assert asyncio.run(main()).status == "cancelled"


def test_cancelling_a_fit_cancels_its_run(server: Running) -> None:
    """The task awaiting fit is cancelled (as asyncio.timeout or Ctrl-C would): so is the run."""

    async def main() -> RunInfo:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            model = await client.create_model(SPEC)
            trained = asyncio.Event()
            fit = asyncio.create_task(model.fit(X, Y, callbacks=(lambda e: trained.set(),), **LONG))
            await trained.wait()
            fit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fit
            return await last_run_to_its_end(client, model.id)

    info = asyncio.run(main())
    assert (info.status, info.stop_reason) == ("cancelled", "cancelled")


async def last_run_to_its_end(client: AsyncClient, model_id: str) -> RunInfo:
    runs = [r async for r in client.list_runs(model_id)]
    run = await client.run(runs[-1].id)
    await run.wait()
    return run.info


def test_a_fit_past_its_timeout_cancels_its_run(server: Running) -> None:
    async def main() -> RunInfo:
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:
            model = await client.create_model(SPEC)
            with pytest.raises(DeadlineExceededError):
                await model.fit(X, Y, timeout=0.5, **LONG)
            return await last_run_to_its_end(client, model.id)

    info = asyncio.run(main())
    assert (info.status, info.stop_reason) == ("cancelled", "cancelled")


# ------------------------------------------------------------------------------------ tokens and TLS


def test_a_token_goes_over_a_loopback_plaintext_channel(
    start_server: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of call carries it: unary, client stream (upload), server streams (watch, export)."""
    server = start_server(auth=True, checkpoint_interval=1.0)
    token = enrol(server)

    async def main() -> None:
        async with AsyncClient(server.address, token=token, timeout=TIMEOUT, retries=0) as client:
            model = await client.create_model(SPEC)
            inputs = await client.upload_dataset(X)
            history = await model.fit(inputs, Y, **SHORT)
            assert history.version == 2
            assert set(await model.export()) == {"0.W", "0.b", "1.W", "1.b"}
            reply = await client.stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)  # the raw stub
            assert [m.model_id for m in reply.models] == [model.id]
        monkeypatch.setenv(TOKEN_VARIABLE, token)
        async with AsyncClient(server.address, timeout=TIMEOUT) as client:  # GRADWIRE_TOKEN
            assert [m.id async for m in client.list_models()] == [model.id]

    asyncio.run(main())


def test_a_token_goes_in_plaintext_only_to_this_machine_unless_insecure() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="a token goes over TLS only"):
            AsyncClient("192.0.2.1:50051", token="t")
        async with AsyncClient("192.0.2.1:50051", token="t", insecure=True):
            pass
        async with AsyncClient("[::1]:50051", token="t"):
            pass

    asyncio.run(main())


def test_tls_with_a_token_as_call_credentials(start_server: Callable[..., Running], tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: tmp_path / name for name in ("ca.pem", "server.pem", "server.key")}
    paths["ca.pem"].write_bytes(ca.cert_pem.bytes())
    paths["server.pem"].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    paths["server.key"].write_bytes(issued.private_key_pem.bytes())
    server = start_server(
        auth=True, tls_cert_file=str(paths["server.pem"]), tls_key_file=str(paths["server.key"])
    )
    token = enrol(server)
    tls = TLS(ca_file=str(paths["ca.pem"]))

    async def main() -> None:
        async with AsyncClient(server.address, tls=tls, token=token, timeout=TIMEOUT) as client:
            model = await client.create_model(SPEC)
            assert (await model.predict(X)).shape == (64, 1)
        async with AsyncClient(server.address, tls=tls, timeout=TIMEOUT, retries=0) as client:
            with pytest.raises(UnauthenticatedError):
                await client.create_model(SPEC)
        async with AsyncClient(server.address, token=token, timeout=10, retries=0) as client:
            with pytest.raises(UnavailableError):  # plaintext to a TLS server: no handshake
                await client.create_model(SPEC)

    asyncio.run(main())


def test_the_async_client_balances_over_replicas(
    start_server: Callable[..., Running], tmp_path: Path
) -> None:
    """As the sync client: two servers on two databases, and the models land on both."""
    first, second = start_server(), start_server(database_url=f"sqlite:///{tmp_path / 'second.db'}")

    async def create() -> None:
        async with AsyncClient(f"{first.address},{second.address}", timeout=TIMEOUT) as client:
            for _ in range(6):
                await client.create_model(SPEC)

    asyncio.run(create())
    for replica in (first, second):
        with Client(replica.address) as alone:
            assert len(list(alone.list_models())) >= 1
