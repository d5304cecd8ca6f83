"""Request decoding with validation, and response packing, on top of :mod:`gradwire.v1.codec`.

Errors name the request field: ``inputs.data``, ``spec.layers[1].units``,
``options.optimizer.name``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from gradwire.engine import InvalidArgument, NetworkSpec, TrainConfig
from gradwire.engine.data import check_finite
from gradwire.engine.errors import Problems
from gradwire.storage import DatasetRecord, EpochEntry, ModelRecord, RunRecord
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb
from gradwire.v1.answers import Gradients, Prediction
from gradwire.v1.digest import raw as raw_bytes
from gradwire.v1.vocabulary import RunStatus

from ..core.errors import LimitExceeded
from ..usecases.datasets import Header
from ..usecases.models import Export, OnnxExport
from ..usecases.runs import DataSource, Epochs, Stalled

INPUT_DTYPES = (pb.FLOAT32, pb.FLOAT64)
EXPORT_PIECE = 1 << 20
"""Bytes of array data per ExportModel message."""
ONNX_NAME = "model.onnx"
"""The name of the one "array" an ONNX export streams: the model's bytes."""
EXPORT_FORMATS = (pb.ARRAYS, pb.ONNX)


M = TypeVar("M", bound=Message)


def decode(cls: type[M], data: bytes) -> M:
    """A request message from its bytes, decoded here rather than by grpc so that bytes that are
    not such a message (bad UTF-8, nesting past protobuf's recursion limit, garbage) are the
    caller's INVALID_ARGUMENT, not grpc's INTERNAL. A field this server does not know, or a NUL
    character in a string, is refused too: each would be silently dropped or break a database."""
    try:
        message = cls.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument("", f"not a valid {cls.DESCRIPTOR.full_name} message: {exc}") from None
    problems = list(_strange_fields(message, ""))
    if problems:
        raise InvalidArgument.every(problems)
    return message


def _strange_fields(message: Message, path: str) -> Iterator[InvalidArgument]:
    """Unknown fields and strings holding NUL, anywhere in ``message``, by field path. Only
    message and string fields are read: reading a bytes field (a tensor's data) copies it."""
    unknown = UnknownFieldSet(message)
    for number in sorted({unknown[i].field_number for i in range(len(unknown))}):
        yield InvalidArgument(
            path or "request", f"has field number {number}, which this server does not know"
        )
    for field in message.DESCRIPTOR.fields:
        here = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if field.is_repeated:
                for i, item in enumerate(getattr(message, field.name)):
                    yield from _strange_fields(item, f"{here}[{i}]")
            elif message.HasField(field.name):
                yield from _strange_fields(getattr(message, field.name), here)
        elif field.type == field.TYPE_STRING:
            value = getattr(message, field.name)
            if any("\x00" in item for item in (value if field.is_repeated else (value,))):
                yield InvalidArgument(here, "must not contain NUL characters")


def tensor_from_proto(tensor: pb.Tensor, field: str) -> np.ndarray:
    """A finite ``[rows, columns]`` float array over the tensor's bytes (read-only, no copy)."""
    try:
        array = codec.tensor_to_array(tensor, INPUT_DTYPES)
    except codec.TensorError as exc:
        raise InvalidArgument(f"{field}.{exc.part}", exc.message) from None
    if array.ndim != 2:
        raise InvalidArgument(f"{field}.shape", f"must be [rows, columns], got {list(array.shape)}")
    check_finite(array, f"{field}.data")
    return array


def optional_tensor(message: Message, name: str) -> np.ndarray | None:
    return tensor_from_proto(getattr(message, name), name) if message.HasField(name) else None


def spec_from_proto(spec: pb.ModelSpec, max_layers: int) -> NetworkSpec:
    """The engine's spec, validated; one of more than ``max_layers`` layers (inner ones included)
    is refused by a count first, so that its size bounds the work of checking it."""
    count = _layer_count(spec.layers)
    if count > max_layers:
        raise LimitExceeded("spec.layers", f"has {count} layers, at most {max_layers} (inner ones included)")
    try:
        return NetworkSpec.from_dict(codec.spec_to_dict(spec))
    except InvalidArgument as exc:
        raise exc.under("spec") from None


def _layer_count(layers: Iterable[pb.Layer]) -> int:
    return sum(
        1 + _layer_count(layer.residual.layers) if layer.HasField("residual") else 1 for layer in layers
    )


def options_from_proto(options: pb.TrainOptions) -> TrainConfig:
    try:
        return TrainConfig.from_dict(codec.options_to_dict(options))
    except InvalidArgument as exc:
        raise exc.under("options") from None


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# ------------------------------------------------------------------------------------ models


def model_to_proto(model: ModelRecord, classifier: bool) -> pb.Model:
    return pb.Model(
        model_id=model.id,
        name=model.name,
        spec=codec.spec_from_dict(model.spec),
        version=model.version,
        parameter_count=model.parameter_count,
        classifier=classifier,
        training=model.active_run_id is not None,
        active_run_id=model.active_run_id or "",
        created_at=timestamp(model.created_at),
        updated_at=timestamp(model.updated_at),
    )


def export_format(value: int) -> int:
    """ExportModelRequest.format, checked: a number outside the enum is refused, naming the values."""
    if value not in EXPORT_FORMATS:
        names = [pb.ExportFormat.Name(f) for f in EXPORT_FORMATS]
        raise InvalidArgument("format", f"unknown value {value}", names)
    return value


def onnx_to_proto(export: OnnxExport) -> Iterator[pb.ExportModelResponse]:
    """The ONNX model's bytes as the pieces of one array named :data:`ONNX_NAME`, without shape
    or dtype; the digest of the arrays it holds in the first message."""
    data = memoryview(export.data)
    for offset in range(0, max(len(data), 1), EXPORT_PIECE):
        yield pb.ExportModelResponse(
            version=export.version,
            name=ONNX_NAME,
            offset=offset,
            data=bytes(data[offset : offset + EXPORT_PIECE]),
            weights_sha256=export.digest if offset == 0 else "",
        )


def export_to_proto(export: Export) -> Iterator[pb.ExportModelResponse]:
    """Each array in pieces of at most :data:`EXPORT_PIECE` bytes; the digest in the first message."""
    digest = export.digest
    for name, array in export.arrays.items():
        data = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
        raw = raw_bytes(data)
        for offset in range(0, max(len(raw), 1), EXPORT_PIECE):
            piece = pb.ExportModelResponse(
                version=export.version,
                name=name,
                offset=offset,
                data=bytes(raw[offset : offset + EXPORT_PIECE]),
                weights_sha256=digest,
            )
            if offset == 0:
                piece.shape[:] = data.shape
                piece.dtype = codec.PROTO_DTYPES[data.dtype.newbyteorder("=")]
            digest = ""
            yield piece


# ------------------------------------------------------------------------------------ datasets


def header_from_proto(header: pb.DatasetHeader) -> Header:
    dtype = codec.FLOAT_DTYPE_NAMES.get(header.dtype, f"DType {header.dtype}")
    return Header(header.name, dtype, tuple(header.shape), header.request_id)


def upload_chunks(messages: Iterator[pb.UploadDatasetRequest]) -> tuple[Header, Iterator[bytes]]:
    """The header of an upload stream, and an iterator over the bytes of the rest."""
    first = next(messages, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument("header", "the first message of an upload must be its header")

    def chunks() -> Iterator[bytes]:
        for message in messages:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument("header", "only the first message of an upload is a header")
            yield message.chunk

    return header_from_proto(first.header), chunks()


def dataset_to_proto(dataset: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        dataset_id=dataset.id,
        name=dataset.name,
        dtype=codec.FLOAT_DTYPES[dataset.dtype],
        shape=[dataset.rows, dataset.columns],
        nbytes=dataset.nbytes,
        created_at=timestamp(dataset.created_at),
    )


# ------------------------------------------------------------------------------------ runs

DATA_FIELDS = ("inputs", "targets", "validation_inputs", "validation_targets")


def sources_from_proto(request: pb.StartRunRequest) -> dict[str, DataSource]:
    """The request's data by role: a dataset id, or a checked inline array."""
    return _sources(request, _source)


def train_sources(request: pb.TrainRequest) -> dict[str, DataSource]:
    """A Train request's inline tensors by role."""
    return _sources(request, lambda message, role: optional_tensor(message, role))


def _source(request: pb.StartRunRequest, role: str) -> DataSource | None:
    source = getattr(request, role)
    kind = source.WhichOneof("source")
    if kind == "dataset_id":
        return str(source.dataset_id)
    if kind == "tensor":
        return tensor_from_proto(source.tensor, f"{role}.tensor")
    return None


def _sources(request: Any, read: Callable[[Any, str], DataSource | None]) -> dict[str, DataSource]:
    """Every role's data, every role's problems reported together (which roles must come
    together is the use case's to check, for every caller: :func:`.runs._check_shapes`)."""
    problems, out = Problems(), {}
    for role in DATA_FIELDS:
        with problems.check():
            if (source := read(request, role)) is not None:
                out[role] = source
    problems.raise_any()
    return out


def epochs_planned(run: RunRecord) -> int:
    return int(run.options.get("epochs") or 0)


def receipt_to_proto(receipt: dict[str, Any] | None) -> pb.Receipt | None:
    if not receipt:
        return None
    return pb.Receipt(
        seed=receipt["seed"],
        spec_seed=receipt["spec_seed"],
        datasets=receipt["datasets"],
        numpy_version=receipt["numpy_version"],
        gradwire_version=receipt["gradwire_version"],
        weights_sha256=receipt["weights_sha256"],
        base_version=receipt["base_version"],
    )


def run_to_proto(run: RunRecord, lease_seconds: float) -> pb.Run:
    """The run; while it runs, with when its lease expires (its last renewal + ``lease_seconds``)."""
    expires = None
    if run.status == RunStatus.RUNNING and run.heartbeat_at is not None:
        expires = run.heartbeat_at + timedelta(seconds=lease_seconds)
    return pb.Run(
        run_id=run.id,
        model_id=run.model_id,
        status=run.status,
        stop_reason=run.stop_reason,
        error=run.error,
        options=codec.options_from_dict(run.options),
        datasets=run.datasets,
        rows=run.rows,
        base_version=run.base_version,
        version=run.version or 0,
        best_epoch=run.best_epoch,
        best_loss=run.best_loss,
        epochs_done=run.epochs_done,
        epochs_planned=epochs_planned(run),
        cancel_requested=run.cancel_requested,
        attempts=run.attempts,
        created_at=timestamp(run.created_at),
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        receipt=receipt_to_proto(run.receipt),
        load_seconds=run.load_seconds,
        train_seconds=run.train_seconds,
        lease_expires_at=timestamp(expires),
    )


def run_event(
    event: Epochs | RunRecord | Stalled, planned: int, lease_seconds: float, together: bool
) -> pb.RunEvent:
    """The wire's event for a watch's: epochs in one ``epochs`` event where the caller asked for
    them ``together``, else (one at a time) a ``progress`` event."""
    if isinstance(event, tuple):
        progress = [codec.epoch_from_dict(entry.record, planned) for entry in event]
        if together:
            return pb.RunEvent(epochs=pb.EpochBatch(epochs=progress))
        (only,) = progress
        return pb.RunEvent(progress=only)
    if isinstance(event, Stalled):
        return pb.RunEvent(stalled=run_to_proto(event.run, lease_seconds))
    return pb.RunEvent(result=run_to_proto(event, lease_seconds))


def train_event(event: EpochEntry | RunRecord, planned: int, transfer_seconds: float) -> pb.TrainEvent:
    if isinstance(event, EpochEntry):
        return pb.TrainEvent(progress=codec.epoch_from_dict(event.record, planned))
    return pb.TrainEvent(
        result=pb.TrainResult(
            run_id=event.id,
            stop_reason=event.stop_reason,
            best_epoch=event.best_epoch,
            best_loss=event.best_loss if event.best_loss is not None else float("nan"),
            version=event.version or event.base_version,
            epochs_run=event.epochs_done,
            transfer_seconds=transfer_seconds + event.load_seconds,
            train_seconds=event.train_seconds,
        )
    )


def training_run_to_proto(run: RunRecord) -> pb.TrainingRun:
    planned = epochs_planned(run)
    return pb.TrainingRun(
        run_id=run.id,
        status=run.status,
        stop_reason=run.stop_reason,
        options=codec.options_from_dict(run.options),
        base_version=run.base_version,
        version=run.version or 0,
        best_epoch=run.best_epoch,
        started_at=timestamp(run.started_at or run.created_at),
        finished_at=timestamp(run.finished_at),
        epochs=[codec.epoch_from_dict(e.record, planned) for e in run.epochs],
        rows=run.rows,
        error=run.error,
    )


# ------------------------------------------------------------------------------------ answers


def prediction_to_proto(prediction: Prediction) -> pb.PredictResponse:
    return codec.prediction_to_proto(prediction)


def gradients_to_proto(result: Gradients) -> pb.GetGradientsResponse:
    return codec.gradients_to_proto(result)
