"""The Python SDK: NumPy in, NumPy out, typed errors, progress, durable runs.

>>> with Client("127.0.0.1:50051") as client:                          # doctest: +SKIP
...     model = client.create_model(spec, name="spirals")
...     history = model.fit(X, Y, epochs=50, optimizer="adam", validation_split=0.2, progress=True)
...     probabilities = model.predict(X)
...     run = model.start_run(X, Y, epochs=5000)     # detached: returns at once
...     run.id                                        # keep it; client.run(run_id).wait() later
...     weights = model.export()                      # {"0.W": array, ...}
...     model.export_onnx("model.onnx")               # runs in onnxruntime, answers as predict
...     copy = other_client.import_model(model.info.spec, weights, name="copy")

Every call has a deadline (``timeout``, 30 s by default; training has none unless given).
Reads (GetModel, ListModels, Predict, ...) are retried on UNAVAILABLE with exponential backoff,
and so are CreateModel, ImportModel, StartRun and UploadDataset, which carry a request id that makes the
server do them once. Watching a run reconnects after a lost connection from the last epoch it
saw, and resumes the run if the server restarted under it. The raw stub stays reachable as
:attr:`Client.stub`.

The channel is plaintext unless :class:`TLS` says otherwise (given, or from ``GRADWIRE_TLS_CA_FILE``,
``GRADWIRE_CLIENT_CERT_FILE`` and ``GRADWIRE_CLIENT_KEY_FILE``). A ``token`` (or ``GRADWIRE_TOKEN``)
goes with every call, streams included, as ``authorization: Bearer <token>``.

This module is the sync shell: the records, the connection rules, the requests, the export
assembly, the retry policy and the watch are the core's (:mod:`.records`, :mod:`.connection`,
:mod:`.calls`, :mod:`.replies`, :mod:`.retry`, :mod:`.watching`, :mod:`.handles`), shared with
the asyncio shell :mod:`.aio`; what is left here is the blocking I/O with ``grpc``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Unpack

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc

from gradwire.v1.answers import Gradients, Prediction

from . import calls, errors
from .calls import (
    INLINE_LIMIT,
    OPTIMIZER_KEYS,
    UPLOAD_CHUNK,
    Call,
    FitArguments,
    Listing,
    RunArguments,
    Weights,
    run_data,
    run_settings,
)
from .connection import (
    BALANCED,
    DEFAULT_ADDRESS,
    INSECURE_VARIABLE,
    LOCAL_SCHEMES,
    TLS,
    TLS_VARIABLES,
    TOKEN_VARIABLE,
    Connection,
    MiB,
    grpc_target,
)
from .handles import ClientCore, ModelCore, RunCore
from .records import DatasetInfo, Exported, History, ModelInfo, RunInfo, after_run
from .replies import ArraysExport, Export, OnnxExport
from .retry import RETRIED
from .watching import PROGRESS_WIDTH, EpochCallback, print_progress

__all__ = [
    "BALANCED",
    "DEFAULT_ADDRESS",
    "INLINE_LIMIT",
    "INSECURE_VARIABLE",
    "LOCAL_SCHEMES",
    "OPTIMIZER_KEYS",
    "PROGRESS_WIDTH",
    "RETRIED",
    "TLS",
    "TLS_VARIABLES",
    "TOKEN_VARIABLE",
    "UPLOAD_CHUNK",
    "Client",
    "Connection",
    "DatasetInfo",
    "EpochCallback",
    "Exported",
    "History",
    "MiB",
    "Model",
    "ModelInfo",
    "Run",
    "RunInfo",
    "grpc_target",
    "print_progress",
    "run_data",
    "run_settings",
]

R = TypeVar("R")
T = TypeVar("T")
Callbacks = tuple[EpochCallback, ...]


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str], ...]
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _Metadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``metadata`` to every call, of all four kinds. It carries the token on a plaintext
    channel, where gRPC refuses call credentials (they are meant for secure channels)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        given = tuple(details.metadata or ())
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                given + self.metadata,
                details.credentials,
                details.wait_for_ready,
                getattr(details, "compression", None),
            ),
            request,
        )

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary  # the request is an iterator: passed on as it is
    intercept_stream_stream = intercept_unary_unary


def _channel(to: Connection) -> grpc.Channel:
    """A secure channel (the token as call credentials), or a plaintext one (the token, where it
    may go, added to every call by :class:`_Metadata`)."""
    if to.tls is not None:
        return grpc.secure_channel(to.address, to.credentials(), options=to.options)
    metadata = to.metadata()
    channel = grpc.insecure_channel(to.address, options=to.options)
    return grpc.intercept_channel(channel, _Metadata(metadata)) if metadata else channel


class Client(ClientCore[grpc.Channel]):
    """A connection to a gradwire server; use it as a context manager.

    ``address`` defaults to ``GRADWIRE_SERVER``, else 127.0.0.1:50051. Several replicas of one
    service are one client: a list of addresses, or one string of them separated by commas
    (``GRADWIRE_SERVER`` too), or a DNS name with a record for each; calls are balanced over them
    (gRPC's ``round_robin``), and a replica that goes away is skipped. ``reconnect_seconds``
    bounds how long watching a run keeps reconnecting (to another replica, where there is one)
    to a server that cannot be reached, from the last epoch it saw.

    ``tls`` secures the channel (default: :meth:`TLS.from_env`, which is None, plaintext, when no
    ``GRADWIRE_TLS_CA_FILE``/``GRADWIRE_CLIENT_*`` variable is set). ``token`` (default
    ``GRADWIRE_TOKEN``; empty: none) is sent with every call as ``authorization: Bearer <token>``;
    in plaintext only to a loopback address, unless ``insecure`` (default ``GRADWIRE_INSECURE``)
    says the network is trusted. All three are for the channel the client makes: a
    ``channel`` given is used as it is. A file that cannot be read raises ValueError, naming it.
    """

    def _open(self, to: Connection) -> grpc.Channel:
        return _channel(to)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.channel.close()

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A unary call by RPC name, with the deadline, retries and typed errors."""
        rpc = getattr(self.stub, method)
        return self._with_retries(method, lambda: rpc(request, timeout=timeout or self.timeout))

    def _send(self, call: Call[T]) -> T:
        return call.read(self.call(call.method, call.request, call.deadline(self.timeout)))

    def _with_retries(self, method: str, send: Callable[[], R]) -> R:
        """``send()``, again after each pause of the retry policy while the server is unavailable."""
        self._check_open()
        for pause in self.retry.pauses(method):
            try:
                return send()
            except grpc.RpcError as error:
                self.retry.check(error)
            time.sleep(pause)
        with errors.typed_errors():
            return send()

    def _list(self, listing: Listing[T]) -> Iterator[T]:
        """Every record of a listing, fetched a page at a time."""
        more = True
        while more:
            page = self.call(listing.method, listing.request)
            yield from listing.items(page)
            more = listing.advance(page)

    # ------------------------------------------------------------------ models

    def create_model(self, spec: Mapping[str, Any], name: str = "", request_id: str | None = None) -> Model:
        """A new model from a spec in the engine's JSON form (``NetworkSpec.to_dict()``)."""
        return Model(self, self._send(calls.create_model(spec, name, request_id)))

    def import_model(
        self, spec: Mapping[str, Any], weights: Weights, name: str = "", request_id: str | None = None
    ) -> Model:
        """A new model (version 1) from a spec and its weights: arrays by name (what
        :meth:`Model.export` returns), or an ``.npz`` file's bytes or path (what ``gradwire
        export`` writes). The server checks every array against the spec: names, shapes,
        dtype, finite values."""
        return Model(self, self._send(calls.import_model(spec, weights, name, request_id)))

    def model(self, model_id: str) -> Model:
        return Model(self, self._send(calls.get_model(model_id)))

    def list_models(self, page_size: int = 50) -> Iterator[ModelInfo]:
        """Every model, oldest first, fetched a page at a time."""
        return self._list(calls.list_models(page_size))

    def delete_model(self, model_id: str) -> None:
        self._send(calls.delete_model(model_id))

    # ------------------------------------------------------------------ datasets

    def upload_dataset(self, array: Any, name: str = "", request_id: str | None = None) -> DatasetInfo:
        """Store a 2-D float32 or float64 array on the server; returns its dataset. Data the
        server holds already (same content address) is not sent again."""
        upload = calls.upload(array, name, request_id)
        existing = self.dataset_or_none(upload.dataset_id)
        if existing is not None:
            return existing
        timeout = upload.deadline(self.timeout)
        reply = self._with_retries(
            "UploadDataset", lambda: self.stub.UploadDataset(upload.messages(), timeout=timeout)
        )
        return DatasetInfo.from_proto(reply)

    def dataset(self, dataset_id: str) -> DatasetInfo:
        return self._send(calls.get_dataset(dataset_id))

    def dataset_or_none(self, dataset_id: str) -> DatasetInfo | None:
        with contextlib.suppress(errors.NotFoundError):
            return self.dataset(dataset_id)
        return None

    def list_datasets(self, page_size: int = 50) -> Iterator[DatasetInfo]:
        return self._list(calls.list_datasets(page_size))

    def delete_dataset(self, dataset_id: str) -> None:
        self._send(calls.delete_dataset(dataset_id))

    # ------------------------------------------------------------------ runs

    def run(self, run_id: str) -> Run:
        return Run(self, self._send(calls.get_run(run_id)))

    def list_runs(
        self, model_id: str = "", statuses: tuple[str, ...] = (), page_size: int = 50
    ) -> Iterator[RunInfo]:
        return self._list(calls.list_runs(model_id, statuses, page_size))

    def healthy(self) -> bool:
        """Whether the server reports SERVING for the gradwire service."""
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(calls.HEALTH_CHECK, timeout=self.timeout)
        except grpc.RpcError:
            return False
        return calls.serving(reply)


class Run(RunCore[Client]):
    """A handle on one run: follow it, wait for it, cancel or resume it."""

    def refresh(self) -> RunInfo:
        return self._took(self.client._send(calls.get_run(self.id)))

    def cancel(self) -> RunInfo:
        """Cancel it: a queued or interrupted run at once, a running one within a minibatch."""
        return self._took(self.client._send(calls.cancel_run(self.id)))

    def resume(self) -> RunInfo:
        """Queue an interrupted run again (a queued or running one is left as it is)."""
        return self._took(self.client._send(calls.resume_run(self.id)))

    def epochs(
        self, after_epoch: int = 0, timeout: float | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """The run's epochs after ``after_epoch``, committed ones first, then live ones, until it
        ends or is interrupted (then :attr:`info` holds how). Reconnects from the last epoch
        seen while the server cannot be reached, for up to ``client.reconnect_seconds`` (to
        another replica, where the client has several). While the run's lease goes unrenewed
        (its server died, and another takes it over when the lease runs out), :attr:`info`
        says so: ``status`` running, ``lease_expires_at`` in the past or close to it. Leaving
        the loop early ends the stream when the generator is closed (``contextlib.closing``)."""
        self.client._check_open()
        watch = self._watch(after_epoch)
        while (request := watch.next_request()) is not None:
            call = self.client.stub.WatchRun(request, timeout=timeout)
            try:
                for event in call:
                    yield from watch.hear(event)
                    if watch.over:
                        break
            except grpc.RpcError as error:
                time.sleep(watch.lost(error))
            finally:
                call.cancel()  # no-op once it ended; else the watcher left (break, an exception)

    def wait(
        self, callbacks: Callbacks = (), progress: bool = False, timeout: float | None = None, resume: int = 3
    ) -> History:
        """Follow the run to its end; returns its :class:`History`. A callback returning ``True``
        cancels it (the model keeps its version: a cancelled run publishes nothing); the callbacks
        hear no epoch after that, though the history keeps those that ran meanwhile. An
        interrupted run is resumed up to ``resume`` times. Past ``timeout`` seconds the run is
        cancelled and :class:`DeadlineExceededError` raised. A failed run raises
        :class:`RunFailedError`."""
        waiting = self._waiting(callbacks, progress, timeout, resume)
        while True:
            try:
                with contextlib.closing(self.epochs(waiting.cursor, waiting.left())) as epochs:
                    for epoch in epochs:
                        if waiting.stop([listener(epoch) for listener in waiting.hear(epoch)]):
                            self.cancel()
            except errors.DeadlineExceededError:
                _cancel_quietly(self)
                raise
            if not waiting.resumes(self.info):
                return waiting.result(self.info, self.transfer_seconds)
            try:
                self.resume()
            except errors.FailedPreconditionError:
                self.refresh()  # it ended meanwhile (cancelled, or resumed and done): watch its end


class Model(ModelCore[Client]):
    """A handle on one model of the server: fit, predict, gradients, export, history."""

    def refresh(self) -> ModelInfo:
        self.info = self.client._send(calls.get_model(self.id))
        return self.info

    def start_run(self, x: Any, y: Any, **arguments: Unpack[RunArguments]) -> Run:
        """Queue a run and return at once (a detached run: keep ``run.id``, follow it later).

        ``x`` and ``y`` are arrays (sent inline when small, else uploaded once as datasets) or
        :class:`DatasetInfo` / dataset ids of uploaded ones. Keras-like arguments (``epochs`` 100,
        ``batch_size`` 32, ``optimizer`` "sgd", ``learning_rate``, ``validation_split`` 0,
        ``validation_data``, ``request_id``); the rest of TrainOptions (``seed``, ``shuffle``,
        ``patience``, ``min_delta``, ``loss_threshold``, ``clip_norm``, ``restore_best``,
        ``stratify``, ``schedule`` as a dict) and optimiser constants (``momentum``, ``beta1``,
        ``beta2``, ``epsilon``, ``rho``, ``weight_decay``): :class:`~gradwire.client.calls.RunArguments`.
        """
        started = time.perf_counter()
        start = calls.start_run(self.id, self.dtype, x, y, **arguments)
        uploaded = {
            role: self.client.upload_dataset(array, name=role).id for role, array in start.uploads.items()
        }
        return Run(self.client, self.client._send(start.call(uploaded)), time.perf_counter() - started)

    def fit(self, x: Any, y: Any, *, callbacks: Callbacks = (), **arguments: Unpack[FitArguments]) -> History:
        """Train on ``(x, y)`` and wait for the end; returns the run's :class:`History`.

        Takes :meth:`start_run`'s arguments, and ``progress`` (a progress bar) and ``timeout``
        (:meth:`Run.wait`'s). A callback returning ``True`` cancels the run, which publishes
        nothing (stopping rules such as ``patience`` stop early and keep the weights). If this
        call is interrupted (an exception, Ctrl-C, ``timeout``), the run is cancelled too. The
        history is the run's own ending, as watching it delivered it, and :attr:`info` takes the
        run's version from it, without another call (a server that stops once the run ended
        cannot take either away).
        """
        run_arguments, progress, timeout = calls.fit_arguments(arguments)
        run = self.start_run(x, y, **run_arguments)
        try:
            history = run.wait(callbacks, progress, timeout)
        except BaseException:
            _cancel_quietly(run)
            raise
        self.info = after_run(self.info, run.info)  # the run's end says it: no call
        return history

    def predict_full(self, x: Any, version: int = 0) -> Prediction:
        return self.client._send(calls.predict(self.id, self.dtype, x, version))

    def predict(self, x: Any, version: int = 0) -> np.ndarray:
        """Outputs ``(rows, outputs)``: probabilities for classifiers."""
        return self.predict_full(x, version).outputs

    def predict_labels(self, x: Any, version: int = 0) -> np.ndarray:
        """Class labels (classifiers only)."""
        return self._labels(self.predict_full(x, version))

    def gradients(
        self, x: Any, y: Any, *, numerical_check: bool = False, inference_mode: bool = False, version: int = 0
    ) -> Gradients:
        """The loss and every parameter's gradient on ``(x, y)``; the model does not change."""
        call = calls.gradients(self.id, self.dtype, (x, y), version, numerical_check, inference_mode)
        return self.client._send(call)

    def export(self, version: int = 0) -> dict[str, np.ndarray]:
        """A version's weights and buffers by name (0: the current version)."""
        return self.exported(version).arrays

    def exported(self, version: int = 0) -> Exported:
        """A version's weights and buffers, its number and their digest (the one a run's receipt
        names), checked against each other."""
        return self._export(ArraysExport(self.id, version))

    def export_onnx(self, path: str | os.PathLike[str] | None = None, version: int = 0) -> bytes:
        """A version (0: the current one) as an ONNX model whose output is what :meth:`predict`
        returns, for inputs of the model's dtype; written to ``path`` if given. Its bytes."""
        return self._export(OnnxExport(self.id, version, path))

    def _export(self, export: Export[T]) -> T:
        """Every piece ExportModel streams, fed to ``export``, errors typed; its result."""
        self.client._check_open()
        call = self.client.stub.ExportModel(export.request, timeout=self.client.timeout)
        try:
            with errors.typed_errors():
                for piece in call:
                    export.add(piece)
        finally:
            call.cancel()
        return export.result()

    def history(self) -> list[History]:
        """Every training run of the model, oldest first."""
        return self.client._send(calls.training_history(self.id))

    def delete(self) -> None:
        self.client.delete_model(self.id)


def _cancel_quietly(run: Run) -> None:
    with contextlib.suppress(errors.GradwireError):  # the server is gone: the run ends when its lease does
        run.cancel()
