"""Every request the SDK sends, built once for both shells, with what its reply becomes.

Part of the core under both SDKs: a unary call is described as a :class:`Call` (its method, its
request, how its reply is read, its size for the deadline), a paged listing as a :class:`Listing`,
an upload as an :class:`Upload` and a run's start as a :class:`RunStart`. :mod:`.sdk` sends them
with ``grpc``, :mod:`.aio` awaits them with ``grpc.aio``; neither builds a message itself.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar, cast

import numpy as np
from grpc_health.v1 import health_pb2

from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.answers import Gradients, Prediction
from gradwire.v1.digest import array_id, little_endian
from gradwire.v1.digest import raw as raw_bytes

from .connection import MiB
from .records import DatasetInfo, History, ModelInfo, RunInfo

T = TypeVar("T")

UPLOAD_CHUNK = MiB - 4096
"""Bytes per upload message: about 1 MiB, with room for the message around them under a 1 MiB limit."""
INLINE_LIMIT = 4 * MiB
"""Training data up to this size (all arrays together) travels inside StartRun; larger is uploaded."""
OPTIMIZER_KEYS = frozenset({"momentum", "beta1", "beta2", "epsilon", "rho", "weight_decay"})
"""start_run's options that belong to the optimiser; the others are TrainOptions'."""
Weights = Mapping[str, Any] | bytes | str | os.PathLike[str]
"""A model's weights: arrays by name, or an ``.npz`` file's bytes or path."""
HEALTH_CHECK = health_pb2.HealthCheckRequest(service="gradwire.v1.Trainer")


def transfer_deadline(default: float, nbytes: int) -> float:
    """A deadline that a link of 1 MiB/s still meets, and never shorter than the client's."""
    return max(default, nbytes / MiB)


def nothing(reply: Any) -> None:
    """The reading of a reply that carries nothing the caller needs (a delete's)."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary call: the RPC's name, its request, what its reply becomes, and the bytes it
    carries (a large one gets a longer deadline)."""

    method: str
    request: Any
    read: Callable[[Any], T]
    nbytes: int = 0

    def deadline(self, default: float) -> float:
        return transfer_deadline(default, self.nbytes)


@dataclass(frozen=True)
class Listing(Generic[T]):
    """A paged listing: its RPC, its request (whose page token moves on page by page) and the
    records a page holds."""

    method: str
    request: Any
    items: Callable[[Any], list[T]]

    def advance(self, page: Any) -> bool:
        """Point the request at the page after ``page``; False when ``page`` was the last."""
        self.request.page_token = page.next_page_token
        return bool(page.next_page_token)


# ------------------------------------------------------------------------------------ arrays


def ensure_request_id(given: str | None) -> str:
    """The caller's request id, or a fresh one: every creating call carries one, so retrying it is safe."""
    return given or uuid.uuid4().hex


def as_array(name: str, value: Any, dtype: str) -> np.ndarray:
    """``value`` as a 2-D array of the model's dtype, or a ValueError saying what was expected."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows, columns), got shape {array.shape}")
    return np.ascontiguousarray(array, np.dtype(dtype))


def float_array(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64) or array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D float32 or float64 array, got {array.dtype} {array.shape}")
    return array


def npz_bytes(weights: Weights) -> bytes:
    """``.npz`` bytes: given, read from a path, or written from arrays by name (numbers only:
    an object array would be pickled, and the server never unpickles)."""
    if isinstance(weights, bytes):
        return weights
    if isinstance(weights, str | os.PathLike):
        return Path(weights).read_bytes()
    arrays: dict[str, Any] = {name: np.asarray(value) for name, value in weights.items()}
    for name, array in arrays.items():
        if array.dtype.kind not in "fiub":
            raise ValueError(f"weights[{name!r}]: expected numbers, got dtype {array.dtype}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def is_dataset(value: Any) -> bool:
    return isinstance(value, str | DatasetInfo)


# ------------------------------------------------------------------------------------ models


def create_model(spec: Mapping[str, Any], name: str, request_id: str | None) -> Call[ModelInfo]:
    request = pb.CreateModelRequest(
        name=name, spec=codec.spec_from_dict(spec), request_id=ensure_request_id(request_id)
    )
    return Call("CreateModel", request, ModelInfo.from_proto)


def import_model(
    spec: Mapping[str, Any],
    weights: Weights,
    name: str,
    request_id: str | None,
) -> Call[ModelInfo]:
    data = npz_bytes(weights)
    request = pb.ImportModelRequest(
        name=name, spec=codec.spec_from_dict(spec), weights=data, request_id=ensure_request_id(request_id)
    )
    return Call("ImportModel", request, ModelInfo.from_proto, len(data))


def get_model(model_id: str) -> Call[ModelInfo]:
    return Call("GetModel", pb.GetModelRequest(model_id=model_id), ModelInfo.from_proto)


def delete_model(model_id: str) -> Call[None]:
    return Call("DeleteModel", pb.DeleteModelRequest(model_id=model_id), nothing)


def list_models(page_size: int) -> Listing[ModelInfo]:
    return Listing(
        "ListModels",
        pb.ListModelsRequest(page_size=page_size),
        lambda page: [ModelInfo.from_proto(m) for m in page.models],
    )


def predict(model_id: str, dtype: str, x: Any, version: int) -> Call[Prediction]:
    request = pb.PredictRequest(model_id=model_id, version=version)
    codec.array_to_tensor(as_array("x", x, dtype), into=request.inputs)
    return Call("Predict", request, codec.prediction_from_proto)


def gradients(
    model_id: str,
    dtype: str,
    data: tuple[Any, Any],
    version: int,
    numerical_check: bool,
    inference_mode: bool,
) -> Call[Gradients]:
    request = pb.GetGradientsRequest(
        model_id=model_id, version=version, numerical_check=numerical_check, inference_mode=inference_mode
    )
    codec.array_to_tensor(as_array("x", data[0], dtype), into=request.inputs)
    codec.array_to_tensor(as_array("y", data[1], dtype), into=request.targets)
    return Call("GetGradients", request, codec.gradients_from_proto)


def training_history(model_id: str) -> Call[list[History]]:
    return Call(
        "GetTrainingHistory",
        pb.GetTrainingHistoryRequest(model_id=model_id),
        lambda reply: [History.from_run(run) for run in reply.runs],
    )


def export(model_id: str, version: int, export_format: pb.ExportFormat) -> pb.ExportModelRequest:
    """ExportModel's request, the format always named (ARRAYS is also the field's default)."""
    return pb.ExportModelRequest(model_id=model_id, version=version, format=export_format)


# ------------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class Upload:
    """A dataset ready to upload: its content address (the dataset's id, when the server holds
    it already), its header, and its bytes, sent in chunks by :meth:`messages`."""

    dataset_id: str
    header: pb.DatasetHeader
    raw: memoryview

    def messages(self) -> Iterator[pb.UploadDatasetRequest]:
        """UploadDataset's request stream: the header, then the bytes a chunk at a time (a fresh
        stream for each attempt)."""
        yield pb.UploadDatasetRequest(header=self.header)
        for start in range(0, len(self.raw), UPLOAD_CHUNK):
            yield pb.UploadDatasetRequest(chunk=bytes(self.raw[start : start + UPLOAD_CHUNK]))

    def deadline(self, default: float) -> float:
        return transfer_deadline(default, len(self.raw))


def upload(array: Any, name: str, request_id: str | None) -> Upload:
    """An upload of a 2-D float32 or float64 array (converting and hashing it: the asyncio shell
    runs this in a worker thread, off its event loop)."""
    data = little_endian(float_array("array", array))
    header = pb.DatasetHeader(
        name=name,
        dtype=codec.FLOAT_DTYPES[data.dtype.name],
        shape=data.shape,
        request_id=ensure_request_id(request_id),
    )
    return Upload(array_id(data), header, raw_bytes(data))


def get_dataset(dataset_id: str) -> Call[DatasetInfo]:
    return Call("GetDataset", pb.GetDatasetRequest(dataset_id=dataset_id), DatasetInfo.from_proto)


def delete_dataset(dataset_id: str) -> Call[None]:
    return Call("DeleteDataset", pb.DeleteDatasetRequest(dataset_id=dataset_id), nothing)


def list_datasets(page_size: int) -> Listing[DatasetInfo]:
    return Listing(
        "ListDatasets",
        pb.ListDatasetsRequest(page_size=page_size),
        lambda page: [DatasetInfo.from_proto(d) for d in page.datasets],
    )


# ------------------------------------------------------------------------------------ runs


class RunArguments(TypedDict, total=False):
    """``start_run``'s keyword arguments: Keras-like ones, TrainOptions' others (``None``: the
    server's default), the optimiser's constants, and a request id."""

    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float | None
    validation_split: float
    validation_data: tuple[Any, Any] | None
    request_id: str | None
    seed: int | None
    shuffle: bool | None
    patience: int | None
    min_delta: float | None
    loss_threshold: float | None
    clip_norm: float | None
    restore_best: bool | None
    stratify: bool | None
    schedule: Mapping[str, Any] | None
    momentum: float | None
    beta1: float | None
    beta2: float | None
    epsilon: float | None
    rho: float | None
    weight_decay: float | None


class FitArguments(RunArguments, total=False):
    """``fit``'s keyword arguments: ``start_run``'s, a progress bar, and a deadline for the run."""

    progress: bool
    timeout: float | None


def fit_arguments(arguments: FitArguments) -> tuple[RunArguments, bool, float | None]:
    """``fit``'s arguments split: those of the run it starts, its progress bar, its deadline."""
    run: dict[str, Any] = dict(arguments)
    progress, timeout = bool(run.pop("progress", False)), run.pop("timeout", None)
    return cast(RunArguments, run), progress, timeout


def run_settings(
    epochs: int,
    batch_size: int,
    optimizer: str,
    learning_rate: float | None,
    validation_split: float,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """start_run's Keras-like arguments as TrainOptions in the engine's JSON form."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "validation_fraction": validation_split or None,
        "optimizer": {
            "name": optimizer,
            "learning_rate": learning_rate,
            **{k: v for k, v in options.items() if k in OPTIMIZER_KEYS},
        },
        **{k: v for k, v in options.items() if k not in OPTIMIZER_KEYS},
    }


def run_data(x: Any, y: Any, validation_data: tuple[Any, Any] | None) -> dict[str, Any]:
    """A run's data by role."""
    data = {"inputs": x, "targets": y}
    if validation_data is not None:
        data |= {"validation_inputs": validation_data[0], "validation_targets": validation_data[1]}
    return data


@dataclass(frozen=True)
class RunStart:
    """StartRun's request with its data filled in but for the arrays too large to travel inline:
    the shell uploads :attr:`uploads` (by role) and sends :meth:`call` with their dataset ids."""

    request: pb.StartRunRequest
    uploads: dict[str, np.ndarray]

    def call(self, dataset_ids: Mapping[str, str]) -> Call[RunInfo]:
        for role, dataset_id in dataset_ids.items():
            getattr(self.request, role).dataset_id = dataset_id
        return Call("StartRun", self.request, RunInfo.from_proto)


def start_run(
    model_id: str,
    dtype: str,
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
) -> RunStart:
    """A run's start (the arguments are :class:`RunArguments`, with their defaults): dataset ids
    as given, arrays inline when small (all together), else left to upload."""
    settings = run_settings(epochs, batch_size, optimizer, learning_rate, validation_split, options)
    request = pb.StartRunRequest(
        model_id=model_id, options=codec.options_from_dict(settings), request_id=ensure_request_id(request_id)
    )
    data = run_data(x, y, validation_data)
    arrays = {role: as_array(role, v, dtype) for role, v in data.items() if not is_dataset(v)}
    for role, value in data.items():
        if is_dataset(value):
            getattr(request, role).dataset_id = value if isinstance(value, str) else value.id
    if sum(a.nbytes for a in arrays.values()) > INLINE_LIMIT:
        return RunStart(request, arrays)
    for role, array in arrays.items():
        codec.array_to_tensor(array, into=getattr(request, role).tensor)
    return RunStart(request, {})


def get_run(run_id: str) -> Call[RunInfo]:
    return Call("GetRun", pb.GetRunRequest(run_id=run_id), RunInfo.from_proto)


def cancel_run(run_id: str) -> Call[RunInfo]:
    return Call("CancelRun", pb.CancelRunRequest(run_id=run_id), RunInfo.from_proto)


def resume_run(run_id: str) -> Call[RunInfo]:
    return Call("ResumeRun", pb.ResumeRunRequest(run_id=run_id), RunInfo.from_proto)


def list_runs(model_id: str, statuses: Iterable[str], page_size: int) -> Listing[RunInfo]:
    return Listing(
        "ListRuns",
        pb.ListRunsRequest(model_id=model_id, statuses=statuses, page_size=page_size),
        lambda page: [RunInfo.from_proto(r) for r in page.runs],
    )


EPOCHS_PER_EVENT = 500
"""The most epochs a watch asks the server to send in one event (it may send fewer)."""


def watch_run(run_id: str, after_epoch: int) -> pb.WatchRunRequest:
    return pb.WatchRunRequest(run_id=run_id, after_epoch=after_epoch, max_epochs_per_event=EPOCHS_PER_EVENT)


def serving(reply: health_pb2.HealthCheckResponse) -> bool:
    """Whether a health check's reply says the gradwire service is SERVING."""
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
