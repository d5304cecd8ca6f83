"""The gRPC servicer: unpack the request, call a use case, pack the response. Nothing else.

Every method runs under :func:`handled` (or :func:`handled_stream`), the one place where
exceptions become statuses (through :mod:`.status`); no traceback ever reaches a client. grpc
hands the handlers bytes and takes bytes back (:func:`add_to_server`): decoding a request and
encoding a response happen inside, so a request that is no message, or an answer too large to
send, has a status of the table too.

Streams (WatchRun, Train, UploadDataset, ExportModel) take one of ``max_streams`` slots
(health's Watch one of ``health_streams`` of its own), and the server keeps that many threads
for them beside the ``rpc_workers`` that answer unary calls: a
stream past the cap is refused with RESOURCE_EXHAUSTED instead of waiting for a thread, so
streams never delay a GetModel. A stream whose client leaves (cancel, deadline) stops within one
wait of its use case.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gradwire.engine import NetworkSpec
from gradwire.storage import RunRecord
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc

from ..core.errors import ClientStalled, LimitExceeded
from ..usecases.app import Gradwire
from ..usecases.inference import is_classifier
from ..usecases.runs import StartRequest
from . import convert
from .auth import caller_of
from .status import abort

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

RUN_ID_METADATA = "gradwire-run-id"
"""The initial metadata by which Train names its run, as soon as the run exists."""


SERVICE = pb.DESCRIPTOR.services_by_name["Trainer"]

HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
"""grpc's handler factory by (client streams, server streams)."""


def _decoder(name: str) -> Callable[[Any], Any]:
    """What turns the raw request of method ``name`` into messages: one, or an iterator of them."""
    method = SERVICE.methods_by_name[name]
    cls = GetMessageClass(method.input_type)
    if method.client_streaming:
        return lambda chunks: (convert.decode(cls, chunk) for chunk in chunks)
    return lambda data: convert.decode(cls, data)


def handled(method: F) -> F:
    """Decode a unary (or client-streaming) method's request, encode its response, and map the
    exceptions of all three to statuses."""
    decode = _decoder(method.__name__)

    @functools.wraps(method)
    def wrapper(self: TrainerServicer, request: Any, context: grpc.ServicerContext) -> bytes:
        try:
            return self.encode(method(self, decode(request), context))
        except Exception as exc:
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def handled_stream(method: F) -> F:
    """Decode a streaming method's request, encode its responses, and map the exceptions,
    raised before or between messages, to statuses."""
    decode = _decoder(method.__name__)

    @functools.wraps(method)
    def wrapper(self: TrainerServicer, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            for response in method(self, decode(request), context):
                yield self.encode(response)
        except Exception as exc:
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def add_to_server(servicer: TrainerServicer, server: grpc.Server) -> None:
    """Serve every method of the Trainer service as bytes in, bytes out: each handler decodes its
    request (see :func:`.convert.decode`) and encodes its responses itself, so that what fails
    on the way in or out (a request that is no message, a response past the message limit or
    past the memory left) ends with the status the error table gives, never grpc's INTERNAL."""
    handlers = {
        method.name: HANDLER_KINDS[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name), request_deserializer=None, response_serializer=None
        )
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def idle_bounded(messages: Iterator[Any], context: grpc.ServicerContext, seconds: float) -> Iterator[Any]:
    """The client's messages; if the server waits ``seconds`` for the next one, the call is
    cancelled and the stream raises :class:`.errors.ClientStalled` (CANCELLED), whether grpc then
    ends the request stream with an error or as if the client had finished, so a stalled client
    holds no thread for long and its call is never taken for a short upload. Only the waits
    count, not the server's own work between messages; one watchdog thread per call."""
    waiting_since: list[float | None] = [None]
    over, stalled = threading.Event(), threading.Event()

    def watch() -> None:
        while not over.wait(seconds / 4):
            since = waiting_since[0]
            if since is not None and time.monotonic() - since > seconds:
                stalled.set()
                context.cancel()
                return

    threading.Thread(target=watch, name="gradwire-upload-idle", daemon=True).start()
    try:
        while True:
            waiting_since[0] = time.monotonic()
            try:
                message = next(messages, None)
            except Exception:
                if not stalled.is_set():
                    raise
                message = None  # grpc's word for the cancel: ours follows
            finally:
                waiting_since[0] = None
            if stalled.is_set():
                raise ClientStalled(f"the client sent nothing for {seconds:g} s: cancelled")
            if message is None:
                return
            yield message
    finally:
        over.set()


class Streams:
    """At most ``limit`` streams at once; past it, RESOURCE_EXHAUSTED at once (never a wait)."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self.limit = limit

    def acquire(self) -> None:
        """Take a slot, or raise LimitExceeded at once; :meth:`release` gives it back."""
        if not self._slots.acquire(blocking=False):
            raise LimitExceeded(
                "", f"this server serves at most {self.limit} streams at once; try again later"
            )

    def release(self) -> None:
        self._slots.release()

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


class TrainerServicer(pb_grpc.TrainerServicer):
    def __init__(self, app: Gradwire, streams: Streams | None = None) -> None:
        self.app = app
        self.streams = streams or Streams(app.settings.max_streams)

    def encode(self, response: Message) -> bytes:
        """A response's bytes; past the message limit, RESOURCE_EXHAUSTED naming it (grpc would
        refuse to send it anyway, with a status that says less)."""
        data = response.SerializeToString()
        limit = self.app.settings.max_message_bytes
        if len(data) > limit:
            raise LimitExceeded(
                "", f"the answer is {len(data)} bytes, past this server's max_message_mb ({limit >> 20} MiB)"
            )
        return data

    def _gone(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        """A test that turns true once the call ends (cancel, deadline, done), waking waiters."""
        ended = threading.Event()

        def end() -> None:
            ended.set()
            self.app.changes.wake_all()

        if not context.add_callback(end):  # it ended already: the callback would never run
            ended.set()
        return ended.is_set

    def _model(self, tenant: str, model_id: str) -> pb.Model:
        model = self.app.models.get(tenant, model_id)
        return convert.model_to_proto(model, is_classifier(NetworkSpec.from_dict(model.spec)))

    # ------------------------------------------------------------------ models

    @handled
    def CreateModel(self, request: pb.CreateModelRequest, context: grpc.ServicerContext) -> pb.Model:
        spec = convert.spec_from_proto(request.spec, self.app.limits.max_layers)
        model = self.app.models.create(caller_of(context).tenant, request.name, spec, request.request_id)
        return convert.model_to_proto(model, is_classifier(spec))  # as created: no second read

    @handled
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        return self._model(caller_of(context).tenant, request.model_id)

    @handled
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        models, token = self.app.models.page(caller_of(context).tenant, request.page_size, request.page_token)
        packed = [convert.model_to_proto(m, is_classifier(NetworkSpec.from_dict(m.spec))) for m in models]
        return pb.ListModelsResponse(models=packed, next_page_token=token)

    @handled
    def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelResponse:
        self.app.models.delete(caller_of(context).tenant, request.model_id)
        return pb.DeleteModelResponse()

    @handled_stream
    def ExportModel(
        self, request: pb.ExportModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportModelResponse]:
        export_format = convert.export_format(request.format)
        with self.streams.slot():
            tenant = caller_of(context).tenant
            if export_format == pb.ONNX:
                yield from convert.onnx_to_proto(
                    self.app.models.export_onnx(tenant, request.model_id, request.version)
                )
            else:
                yield from convert.export_to_proto(
                    self.app.models.export(tenant, request.model_id, request.version)
                )

    @handled
    def ImportModel(self, request: pb.ImportModelRequest, context: grpc.ServicerContext) -> pb.Model:
        spec = convert.spec_from_proto(request.spec, self.app.limits.max_layers)
        tenant = caller_of(context).tenant
        model = self.app.models.import_(tenant, request.name, spec, request.weights, request.request_id)
        return convert.model_to_proto(model, is_classifier(spec))

    # ------------------------------------------------------------------ datasets

    @handled
    def UploadDataset(
        self, request_iterator: Iterator[pb.UploadDatasetRequest], context: grpc.ServicerContext
    ) -> pb.Dataset:
        with self.streams.slot():
            messages = idle_bounded(request_iterator, context, self.app.settings.upload_idle_seconds)
            header, chunks = convert.upload_chunks(messages)
            return convert.dataset_to_proto(
                self.app.datasets.upload(caller_of(context).tenant, header, chunks)
            )

    @handled
    def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:
        return convert.dataset_to_proto(self.app.datasets.get(caller_of(context).tenant, request.dataset_id))

    @handled
    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetsResponse:
        datasets, token = self.app.datasets.page(
            caller_of(context).tenant, request.page_size, request.page_token
        )
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset_to_proto(d) for d in datasets], next_page_token=token
        )

    @handled
    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        self.app.datasets.delete(caller_of(context).tenant, request.dataset_id)
        return pb.DeleteDatasetResponse()

    # ------------------------------------------------------------------ runs

    @handled
    def StartRun(self, request: pb.StartRunRequest, context: grpc.ServicerContext) -> pb.Run:
        config = convert.options_from_proto(request.options)
        start = StartRequest(
            caller_of(context).tenant,
            request.model_id,
            config,
            convert.sources_from_proto(request),
            request.request_id,
        )
        return self._run(self.app.runs.start(start))

    def _run(self, run: RunRecord) -> pb.Run:
        return convert.run_to_proto(run, self.app.settings.lease_seconds)

    @handled_stream
    def WatchRun(self, request: pb.WatchRunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunEvent]:
        with self.streams.slot():
            tenant = caller_of(context).tenant
            run = self.app.runs.get(tenant, request.run_id)
            planned = convert.epochs_planned(run)
            per_event = request.max_epochs_per_event
            for event in self.app.runs.watch(
                tenant, request.run_id, request.after_epoch, self._gone(context), per_event
            ):
                yield convert.run_event(event, planned, self.app.settings.lease_seconds, per_event > 1)

    @handled
    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self._run(self.app.runs.get(caller_of(context).tenant, request.run_id))

    @handled
    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        runs, token = self.app.runs.page(
            caller_of(context).tenant,
            request.model_id,
            list(request.statuses),
            request.page_size,
            request.page_token,
        )
        return pb.ListRunsResponse(runs=[self._run(r) for r in runs], next_page_token=token)

    @handled
    def CancelRun(self, request: pb.CancelRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self._run(self.app.runs.cancel(caller_of(context).tenant, request.run_id))

    @handled
    def ResumeRun(self, request: pb.ResumeRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self._run(self.app.runs.resume(caller_of(context).tenant, request.run_id))

    @handled_stream
    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> Iterator[pb.TrainEvent]:
        with self.streams.slot():
            started = time.perf_counter()
            config = convert.options_from_proto(request.options)
            tenant = caller_of(context).tenant
            sources = convert.train_sources(request)
            run = self.app.runs.start(StartRequest(tenant, request.model_id, config, sources))
            transfer = time.perf_counter() - started  # decoding, checking and storing the tensors
            gone = self._gone(context)  # before the caller hears of the run and may leave
            context.send_initial_metadata(((RUN_ID_METADATA, run.id),))
            for event in self.app.runs.follow(tenant, run.id, gone):
                yield convert.train_event(event, config.epochs, transfer)

    # ------------------------------------------------------------------ inference and history

    @handled
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        X = convert.tensor_from_proto(request.inputs, "inputs")
        prediction = self.app.inference.predict(
            caller_of(context).tenant, request.model_id, X, request.version
        )
        return convert.prediction_to_proto(prediction)

    @handled
    def GetGradients(
        self, request: pb.GetGradientsRequest, context: grpc.ServicerContext
    ) -> pb.GetGradientsResponse:
        X = convert.tensor_from_proto(request.inputs, "inputs")
        Y = convert.tensor_from_proto(request.targets, "targets")
        result = self.app.inference.gradients(
            caller_of(context).tenant,
            request.model_id,
            X,
            Y,
            request.version,
            request.numerical_check,
            request.inference_mode,
        )
        return convert.gradients_to_proto(result)

    @handled
    def GetTrainingHistory(
        self, request: pb.GetTrainingHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetTrainingHistoryResponse:
        return pb.GetTrainingHistoryResponse(
            runs=[
                convert.training_run_to_proto(r)
                for r in self.app.models.history(caller_of(context).tenant, request.model_id)
            ]
        )
