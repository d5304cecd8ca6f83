"""The gRPC servicer: unpack the request, call a use case, pack the response. Nothing else.

Every method runs under :func:`handled`, the one place where exceptions become statuses
(through :data:`gradwire.service.errors.STATUS`); no traceback ever reaches a client.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_status import rpc_status

from gradwire.engine import NetworkSpec
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc

from . import convert
from .errors import rich_status, status_of
from .usecases import Gradwire, Outcome, Progress, TrainData, is_classifier

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    """End the call with the status the error table gives ``exc`` (INTERNAL, no detail, if none)."""
    code = status_of(exc)
    if code is None:
        log.exception("unexpected error", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    context.abort_with_status(rpc_status.to_status(rich_status(code, exc)))
    raise AssertionError("grpc's abort returned")  # it raises; this keeps the NoReturn honest


def handled(method: F) -> F:
    """Map a unary method's exceptions to statuses."""

    @functools.wraps(method)
    def wrapper(self: TrainerServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


def handled_stream(method: F) -> F:
    """Map a streaming method's exceptions, raised before or between messages, to statuses."""

    @functools.wraps(method)
    def wrapper(self: TrainerServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return wrapper  # type: ignore[return-value]


class TrainerServicer(pb_grpc.TrainerServicer):
    def __init__(self, app: Gradwire) -> None:
        self.app = app

    def _model(self, model_id: str) -> pb.Model:
        model = self.app.get_model(model_id)
        spec = NetworkSpec.from_dict(model.spec)
        return convert.model_to_proto(model, is_classifier(spec), self.app.is_training(model.id))

    @handled
    def CreateModel(self, request: pb.CreateModelRequest, context: grpc.ServicerContext) -> pb.Model:
        spec = convert.spec_from_proto(request.spec)
        return self._model(self.app.create_model(request.name, spec).id)

    @handled
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        return self._model(request.model_id)

    @handled
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        models, token = self.app.list_models(request.page_size, request.page_token)
        packed = [
            convert.model_to_proto(
                m, is_classifier(NetworkSpec.from_dict(m.spec)), self.app.is_training(m.id)
            )
            for m in models
        ]
        return pb.ListModelsResponse(models=packed, next_page_token=token)

    @handled
    def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelResponse:
        self.app.delete_model(request.model_id)
        return pb.DeleteModelResponse()

    @handled_stream
    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> Iterator[pb.TrainEvent]:
        started = time.perf_counter()
        config = convert.options_from_proto(request.options)
        X = convert.tensor_from_proto(request.inputs, "inputs")
        Y = convert.tensor_from_proto(request.targets, "targets")
        Xv = convert.optional_tensor(request, "validation_inputs")
        Yv = convert.optional_tensor(request, "validation_targets")
        validation = None if Xv is None or Yv is None else (Xv, Yv)
        data = TrainData(X, Y, validation, time.perf_counter() - started)
        stop = threading.Event()
        context.add_callback(stop.set)  # cancellation, deadline or the end of the call
        for event in self.app.train(request.model_id, config, data, stop):
            yield _event_to_proto(event)

    @handled
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        X = convert.tensor_from_proto(request.inputs, "inputs")
        return codec.prediction_to_proto(self.app.predict(request.model_id, X, request.version))

    @handled
    def GetGradients(
        self, request: pb.GetGradientsRequest, context: grpc.ServicerContext
    ) -> pb.GetGradientsResponse:
        X = convert.tensor_from_proto(request.inputs, "inputs")
        Y = convert.tensor_from_proto(request.targets, "targets")
        result = self.app.gradients(
            request.model_id, X, Y, request.version, request.numerical_check, request.inference_mode
        )
        return codec.gradients_to_proto(result)

    @handled
    def GetTrainingHistory(
        self, request: pb.GetTrainingHistoryRequest, context: grpc.ServicerContext
    ) -> pb.GetTrainingHistoryResponse:
        return pb.GetTrainingHistoryResponse(
            runs=[convert.run_to_proto(r) for r in self.app.history(request.model_id)]
        )


def _event_to_proto(event: Progress | Outcome) -> pb.TrainEvent:
    if isinstance(event, Progress):
        return pb.TrainEvent(progress=codec.epoch_from_dict(event.record, event.epochs_planned))
    return pb.TrainEvent(
        result=pb.TrainResult(
            run_id=event.run_id,
            stop_reason=event.stop_reason,
            best_epoch=event.best_epoch,
            best_loss=event.best_loss,
            version=event.version,
            epochs_run=event.epochs_run,
            transfer_seconds=event.transfer_seconds,
            train_seconds=event.train_seconds,
        )
    )
