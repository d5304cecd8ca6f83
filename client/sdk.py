"""The Python SDK: NumPy in, NumPy out, typed errors, progress.

>>> with Client("127.0.0.1:50051") as client:                          # doctest: +SKIP
...     model = client.create_model(spec, name="spirals")
...     history = model.fit(X, Y, epochs=50, optimizer="adam", validation_split=0.2, progress=True)
...     probabilities = model.predict(X)

Every call has a deadline (``timeout``, 30 s by default; training has none unless given).
Idempotent calls (GetModel, ListModels, Predict, GetGradients, GetTrainingHistory) are retried
on UNAVAILABLE with exponential backoff; nothing else is retried. The raw stub stays reachable
as :attr:`Client.stub`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1 import gradwire_pb2_grpc as pb_grpc
from gradwire.v1.codec import Gradients, Prediction

from .errors import ClientClosedError, from_rpc_error

DEFAULT_ADDRESS = "127.0.0.1:50051"
MiB = 1 << 20
IDEMPOTENT = frozenset({"GetModel", "ListModels", "Predict", "GetGradients", "GetTrainingHistory"})
PROGRESS_WIDTH = 20
NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64}

R = TypeVar("R")
EpochCallback = Callable[[dict[str, Any]], bool | None]


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    spec: dict[str, Any]
    version: int
    parameter_count: int
    classifier: bool
    training: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_proto(cls, m: pb.Model) -> ModelInfo:
        return cls(
            m.model_id,
            m.name,
            codec.spec_to_dict(m.spec),
            m.version,
            m.parameter_count,
            m.classifier,
            m.training,
            m.created_at.ToDatetime(),
            m.updated_at.ToDatetime(),
        )


@dataclass
class History:
    """A training run: its per-epoch records and how it ended (like Keras's ``History``)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = ""
    status: str = ""
    stop_reason: str = ""
    best_epoch: int = 0
    best_loss: float = float("nan")
    version: int = 0
    transfer_seconds: float = 0.0
    train_seconds: float = 0.0

    @property
    def history(self) -> dict[str, list[float | None]]:
        """Per-epoch series: ``loss``, ``val_loss``, the metric, ``val_`` + metric, ``lr``."""
        metric = self.epochs[0]["metric_name"] if self.epochs else "metric"
        return {
            "loss": [e["train_loss"] for e in self.epochs],
            "val_loss": [e["val_loss"] for e in self.epochs],
            metric: [e["train_metric"] for e in self.epochs],
            f"val_{metric}": [e["val_metric"] for e in self.epochs],
            "lr": [e["learning_rate"] for e in self.epochs],
        }

    @classmethod
    def from_run(cls, run: pb.TrainingRun) -> History:
        return cls(
            [codec.epoch_to_dict(e) for e in run.epochs],
            run.run_id,
            run.status,
            run.stop_reason,
            run.best_epoch,
            version=run.version,
        )


def _array(name: str, value: Any, dtype: str) -> np.ndarray:
    """``value`` as a 2-D array of the model's dtype, or a ValueError saying what was expected."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows, columns), got shape {array.shape}")
    return np.ascontiguousarray(array, NUMPY_DTYPES[dtype])


def print_progress(epoch: dict[str, Any], stream: Any = None) -> None:
    """A progress bar line per epoch: loss, validation loss, metric, learning rate, time left."""
    total = epoch["epochs_planned"]
    done = round(PROGRESS_WIDTH * epoch["epoch"] / total) if total else 0
    bar = f"[{'#' * done}{'.' * (PROGRESS_WIDTH - done)}]"
    parts = [bar, f"epoch {epoch['epoch']}/{total or '?'}", f"loss {epoch['train_loss']:.4f}"]
    if epoch["val_loss"] is not None:
        parts.append(f"val_loss {epoch['val_loss']:.4f}")
    metric = epoch["val_metric"] if epoch["val_metric"] is not None else epoch["train_metric"]
    parts += [
        f"{epoch['metric_name']} {metric:.4f}",
        f"lr {epoch['learning_rate']:.2e}",
        f"eta {epoch['eta']:.1f}s",
    ]
    print("  ".join(parts), file=stream or sys.stderr, flush=True)


class Client:
    """A connection to a gradwire server; use it as a context manager.

    ``address`` defaults to ``GRADWIRE_SERVER``, else 127.0.0.1:50051.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_message_mb: int = 512,
        channel: grpc.Channel | None = None,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_mb * MiB),
            ("grpc.max_receive_message_length", max_message_mb * MiB),
        ]
        self.address = address or os.environ.get("GRADWIRE_SERVER", DEFAULT_ADDRESS)
        self.channel = channel or grpc.insecure_channel(self.address, options=options)
        self.stub = pb_grpc.TrainerStub(self.channel)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._closed = False

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
        if self._closed:
            raise ClientClosedError("this gradwire Client was closed; create a new one")
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        for attempt in range(attempts):
            try:
                return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise from_rpc_error(error) from error
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ models

    def create_model(self, spec: Mapping[str, Any], name: str = "") -> Model:
        """A new model from a spec in the engine's JSON form (``NetworkSpec.to_dict()``)."""
        message = self.call("CreateModel", pb.CreateModelRequest(name=name, spec=codec.spec_from_dict(spec)))
        return Model(self, ModelInfo.from_proto(message))

    def model(self, model_id: str) -> Model:
        return Model(self, ModelInfo.from_proto(self.call("GetModel", pb.GetModelRequest(model_id=model_id))))

    def list_models(self, page_size: int = 50) -> Iterator[ModelInfo]:
        """Every model, oldest first, fetched a page at a time."""
        token = ""
        while True:
            page = self.call("ListModels", pb.ListModelsRequest(page_size=page_size, page_token=token))
            yield from (ModelInfo.from_proto(m) for m in page.models)
            token = page.next_page_token
            if not token:
                return

    def delete_model(self, model_id: str) -> None:
        self.call("DeleteModel", pb.DeleteModelRequest(model_id=model_id))

    def healthy(self) -> bool:
        """Whether the server reports SERVING for the gradwire service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service="gradwire.v1.Trainer")
        try:
            reply = stub.Check(request, timeout=self.timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Model:
    """A handle on one model of the server: fit, predict, gradients, history."""

    def __init__(self, client: Client, info: ModelInfo) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def dtype(self) -> str:
        return str(self.info.spec["dtype"])

    def refresh(self) -> ModelInfo:
        self.info = ModelInfo.from_proto(self.client.call("GetModel", pb.GetModelRequest(model_id=self.id)))
        return self.info

    def fit(
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
        callbacks: tuple[EpochCallback, ...] = (),
        progress: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> History:
        """Train on ``(x, y)``; returns the run's :class:`History`. Keras-like arguments.

        ``options`` takes the rest of the service's TrainOptions (``seed``, ``shuffle``,
        ``patience``, ``min_delta``, ``loss_threshold``, ``clip_norm``, ``restore_best``,
        ``stratify``, ``schedule`` as a dict) and optimiser constants (``momentum``, ``beta1``,
        ``beta2``, ``epsilon``, ``rho``, ``weight_decay``). A callback returning ``True`` stops
        training: the call is cancelled and the server commits the best weights so far.
        """
        optimizer_keys = {"momentum", "beta1", "beta2", "epsilon", "rho", "weight_decay"}
        settings = {
            "epochs": epochs,
            "batch_size": batch_size,
            "validation_fraction": validation_split or None,
            "optimizer": {
                "name": optimizer,
                "learning_rate": learning_rate,
                **{k: v for k, v in options.items() if k in optimizer_keys},
            },
            **{k: v for k, v in options.items() if k not in optimizer_keys},
        }
        request = pb.TrainRequest(model_id=self.id, options=codec.options_from_dict(settings))
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        codec.array_to_tensor(_array("y", y, self.dtype), into=request.targets)
        if validation_data is not None:
            codec.array_to_tensor(
                _array("validation x", validation_data[0], self.dtype), into=request.validation_inputs
            )
            codec.array_to_tensor(
                _array("validation y", validation_data[1], self.dtype), into=request.validation_targets
            )
        listeners = (*callbacks, print_progress) if progress else callbacks
        return self._stream_training(request, listeners, timeout)

    def _stream_training(
        self, request: pb.TrainRequest, listeners: tuple[Callable[..., Any], ...], timeout: float | None
    ) -> History:
        if self.client._closed:
            raise ClientClosedError("this gradwire Client was closed; create a new one")
        history = History()
        call = self.client.stub.Train(request, timeout=timeout)
        try:
            for event in call:
                if event.HasField("result"):
                    r = event.result
                    history.run_id, history.stop_reason, history.best_epoch = (
                        r.run_id,
                        r.stop_reason,
                        r.best_epoch,
                    )
                    history.best_loss, history.version, history.status = r.best_loss, r.version, "completed"
                    history.transfer_seconds, history.train_seconds = r.transfer_seconds, r.train_seconds
                    continue
                epoch = codec.epoch_to_dict(event.progress)
                history.epochs.append(epoch)
                answers = [listener(epoch) for listener in listeners]  # every listener hears every epoch
                if any(answers):
                    call.cancel()
                    history.status = history.stop_reason = "cancelled"
                    return history
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        except BaseException:
            call.cancel()
            raise
        self.refresh()
        return history

    def predict_full(self, x: Any, version: int = 0) -> Prediction:
        request = pb.PredictRequest(model_id=self.id, version=version)
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        return codec.prediction_from_proto(self.client.call("Predict", request))

    def predict(self, x: Any, version: int = 0) -> np.ndarray:
        """Outputs ``(rows, outputs)``: probabilities for classifiers."""
        return self.predict_full(x, version).outputs

    def predict_labels(self, x: Any, version: int = 0) -> np.ndarray:
        """Class labels (classifiers only)."""
        labels = self.predict_full(x, version).labels
        if labels is None:
            raise ValueError(f"model {self.id} is not a classifier (loss {self.info.spec['loss']})")
        return labels

    def gradients(
        self, x: Any, y: Any, *, numerical_check: bool = False, inference_mode: bool = False, version: int = 0
    ) -> Gradients:
        """The loss and every parameter's gradient on ``(x, y)``; the model does not change."""
        request = pb.GetGradientsRequest(
            model_id=self.id, version=version, numerical_check=numerical_check, inference_mode=inference_mode
        )
        codec.array_to_tensor(_array("x", x, self.dtype), into=request.inputs)
        codec.array_to_tensor(_array("y", y, self.dtype), into=request.targets)
        return codec.gradients_from_proto(self.client.call("GetGradients", request))

    def history(self) -> list[History]:
        """Every training run of the model, oldest first."""
        reply = self.client.call("GetTrainingHistory", pb.GetTrainingHistoryRequest(model_id=self.id))
        return [History.from_run(run) for run in reply.runs]

    def delete(self) -> None:
        self.client.delete_model(self.id)
