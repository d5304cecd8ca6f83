"""The asyncio SDK, on ``grpc.aio``: :class:`Client`'s methods, errors and records, awaited.

>>> async with AsyncClient("127.0.0.1:50051") as client:                # doctest: +SKIP
...     model = await client.create_model(spec, name="spirals")
...     history = await model.fit(X, Y, epochs=50, optimizer="adam", progress=True)
...     outputs = await asyncio.gather(*(model.predict(x) for x in batches))
...     run = await model.start_run(X, Y, epochs=5000)
...     async for epoch in run.epochs():                                  # a watch, until it ends
...         print(epoch["epoch"], epoch["train_loss"])

This module is the asyncio shell over the core the sync shell :mod:`.sdk` stands on too: the
records, :class:`TLS` and the connection rules, every request, the export assembly, the retry
policy and the watch state machines are decided there once (:mod:`.records`, :mod:`.connection`,
:mod:`.calls`, :mod:`.replies`, :mod:`.retry`, :mod:`.watching`, :mod:`.handles`); here they are
awaited with ``grpc.aio`` (and the pauses slept with ``asyncio.sleep``).

Make an :class:`AsyncClient` inside the event loop that uses it (in an ``async def``): a
``grpc.aio`` channel belongs to the loop it was made in.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, Unpack

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2_grpc

from gradwire.v1.answers import Gradients, Prediction

from . import calls, errors
from .calls import Call, FitArguments, Listing, RunArguments, Weights
from .connection import TLS, Connection
from .handles import ClientCore, ModelCore, RunCore
from .records import DatasetInfo, Exported, History, ModelInfo, RunInfo, after_run
from .replies import ArraysExport, Export, OnnxExport

__all__ = ["TLS", "AsyncClient", "AsyncEpochCallback", "AsyncModel", "AsyncRun"]

R = TypeVar("R")
T = TypeVar("T")
AsyncEpochCallback = Callable[[dict[str, Any]], bool | Awaitable[bool | None] | None]
"""Hears each epoch; returns (or, a coroutine function, resolves to) ``True`` to cancel the run."""
AsyncCallbacks = tuple[AsyncEpochCallback, ...]


class _Metadata:
    """Adds ``metadata`` to every call: the token on a plaintext channel, where gRPC refuses call
    credentials (the sync SDK's ``_Metadata``, for ``grpc.aio``). One subclass per kind of call:
    ``grpc.aio`` files an interceptor under the first kind it implements only (grpc/grpc#31442)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        given = tuple(details.metadata or ())
        return await continuation(
            details._replace(metadata=grpc.aio.Metadata(*given, *self.metadata)), request
        )


class _UnaryUnaryMetadata(_Metadata, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _Metadata._intercept


class _UnaryStreamMetadata(_Metadata, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Metadata._intercept


class _StreamUnaryMetadata(_Metadata, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Metadata._intercept  # the requests are an iterator: passed on as they are


class _StreamStreamMetadata(_Metadata, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Metadata._intercept


METADATA_INTERCEPTORS = (
    _UnaryUnaryMetadata,
    _UnaryStreamMetadata,
    _StreamUnaryMetadata,
    _StreamStreamMetadata,
)


def _channel(to: Connection) -> grpc.aio.Channel:
    """A secure channel (the token as call credentials), or a plaintext one (the token, where it
    may go, added to every call by the interceptors of :data:`METADATA_INTERCEPTORS`)."""
    if to.tls is not None:
        return grpc.aio.secure_channel(to.address, to.credentials(), options=to.options)
    metadata = to.metadata()
    interceptors = [kind(metadata) for kind in METADATA_INTERCEPTORS] if metadata else None
    return grpc.aio.insecure_channel(to.address, options=to.options, interceptors=interceptors)


class AsyncClient(ClientCore[grpc.aio.Channel]):
    """A ``grpc.aio`` connection to a gradwire server; use it as ``async with``.

    The arguments are :class:`~gradwire.client.Client`'s, with the same defaults and
    environment variables; a ``channel`` given must be a ``grpc.aio`` one. :attr:`stub` is the raw
    (awaitable) stub.
    """

    kind = "AsyncClient"

    def _bind(self) -> None:
        self._loop = _running_loop()

    def _open(self, to: Connection) -> grpc.aio.Channel:
        return _channel(to)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still in flight end CANCELLED."""
        if not self._closed:
            self._closed = True
            await self.channel.close()

    def _check_open(self) -> None:
        super()._check_open()
        if _running_loop() is not self._loop:
            raise RuntimeError(
                "this gradwire AsyncClient was made in another event loop (its channel belongs to "
                "that loop): make one in each loop, inside it"
            )

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call by RPC name, with the deadline, retries and typed errors."""
        rpc = getattr(self.stub, method)
        return await self._with_retries(method, lambda: rpc(request, timeout=timeout or self.timeout))

    async def _send(self, call: Call[T]) -> T:
        return call.read(await self.call(call.method, call.request, call.deadline(self.timeout)))

    async def _with_retries(self, method: str, send: Callable[[], Awaitable[R]]) -> R:
        """``await send()``, again after each pause of the retry policy while the server is unavailable."""
        self._check_open()
        for pause in self.retry.pauses(method):
            try:
                return await send()
            except grpc.RpcError as error:
                self.retry.check(error)
            await asyncio.sleep(pause)
        with errors.typed_errors():
            return await send()

    async def _list(self, listing: Listing[T]) -> AsyncIterator[T]:
        """Every record of a listing, fetched a page at a time (``async for``)."""
        more = True
        while more:
            page = await self.call(listing.method, listing.request)
            for item in listing.items(page):
                yield item
            more = listing.advance(page)

    # ------------------------------------------------------------------ models

    async def create_model(
        self, spec: Mapping[str, Any], name: str = "", request_id: str | None = None
    ) -> AsyncModel:
        """A new model from a spec in the engine's JSON form (``NetworkSpec.to_dict()``)."""
        return AsyncModel(self, await self._send(calls.create_model(spec, name, request_id)))

    async def import_model(
        self, spec: Mapping[str, Any], weights: Weights, name: str = "", request_id: str | None = None
    ) -> AsyncModel:
        """A new model (version 1) from a spec and its weights, as :meth:`Client.import_model`."""
        return AsyncModel(self, await self._send(calls.import_model(spec, weights, name, request_id)))

    async def model(self, model_id: str) -> AsyncModel:
        return AsyncModel(self, await self._send(calls.get_model(model_id)))

    def list_models(self, page_size: int = 50) -> AsyncIterator[ModelInfo]:
        """Every model, oldest first, fetched a page at a time (``async for``)."""
        return self._list(calls.list_models(page_size))

    async def delete_model(self, model_id: str) -> None:
        await self._send(calls.delete_model(model_id))

    # ------------------------------------------------------------------ datasets

    async def upload_dataset(self, array: Any, name: str = "", request_id: str | None = None) -> DatasetInfo:
        """Store a 2-D float32 or float64 array on the server; returns its dataset. Data the
        server holds already (same content address) is not sent again. Converting and hashing
        the array run in a worker thread, off the event loop."""
        upload = await asyncio.to_thread(calls.upload, array, name, request_id)
        existing = await self.dataset_or_none(upload.dataset_id)
        if existing is not None:
            return existing
        timeout = upload.deadline(self.timeout)
        reply = await self._with_retries(
            "UploadDataset", lambda: self.stub.UploadDataset(upload.messages(), timeout=timeout)
        )
        return DatasetInfo.from_proto(reply)

    async def dataset(self, dataset_id: str) -> DatasetInfo:
        return await self._send(calls.get_dataset(dataset_id))

    async def dataset_or_none(self, dataset_id: str) -> DatasetInfo | None:
        with contextlib.suppress(errors.NotFoundError):
            return await self.dataset(dataset_id)
        return None

    def list_datasets(self, page_size: int = 50) -> AsyncIterator[DatasetInfo]:
        return self._list(calls.list_datasets(page_size))

    async def delete_dataset(self, dataset_id: str) -> None:
        await self._send(calls.delete_dataset(dataset_id))

    # ------------------------------------------------------------------ runs

    async def run(self, run_id: str) -> AsyncRun:
        return AsyncRun(self, await self._send(calls.get_run(run_id)))

    def list_runs(
        self, model_id: str = "", statuses: tuple[str, ...] = (), page_size: int = 50
    ) -> AsyncIterator[RunInfo]:
        return self._list(calls.list_runs(model_id, statuses, page_size))

    async def healthy(self) -> bool:
        """Whether the server reports SERVING for the gradwire service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(calls.HEALTH_CHECK, timeout=self.timeout)
        except grpc.RpcError:
            return False
        return calls.serving(reply)


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "make an AsyncClient inside the event loop that uses it (in an async def): "
            "a grpc.aio channel belongs to the loop it was made in"
        ) from None


class AsyncRun(RunCore[AsyncClient]):
    """A handle on one run: follow it (``async for``), wait for it, cancel or resume it."""

    async def refresh(self) -> RunInfo:
        return self._took(await self.client._send(calls.get_run(self.id)))

    async def cancel(self) -> RunInfo:
        """Cancel it: a queued or interrupted run at once, a running one within a minibatch."""
        return self._took(await self.client._send(calls.cancel_run(self.id)))

    async def resume(self) -> RunInfo:
        """Queue an interrupted run again (a queued or running one is left as it is)."""
        return self._took(await self.client._send(calls.resume_run(self.id)))

    async def epochs(
        self, after_epoch: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The run's epochs after ``after_epoch``, committed ones first, then live ones, until it
        ends or is interrupted (then :attr:`info` holds how). Reconnects from the last epoch
        seen while the server cannot be reached, for up to ``client.reconnect_seconds`` (to
        another replica, where the client has several); :attr:`info` tells a stalled run as
        the sync SDK's :meth:`~gradwire.client.Run.epochs` does.

        Leaving the loop early, or cancelling the task in it, ends the stream (at once for a
        cancel; for a ``break``, when the generator is closed: ``contextlib.aclosing``).
        """
        self.client._check_open()
        watch = self._watch(after_epoch)
        while (request := watch.next_request()) is not None:
            call = self.client.stub.WatchRun(request, timeout=timeout)
            try:
                async for event in call:
                    for epoch in watch.hear(event):
                        yield epoch
                    if watch.over:
                        break
            except grpc.RpcError as error:
                await asyncio.sleep(watch.lost(error))
            finally:
                call.cancel()  # no-op once it ended; else the watcher left (break, task cancelled)

    async def wait(
        self,
        callbacks: AsyncCallbacks = (),
        progress: bool = False,
        timeout: float | None = None,
        resume: int = 3,
    ) -> History:
        """Follow the run to its end; returns its :class:`History` (see :meth:`Run.wait`).
        Callbacks may be plain functions or coroutine functions; one answering ``True`` cancels
        the run. Past ``timeout`` seconds the run is cancelled and :class:`DeadlineExceededError`
        raised. A failed run raises :class:`RunFailedError`."""
        waiting = self._waiting(callbacks, progress, timeout, resume)
        while True:
            try:
                async with contextlib.aclosing(self.epochs(waiting.cursor, waiting.left())) as epochs:
                    async for epoch in epochs:
                        if waiting.stop([await _answer(listener, epoch) for listener in waiting.hear(epoch)]):
                            await self.cancel()
            except errors.DeadlineExceededError:
                await _cancel_quietly(self)
                raise
            if not waiting.resumes(self.info):
                return waiting.result(self.info, self.transfer_seconds)
            try:
                await self.resume()
            except errors.FailedPreconditionError:
                await self.refresh()  # it ended meanwhile (cancelled, or resumed and done): watch its end


async def _answer(listener: Callable[[dict[str, Any]], Any], epoch: dict[str, Any]) -> bool | None:
    answer = listener(epoch)
    return await answer if inspect.isawaitable(answer) else answer


class AsyncModel(ModelCore[AsyncClient]):
    """A handle on one model of the server: fit, predict, gradients, export, history."""

    async def refresh(self) -> ModelInfo:
        self.info = await self.client._send(calls.get_model(self.id))
        return self.info

    async def start_run(self, x: Any, y: Any, **arguments: Unpack[RunArguments]) -> AsyncRun:
        """Queue a run and return at once; the arguments are :meth:`Model.start_run`'s."""
        started = time.perf_counter()
        start = calls.start_run(self.id, self.dtype, x, y, **arguments)
        uploaded = {
            role: (await self.client.upload_dataset(a, name=role)).id for role, a in start.uploads.items()
        }
        return AsyncRun(
            self.client, await self.client._send(start.call(uploaded)), time.perf_counter() - started
        )

    async def fit(
        self, x: Any, y: Any, *, callbacks: AsyncCallbacks = (), **arguments: Unpack[FitArguments]
    ) -> History:
        """Train on ``(x, y)`` and wait for the end; returns the run's :class:`History` (see
        :meth:`Model.fit`). If this call is interrupted (an exception, the task cancelled,
        ``timeout``), the run is cancelled too."""
        run_arguments, progress, timeout = calls.fit_arguments(arguments)
        run = await self.start_run(x, y, **run_arguments)
        try:
            history = await run.wait(callbacks, progress, timeout)
        except BaseException:
            await asyncio.shield(_cancel_quietly(run))  # a second cancel of the task leaves it to finish
            raise
        self.info = after_run(self.info, run.info)  # the run's end says it: no call
        return history

    async def predict_full(self, x: Any, version: int = 0) -> Prediction:
        return await self.client._send(calls.predict(self.id, self.dtype, x, version))

    async def predict(self, x: Any, version: int = 0) -> np.ndarray:
        """Outputs ``(rows, outputs)``: probabilities for classifiers."""
        return (await self.predict_full(x, version)).outputs

    async def predict_labels(self, x: Any, version: int = 0) -> np.ndarray:
        """Class labels (classifiers only)."""
        return self._labels(await self.predict_full(x, version))

    async def gradients(
        self, x: Any, y: Any, *, numerical_check: bool = False, inference_mode: bool = False, version: int = 0
    ) -> Gradients:
        """The loss and every parameter's gradient on ``(x, y)``; the model does not change."""
        call = calls.gradients(self.id, self.dtype, (x, y), version, numerical_check, inference_mode)
        return await self.client._send(call)

    async def export(self, version: int = 0) -> dict[str, np.ndarray]:
        """A version's weights and buffers by name (0: the current version)."""
        return (await self.exported(version)).arrays

    async def exported(self, version: int = 0) -> Exported:
        """A version's weights and buffers, its number and their digest, checked against each other."""
        return await self._export(ArraysExport(self.id, version))

    async def export_onnx(self, path: str | os.PathLike[str] | None = None, version: int = 0) -> bytes:
        """A version as an ONNX model (see :meth:`Model.export_onnx`); written to ``path`` if given."""
        return await self._export(OnnxExport(self.id, version, path))

    async def _export(self, export: Export[T]) -> T:
        """Every piece ExportModel streams, fed to ``export``, errors typed; its result."""
        self.client._check_open()
        call = self.client.stub.ExportModel(export.request, timeout=self.client.timeout)
        try:
            with errors.typed_errors():
                async for piece in call:
                    export.add(piece)
        finally:
            call.cancel()
        return export.result()

    async def history(self) -> list[History]:
        """Every training run of the model, oldest first."""
        return await self.client._send(calls.training_history(self.id))

    async def delete(self) -> None:
        await self.client.delete_model(self.id)


async def _cancel_quietly(run: AsyncRun) -> None:
    with contextlib.suppress(errors.GradwireError):  # the server is gone: the run ends when its lease does
        await run.cancel()
