"""Request decoding with validation, and response packing, on top of :mod:`gradwire.v1.codec`.

Errors name the request field: ``inputs.data``, ``spec.layers[1].units``,
``options.optimizer.name``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gradwire.engine import EpochRecord, InvalidArgument, NetworkSpec, TrainConfig
from gradwire.engine.data import check_finite
from gradwire.storage import ModelRecord, RunRecord
from gradwire.v1 import codec
from gradwire.v1 import gradwire_pb2 as pb

from .errors import prefixed

INPUT_DTYPES = (pb.FLOAT32, pb.FLOAT64)


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


def spec_from_proto(spec: pb.ModelSpec) -> NetworkSpec:
    try:
        return NetworkSpec.from_dict(codec.spec_to_dict(spec))
    except InvalidArgument as exc:
        raise prefixed(exc, "spec") from None


def options_from_proto(options: pb.TrainOptions) -> TrainConfig:
    try:
        return TrainConfig.from_dict(codec.options_to_dict(options))
    except InvalidArgument as exc:
        raise prefixed(exc, "options") from None


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def model_to_proto(model: ModelRecord, classifier: bool, training: bool) -> pb.Model:
    return pb.Model(
        model_id=model.id,
        name=model.name,
        spec=codec.spec_from_dict(model.spec),
        version=model.version,
        parameter_count=model.parameter_count,
        classifier=classifier,
        training=training,
        created_at=timestamp(model.created_at),
        updated_at=timestamp(model.updated_at),
    )


def record_to_dict(record: EpochRecord) -> dict[str, Any]:
    return asdict(record)


def run_to_proto(run: RunRecord) -> pb.TrainingRun:
    epochs_planned = int(run.options.get("epochs") or 0)
    return pb.TrainingRun(
        run_id=run.id,
        status=run.status,
        stop_reason=run.stop_reason,
        options=codec.options_from_dict(run.options),
        base_version=run.base_version,
        version=run.version or 0,
        best_epoch=run.best_epoch,
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        epochs=[codec.epoch_from_dict(e.record, epochs_planned) for e in run.epochs],
        rows=run.rows,
    )
