"""The asyncio SDK, on ``grpc.aio``: :class:`Client`'s methods, errors and records, awaited.

>>> async with AsyncClient("127.0.0.1:50051") as client:                # doctest: +SKIP
...     model = await client.create_model(spec, name="spirals")
...     history = await model.fit(X, Y, epochs=50, optimizer="adam", progress=True)
...     outputs = await asyncio.gather(*(model.predict(x) for x in batches))
...     run = await model.start_run(X, Y, epochs=5000)
...     async for epoch in run.epochs():                                  # a watch, until it ends
...         print(epoch["epoch"], epoch["train_loss"])

Everything the sync :mod:`~gradwire.client.sdk` decides is decided the same here, mostly by its
own code: the records (:class:`ModelInfo`, :class:`RunInfo`, :class:`DatasetInfo`,
:class:`History`, :class:`Exported`), :class:`TLS`, which calls are retried on UNAVAILABLE
(with backoff, ``asyncio.sleep``), the deadlines, the typed errors of :mod:`.errors`, the token
(call credentials over TLS; in plaintext to a loopback address only, unless ``insecure``).

Make an :class:`AsyncClient` inside the event loop that uses it (in an ``async def``): a
``grpc.aio`` channel belongs to the loop it was made in.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc
from gradwire.v1.answers import Gradients, Prediction
from gradwire.v1.digest import array_id, little_endian, weights_digest
from gradwire.v1.digest import raw as raw_bytes
from gradwire.v1.vocabulary import RunStatus

from .errors import (
    ClientClosedError,
    DeadlineExceededError,
    FailedPreconditionError,
    GradwireError,
    RunFailedError,
    UnavailableError,
    from_rpc_error,
)
from .sdk import (
    INLINE_LIMIT,
    INSECURE_VARIABLE,
    RETRIED,
    TLS,
    TLS_VARIABLES,
    UPLOAD_CHUNK,
    Connection,
    DatasetInfo,
    Exported,
    History,
    MiB,
    ModelInfo,
    RunInfo,
    _array,
    _float_array,
    _is_dataset,
    _loopback,
    _npz_bytes,
    _request_id,
    print_progress,
    run_data,
    run_settings,
)

R = TypeVar("R")
AsyncEpochCallback = Callable[[dict[str, Any]], bool | Awaitable[bool | None] | None]
"""Hears each epoch; returns (or, a coroutine function, resolves to) ``True`` to cancel the run."""


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


def _channel(
    address: str, tls: TLS | None, token: str, options: list[tuple[str, int | str]], insecure: bool = False
) -> grpc.aio.Channel:
    """The sync SDK's ``_channel``, made with ``grpc.aio``: a secure channel (the token as call
    credentials), or a plaintext one (the token, to a loopback address only unless ``insecure``)."""
    if tls is not None:
        credentials = tls.credentials()
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.aio.secure_channel(address, credentials, options=options)
    if token and not insecure and not _loopback(address):
        raise ValueError(
            f"a token goes over TLS only (or in plaintext to this machine), and {address} is "
            f"neither: give tls (or {TLS_VARIABLES['ca_file']}), or insecure=True "
            f"({INSECURE_VARIABLE}=true) on a network you trust"
        )
    bearer = (("authorization", f"Bearer {token}"),)
    interceptors = [kind(bearer) for kind in METADATA_INTERCEPTORS] if token else None
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


class AsyncClient:
    """A ``grpc.aio`` connection to a gradwire server; use it as ``async with``.

    The arguments are :class:`~gradwire.client.Client`'s, with the same defaults and
    environment variables; a ``channel`` given must be a ``grpc.aio`` one. :attr:`stub` is the raw
    (awaitable) stub.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_message_mb: int = 512,
        reconnect_seconds: float = 60.0,
        channel: grpc.aio.Channel | None = None,
        tls: TLS | None = None,
        token: str | None = None,
        insecure: bool | None = None,
    ) -> None:
        self._loop = _running_loop()
        to = Connection.of(address, tls, token, insecure, max_message_mb)
        self.address, self.tls = to.address, to.tls
        self.channel = channel or _channel(to.address, to.tls, to.token, to.options, to.insecure)
        self.stub = pb_grpc.TrainerStub(self.channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.reconnect_seconds = reconnect_seconds
        self._closed = False

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
        if self._closed:
            raise ClientClosedError("this gradwire AsyncClient was closed; create a new one")
        if _running_loop() is not self._loop:
            raise RuntimeError(
                "this gradwire AsyncClient was made in another event loop (its channel belongs to "
                "that loop): make one in each loop, inside it"
            )

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call by RPC name, with the deadline, retries and typed errors."""
        attempts = 1 + (self.retries if method in RETRIED else 0)
        return await self._with_retries(
            lambda: getattr(self.stub, method)(request, timeout=timeout or self.timeout), attempts
        )

    async def _with_retries(self, send: Callable[[], Awaitable[R]], attempts: int | None = None) -> R:
        self._check_open()
        attempts = 1 + self.retries if attempts is None else attempts
        for attempt in range(attempts):
            try:
                return await send()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    await asyncio.sleep(self.backoff * 2**attempt)
                    continue
                raise from_rpc_error(error) from error
        raise AssertionError("unreachable")

    async def _pages(self, method: str, request: Any) -> AsyncIterator[Any]:
        while True:
            page = await self.call(method, request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ------------------------------------------------------------------ models

    async def create_model(
        self, spec: Mapping[str, Any], name: str = "", request_id: str | None = None
    ) -> AsyncModel:
        """A new model from a spec in the engine's JSON form (``NetworkSpec.to_dict()``)."""
        request = pb.CreateModelRequest(
            name=name, spec=codec.spec_from_dict(spec), request_id=_request_id(request_id)
        )
        return AsyncModel(self, ModelInfo.from_proto(await self.call("CreateModel", request)))

    async def import_model(
        self,
        spec: Mapping[str, Any],
        weights: Mapping[str, Any] | bytes | str | os.PathLike[str],
        name: str = "",
        request_id: str | None = None,
    ) -> AsyncModel:
        """A new model (version 1) from a spec and its weights, as :meth:`Client.import_model`."""
        data = _npz_bytes(weights)
        request = pb.ImportModelRequest(
            name=name, spec=codec.spec_from_dict(spec), weights=data, request_id=_request_id(request_id)
        )
        timeout = max(self.timeout, len(data) / MiB)  # a deadline that a link of 1 MiB/s still meets
        return AsyncModel(self, ModelInfo.from_proto(await self.call("ImportModel", request, timeout)))

    async def model(self, model_id: str) -> AsyncModel:
        reply = await self.call("GetModel", pb.GetModelRequest(model_id=model_id))
        return AsyncModel(self, ModelInfo.from_proto(reply))

    async def list_models(self, page_size: int = 50) -> AsyncIterator[ModelInfo]:
        """Every model, oldest first, fetched a page at a time (``async for``)."""
        async for page in self._pages("ListModels", pb.ListModelsRequest(page_size=page_size)):
            for m in page.models:
                yield ModelInfo.from_proto(m)

    async def delete_model(self, model_id: str) -> None:
        await self.call("DeleteModel", pb.DeleteModelRequest(model_id=model_id))

    # ------------------------------------------------------------------ datasets

    async def upload_dataset(self, array: Any, name: str = "", request_id: str | None = None) -> DatasetInfo:
        """Store a 2-D float32 or float64 array on the server; returns its dataset. Data the
        server holds already (same content address) is not sent again. Converting and hashing
        the array run in a worker thread, off the event loop."""
        data, content = await asyncio.to_thread(_content, array)
        existing = await self.dataset_or_none(content)
        if existing is not None:
            return existing
        header = pb.DatasetHeader(
            name=name,
            dtype=codec.FLOAT_DTYPES[data.dtype.name],
            shape=data.shape,
            request_id=_request_id(request_id),
        )
        raw = raw_bytes(data)

        async def messages() -> AsyncIterator[pb.UploadDatasetRequest]:
            yield pb.UploadDatasetRequest(header=header)
            for start in range(0, len(raw), UPLOAD_CHUNK):
                yield pb.UploadDatasetRequest(chunk=bytes(raw[start : start + UPLOAD_CHUNK]))

        timeout = max(self.timeout, len(raw) / MiB)  # a deadline that a link of 1 MiB/s still meets
        reply = await self._with_retries(lambda: self.stub.UploadDataset(messages(), timeout=timeout))
        return DatasetInfo.from_proto(reply)

    async def dataset(self, dataset_id: str) -> DatasetInfo:
        reply = await self.call("GetDataset", pb.GetDatasetRequest(dataset_id=dataset_id))
        return DatasetInfo.from_proto(reply)

    async def dataset_or_none(self, dataset_id: str) -> DatasetInfo | None:
        try:
            return await self.dataset(dataset_id)
        except GradwireError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def list_datasets(self, page_size: int = 50) -> AsyncIterator[DatasetInfo]:
        async for page in self._pages("ListDatasets", pb.ListDatasetsRequest(page_size=page_size)):
            for d in page.datasets:
                yield DatasetInfo.from_proto(d)

    async def delete_dataset(self, dataset_id: str) -> None:
        await self.call("DeleteDataset", pb.DeleteDatasetRequest(dataset_id=dataset_id))

    # ------------------------------------------------------------------ runs

    async def run(self, run_id: str) -> AsyncRun:
        return AsyncRun(self, RunInfo.from_proto(await self.call("GetRun", pb.GetRunRequest(run_id=run_id))))

    async def list_runs(
        self, model_id: str = "", statuses: tuple[str, ...] = (), page_size: int = 50
    ) -> AsyncIterator[RunInfo]:
        request = pb.ListRunsRequest(model_id=model_id, statuses=statuses, page_size=page_size)
        async for page in self._pages("ListRuns", request):
            for r in page.runs:
                yield RunInfo.from_proto(r)

    async def healthy(self) -> bool:
        """Whether the server reports SERVING for the gradwire service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service="gradwire.v1.Trainer")
        try:
            reply = await stub.Check(request, timeout=self.timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "make an AsyncClient inside the event loop that uses it (in an async def): "
            "a grpc.aio channel belongs to the loop it was made in"
        ) from None


def _content(array: Any) -> tuple[np.ndarray, str]:
    """An upload's bytes (little-endian) and content address."""
    data = little_endian(_float_array("array", array))
    return data, array_id(data)


class AsyncRun:
    """A handle on one run: follow it (``async for``), wait for it, cancel or resume it."""

    def __init__(self, client: AsyncClient, info: RunInfo, transfer_seconds: float = 0.0) -> None:
        self.client, self.info, self.transfer_seconds = client, info, transfer_seconds

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    async def _update(self, method: str, request: Any) -> RunInfo:
        self.info = RunInfo.from_proto(await self.client.call(method, request))
        return self.info

    async def refresh(self) -> RunInfo:
        return await self._update("GetRun", pb.GetRunRequest(run_id=self.id))

    async def cancel(self) -> RunInfo:
        """Cancel it: a queued or interrupted run at once, a running one within a minibatch."""
        return await self._update("CancelRun", pb.CancelRunRequest(run_id=self.id))

    async def resume(self) -> RunInfo:
        """Queue an interrupted run again (a queued or running one is left as it is)."""
        return await self._update("ResumeRun", pb.ResumeRunRequest(run_id=self.id))

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
        cursor, since = after_epoch, None
        while True:
            call = self.client.stub.WatchRun(
                pb.WatchRunRequest(run_id=self.id, after_epoch=cursor), timeout=timeout
            )
            try:
                async for event in call:
                    if event.HasField("result"):
                        self.info = RunInfo.from_proto(event.result)
                        return
                    if event.HasField("stalled"):  # its server is likely gone: the run waits
                        self.info = RunInfo.from_proto(event.stalled)
                        continue
                    epoch = codec.epoch_to_dict(event.progress)
                    cursor, since = epoch["epoch"], None
                    yield epoch
                return
            except grpc.RpcError as error:
                since = since or time.monotonic()
                if (
                    error.code() != grpc.StatusCode.UNAVAILABLE
                    or time.monotonic() - since > self.client.reconnect_seconds
                ):
                    raise from_rpc_error(error) from error
                await asyncio.sleep(self.client.backoff)
            finally:
                call.cancel()  # no-op once it ended; else the watcher left (break, task cancelled)

    async def wait(
        self,
        callbacks: tuple[AsyncEpochCallback, ...] = (),
        progress: bool = False,
        timeout: float | None = None,
        resume: int = 3,
    ) -> History:
        """Follow the run to its end; returns its :class:`History` (see :meth:`Run.wait`).
        Callbacks may be plain functions or coroutine functions; one answering ``True`` cancels
        the run. Past ``timeout`` seconds the run is cancelled and :class:`DeadlineExceededError`
        raised. A failed run raises :class:`RunFailedError`."""
        listeners = (*callbacks, print_progress) if progress else callbacks
        deadline = None if timeout is None else time.monotonic() + timeout
        history = History(run_id=self.id)
        cancelled = False
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                async with contextlib.aclosing(
                    self.epochs(len(history.epochs) and history.epochs[-1]["epoch"], left)
                ) as epochs:
                    async for epoch in epochs:
                        history.epochs.append(epoch)
                        if cancelled:
                            continue  # epochs that ran before the cancel took effect: kept, not announced
                        if any([await _answer(listener, epoch) for listener in listeners]):
                            await self.cancel()
                            cancelled = True
            except DeadlineExceededError:
                await _cancel_quietly(self)
                raise
            if self.info.status != RunStatus.INTERRUPTED or resume <= 0:
                break
            resume -= 1
            try:
                await self.resume()
            except FailedPreconditionError:
                await self.refresh()  # it ended meanwhile (cancelled, or resumed and done): watch its end
        if self.info.status == RunStatus.FAILED:
            raise RunFailedError(self.info)
        return history.close(self.info, self.transfer_seconds)


async def _answer(listener: AsyncEpochCallback, epoch: dict[str, Any]) -> bool | None:
    answer = listener(epoch)
    return await answer if inspect.isawaitable(answer) else answer


class AsyncModel:
    """A handle on one model of the server: fit, predict, gradients, export, history."""

    def __init__(self, client: AsyncClient, info: ModelInfo) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def dtype(self) -> str:
        return str(self.info.spec["dtype"])

    async def refresh(self) -> ModelInfo:
        reply = await self.client.call("GetModel", pb.GetModelRequest(model_id=self.id))
        self.info = ModelInfo.from_proto(reply)
        return self.info

    async def start_run(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 100,
        batch_size: int = 32,
        optimizer: str = "sgd",
        learning_rate: float | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        request_id: str | None = None,
        **options: Any,
    ) -> AsyncRun:
        """Queue a run and return at once; the arguments are :meth:`Model.start_run`'s."""
        started = time.perf_counter()
        settings = run_settings(epochs, batch_size, optimizer, learning_rate, validation_split, options)
        data = run_data(x, y, validation_data)
        request = pb.StartRunRequest(
            model_id=self.id, options=codec.options_from_dict(settings), request_id=_request_id(request_id)
        )
        await self._sources(request, data)
        run = AsyncRun(self.client, RunInfo.from_proto(await self.client.call("StartRun", request)))
        run.transfer_seconds = time.perf_counter() - started
        return run

    async def _sources(self, request: pb.StartRunRequest, data: dict[str, Any]) -> None:
        """Fill the request's data: dataset ids as given, arrays inline when small, else uploaded."""
        arrays = {role: _array(role, v, self.dtype) for role, v in data.items() if not _is_dataset(v)}
        inline = sum(a.nbytes for a in arrays.values()) <= INLINE_LIMIT
        for role, value in data.items():
            source = getattr(request, role)
            if _is_dataset(value):
                source.dataset_id = value if isinstance(value, str) else value.id
            elif inline:
                codec.array_to_tensor(arrays[role], into=source.tensor)
            else:
                source.dataset_id = (await self.client.upload_dataset(arrays[role], name=role)).id

    async def fit(
        self,
        x: Any,
        y: Any,
        *,
        callbacks: tuple[AsyncEpochCallback, ...] = (),
        progress: bool = False,
        timeout: float | None = None,
        **arguments: Any,
    ) -> History:
        """Train on ``(x, y)`` and wait for the end; returns the run's :class:`History` (see
        :meth:`Model.fit`). If this call is interrupted (an exception, the task cancelled,
        ``timeout``), the run is cancelled too."""
        run = await self.start_run(x, y, **arguments)
        try:
            history = await run.wait(callbacks, progress, timeout)
        except BaseException:
            await asyncio.shield(_cancel_quietly(run))  # a second cancel of the task leaves it to finish
            raise
        await self._ended(run.info)
        return history

    async def _ended(self, run: RunInfo) -> ModelInfo:
        """Bring :attr:`info` up to date after a run of this model ended (see ``Model._ended``)."""
        try:
            return await self.refresh()
        except UnavailableError:
            self.info = replace(
                self.info, version=run.version or self.info.version, training=False, active_run_id=""
            )
            return self.info

    async def predict_full(self, x: Any, version: int = 0) -> Prediction:
        request = pb.PredictRequest(model_id=self.id, version=version)
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        return codec.prediction_from_proto(await self.client.call("Predict", request))

    async def predict(self, x: Any, version: int = 0) -> np.ndarray:
        """Outputs ``(rows, outputs)``: probabilities for classifiers."""
        return (await self.predict_full(x, version)).outputs

    async def predict_labels(self, x: Any, version: int = 0) -> np.ndarray:
        """Class labels (classifiers only)."""
        labels = (await self.predict_full(x, version)).labels
        if labels is None:
            raise ValueError(f"model {self.id} is not a classifier (loss {self.info.spec['loss']})")
        return labels

    async def gradients(
        self, x: Any, y: Any, *, numerical_check: bool = False, inference_mode: bool = False, version: int = 0
    ) -> Gradients:
        """The loss and every parameter's gradient on ``(x, y)``; the model does not change."""
        request = pb.GetGradientsRequest(
            model_id=self.id, version=version, numerical_check=numerical_check, inference_mode=inference_mode
        )
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        codec.array_to_tensor(_array("y", y, self.dtype), into=request.targets)
        return codec.gradients_from_proto(await self.client.call("GetGradients", request))

    async def export(self, version: int = 0) -> dict[str, np.ndarray]:
        """A version's weights and buffers by name (0: the current version)."""
        return (await self.exported(version)).arrays

    async def exported(self, version: int = 0) -> Exported:
        """A version's weights and buffers, its number and their digest, checked against each other."""
        self.client._check_open()
        arrays: dict[str, np.ndarray] = {}
        digest, number = "", 0
        call = self.client.stub.ExportModel(
            pb.ExportModelRequest(model_id=self.id, version=version), timeout=self.client.timeout
        )
        try:
            async for piece in call:
                digest, number = digest or piece.weights_sha256, piece.version
                if piece.offset == 0:
                    arrays[piece.name] = np.empty(tuple(piece.shape), codec.DTYPES[piece.dtype])
                target = raw_bytes(arrays[piece.name])
                target[piece.offset : piece.offset + len(piece.data)] = piece.data
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()
        if weights_digest(arrays) != digest:
            raise ValueError(f"exported weights of model {self.id} do not match the server's digest")
        return Exported(number, arrays, digest)

    async def export_onnx(self, path: str | os.PathLike[str] | None = None, version: int = 0) -> bytes:
        """A version as an ONNX model (see :meth:`Model.export_onnx`); written to ``path`` if given."""
        self.client._check_open()
        request = pb.ExportModelRequest(model_id=self.id, version=version, format=pb.ONNX)
        call = self.client.stub.ExportModel(request, timeout=self.client.timeout)
        data = bytearray()
        try:
            async for piece in call:
                if piece.offset != len(data):
                    raise ValueError(
                        f"ONNX export of model {self.id}: a piece at {piece.offset}, expected {len(data)}"
                    )
                data += piece.data
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()
        if path is not None:
            Path(path).write_bytes(data)
        return bytes(data)

    async def history(self) -> list[History]:
        """Every training run of the model, oldest first."""
        reply = await self.client.call("GetTrainingHistory", pb.GetTrainingHistoryRequest(model_id=self.id))
        return [History.from_run(run) for run in reply.runs]

    async def delete(self) -> None:
        await self.client.delete_model(self.id)


async def _cancel_quietly(run: AsyncRun) -> None:
    with contextlib.suppress(GradwireError):  # the server is gone: the run ends when its lease does
        await run.cancel()
