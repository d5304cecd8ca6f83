"""The sync and asyncio SDKs are two shells over one core: they send the same requests and leave
a watch the same way. Real servers on port 0, real channels, interceptors that see the calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
import numpy as np
from helpers import CallsEnded, Running

from gradwire.client import AsyncClient, Client, calls
from gradwire.v1 import gradwire_pb2 as pb

SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [{"kind": "dense", "units": 1, "activation": "sigmoid"}],
    "loss": "binary_crossentropy",
}
X = np.random.default_rng(3).normal(size=(16, 2))
Y = (X[:, :1] > 0).astype(np.float64)
LONG = {"epochs": 100_000, "batch_size": 1}
"""Options of a run that goes on until it is cancelled."""


class Recording(grpc.UnaryStreamClientInterceptor):
    """Keeps every server-streaming call it starts, with its request, as a tracing interceptor
    would: the calls outlive whatever the SDK does with them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        call = continuation(details, request)
        self.calls.append((request, call))
        return call


class AsyncRecording(grpc.aio.UnaryStreamClientInterceptor):
    """The requests of the server-streaming calls a ``grpc.aio`` channel starts."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        self.requests.append(request)
        return await continuation(details, request)


def test_a_sync_watch_left_early_cancels_its_call(server: Running, calls_ended: CallsEnded) -> None:
    """Closing the epochs generator ends the WatchRun call at once (a ``finally``, as the asyncio
    shell does), though something else still holds the call: the stream is not left open until
    the garbage collector finds it."""
    recording = Recording()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), recording)
    with Client(channel=channel, timeout=60) as client:
        run = client.create_model(SPEC).start_run(X, Y, **LONG)
        epochs = run.epochs()
        next(epochs)
        epochs.close()
        [(request, call)] = recording.calls
        assert request == calls.watch_run(run.id, 0)
        assert not call.is_active()  # ended on the client's side when the generator closed
        assert calls_ended.wait_for("WatchRun") == "CANCELLED"  # and so the server saw it
        assert run.refresh().status == "running"  # the watch ended, not the run
        run.cancel()


def test_both_shells_send_the_same_export_request(server: Running) -> None:
    """``exported`` names the ARRAYS format in both shells (one request builder). ARRAYS is the
    field's default, so the bytes were the same before the async shell named it too."""
    sync_recording, async_recording = Recording(), AsyncRecording()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), sync_recording)
    with Client(channel=channel, timeout=60) as client:
        model = client.create_model(SPEC)
        arrays = model.exported().arrays

    async def exported_async() -> dict[str, np.ndarray]:
        channel = grpc.aio.insecure_channel(server.address, interceptors=[async_recording])
        async with AsyncClient(channel=channel, timeout=60) as client:
            return (await (await client.model(model.id)).exported()).arrays

    assert sorted(asyncio.run(exported_async())) == sorted(arrays)
    [(sync_request, _)] = sync_recording.calls
    [async_request] = async_recording.requests
    assert sync_request == async_request == pb.ExportModelRequest(model_id=model.id, format=pb.ARRAYS)


class Unary(grpc.UnaryUnaryClientInterceptor):
    """The names of the unary methods a channel calls."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.methods.append(details.method.rsplit("/", 1)[-1])
        return continuation(details, request)


def test_fit_takes_the_models_new_version_from_the_runs_end_without_another_call(server: Running) -> None:
    """A fit is StartRun and WatchRun: the model's version comes with the run's end (a GetModel
    after it cost a round trip of every small fit's fixed cost)."""
    unary = Unary()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), unary)
    with Client(channel=channel, timeout=60) as client:
        model = client.create_model(SPEC)
        before = model.info
        unary.methods.clear()
        history = model.fit(X, Y, epochs=3)
        assert unary.methods == ["StartRun"]
        assert (model.info.version, history.version) == (2, 2)
        after = model.info
        assert (after.training, after.active_run_id) == (False, "")
        server_says = model.refresh()
        assert replace(after, updated_at=server_says.updated_at) == server_says
        assert before.updated_at < after.updated_at  # the run's finish, as the version moved
