"""Hand-written conversions between gradwire.v1 messages and plain Python values.

The one conversions module both sides use: the client SDK (which depends on the contract
only) and the service. Plain values are the engine's JSON forms: a spec is
``NetworkSpec.to_dict()``, options are ``TrainConfig.to_dict()``, an epoch is an engine history
record as a dict. Arrays travel as shape, dtype and raw little-endian bytes.

Decoding checks structure only (sizes, dtypes); the service validates meaning with the engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from google.protobuf.message import Message

from . import gradwire_pb2 as pb
from .answers import Gradients, Prediction

DTYPES: dict[int, np.dtype[Any]] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.INT64: np.dtype("<i8"),
}
PROTO_DTYPES = {
    np.dtype(np.float32): pb.FLOAT32,
    np.dtype(np.float64): pb.FLOAT64,
    np.dtype(np.int64): pb.INT64,
}
FLOAT_DTYPES = {"float32": pb.FLOAT32, "float64": pb.FLOAT64}
"""The dtypes a model or a dataset may have, by name: their wire values."""
FLOAT_DTYPE_NAMES = {value: name for name, value in FLOAT_DTYPES.items()}


class TensorError(ValueError):
    """A tensor message that does not describe an array; ``part`` is dtype, shape or data."""

    def __init__(self, part: str, message: str) -> None:
        self.part, self.message = part, message
        super().__init__(f"{part}: {message}")


# ------------------------------------------------------------------------------------ tensors


def array_to_tensor(array: np.ndarray, into: pb.Tensor | None = None) -> pb.Tensor:
    """Any float32, float64 or int64 array as a tensor (copied to little-endian, C order).

    ``into`` fills a tensor field of a message in place (``request.inputs``): for large arrays
    that saves the copy protobuf makes when a finished sub-message is assigned.
    """
    array = np.asarray(array)
    dtype = PROTO_DTYPES.get(array.dtype.newbyteorder("="))
    if dtype is None:
        raise TensorError("dtype", f"{array.dtype} cannot travel; use float32, float64 or int64")
    tensor = pb.Tensor() if into is None else into
    tensor.shape[:] = array.shape
    tensor.dtype = dtype
    tensor.data = np.ascontiguousarray(array, DTYPES[dtype]).tobytes()
    return tensor


MAX_DIMENSION = (1 << 31) - 1
"""The largest size of one dimension a tensor may declare (each dimension is an int64 on the wire)."""


def dtype_name(dtype: int) -> str:
    """The DType enum's name for ``dtype``, or its number for a value outside the enum."""
    return pb.DType.Name(dtype) if dtype in pb.DType.values() else f"DType {dtype}"


def tensor_to_array(tensor: pb.Tensor, allowed: Iterable[int] = DTYPES) -> np.ndarray:
    """A read-only array over the tensor's bytes (no copy), after checking dtype and size."""
    allowed = tuple(allowed)
    if tensor.dtype not in allowed:
        names = ", ".join(dtype_name(d) for d in allowed)
        raise TensorError("dtype", f"must be one of {names}, got {dtype_name(tensor.dtype)}")
    shape = tuple(tensor.shape)
    if any(not 0 <= n <= MAX_DIMENSION for n in shape):
        raise TensorError("shape", f"every size must lie in [0, {MAX_DIMENSION}], got {shape_excerpt(shape)}")
    dtype, data = DTYPES[tensor.dtype], tensor.data  # read once: each read copies the bytes
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise TensorError(
            "data",
            f"has {len(data)} bytes; shape {shape_excerpt(shape)} of {dtype.name} needs {expected}",
        )
    try:
        return np.frombuffer(data, dtype).reshape(shape)
    except ValueError as exc:  # an empty array whose other sizes multiply past what NumPy indexes
        raise TensorError("shape", f"{shape_excerpt(shape)} cannot be an array: {exc}") from None


def shape_excerpt(shape: tuple[int, ...], limit: int = 8) -> str:
    """A shape as a list, its first ``limit`` sizes at most (a caller may send thousands)."""
    head = ", ".join(str(n) for n in shape[:limit])
    return (
        f"[{head}{', ...' if len(shape) > limit else ''}] ({len(shape)} dimensions)"
        if len(shape) > limit
        else f"[{head}]"
    )


# ------------------------------------------------------------------------------------ specs

LAYER_TYPES: dict[str, type[Message]] = {
    "dense": pb.DenseLayer,
    "batchnorm": pb.BatchNormLayer,
    "residual": pb.ResidualBlock,
}
LAYER_DEFAULTS = {
    "dense": {"activation": "relu", "init": "he_normal"},
    "batchnorm": {"activation": "identity"},
    "residual": {"activation": "identity"},
}


def present_fields(message: Message, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The fields that are set: proto3 optionals by presence, other scalars when not zero/empty."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        if names is not None and field.name not in names:
            continue
        value = getattr(message, field.name)
        if field.has_presence:
            if message.HasField(field.name):
                out[field.name] = value
        elif value not in ("", 0, False):
            out[field.name] = value
    return out


def layer_to_dict(layer: pb.Layer) -> dict[str, Any]:
    kind = layer.WhichOneof("kind")
    if kind is None:
        return {}
    body = getattr(layer, kind)
    data = {"kind": kind, **LAYER_DEFAULTS[kind]}
    data |= present_fields(body, [f.name for f in body.DESCRIPTOR.fields if f.name != "layers"])
    if kind == "residual":
        data["layers"] = [layer_to_dict(inner) for inner in body.layers]
    return data


def layer_from_dict(data: Mapping[str, Any]) -> pb.Layer:
    """A layer message from its dict form; ValueError for what it cannot carry (unknown kinds,
    unknown keys, values of the wrong type)."""
    kind = data.get("kind")
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer kind: unknown value {kind!r:.40} (allowed: {', '.join(LAYER_TYPES)})")
    fields: dict[str, Any] = {k: v for k, v in data.items() if k not in ("kind", "layers")}
    if kind == "residual":
        fields["layers"] = [layer_from_dict(inner) for inner in data.get("layers", [])]
    try:
        body = LAYER_TYPES[kind](**fields)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{kind} layer: {exc}") from None
    layer: dict[str, Any] = {kind: body}
    return pb.Layer(**layer)


SPEC_KEYS = ("input_dim", "layers", "loss", "dtype", "seed")
SPEC_DTYPE_NAMES = {pb.DTYPE_UNSPECIFIED: "float64"} | FLOAT_DTYPE_NAMES
"""A spec's dtype by its wire value; unset means float64. Any other value keeps a name the
engine's validation refuses (``int64``, ``DType 77``) instead of silently becoming float64."""


def spec_to_dict(spec: pb.ModelSpec) -> dict[str, Any]:
    dtype = SPEC_DTYPE_NAMES.get(spec.dtype) or dtype_name(spec.dtype).lower()
    return {
        "input_dim": spec.input_dim,
        "layers": [layer_to_dict(layer) for layer in spec.layers],
        "loss": spec.loss,
        "dtype": dtype,
        "seed": spec.seed,
    }


def spec_from_dict(spec: Mapping[str, Any]) -> pb.ModelSpec:
    """A spec message from its dict form; a key or a dtype it cannot carry raises ValueError
    rather than vanish on the way (a typo must not silently build another model)."""
    unknown = sorted(repr(key)[:40] for key in spec if key not in SPEC_KEYS)
    if unknown:
        raise ValueError(f"spec: unknown keys {', '.join(unknown[:10])} (known: {', '.join(SPEC_KEYS)})")
    missing = [key for key in ("input_dim", "layers", "loss") if key not in spec]
    if missing:
        raise ValueError(f"spec: missing keys {missing}")
    dtype = spec.get("dtype", "float64")
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise ValueError(f"spec.dtype: unknown value {dtype!r:.40} (allowed: {', '.join(FLOAT_DTYPES)})")
    layers = spec["layers"]
    if not isinstance(layers, list | tuple):
        raise ValueError("spec.layers: must be a list of layers")
    with _as_value_error("spec"):
        return pb.ModelSpec(
            input_dim=spec["input_dim"],
            layers=[layer_from_dict(layer) for layer in layers],
            loss=spec["loss"],
            dtype=FLOAT_DTYPES[dtype],
            seed=spec.get("seed", 0),
        )


@contextmanager
def _as_value_error(what: str) -> Iterator[None]:
    """protobuf's complaints about a value of the wrong type (TypeError, AttributeError) as the
    ValueError every conversion from plain values raises, naming what was being converted."""
    try:
        yield
    except (TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{what}: {str(exc)[:200]}") from None


# ------------------------------------------------------------------------------------ options


def options_to_dict(options: pb.TrainOptions) -> dict[str, Any]:
    """The options that were set; the engine's defaults fill the rest."""
    data = present_fields(options, [f.name for f in options.DESCRIPTOR.fields if f.message_type is None])
    for part in ("optimizer", "schedule"):
        if options.HasField(part):
            data[part] = present_fields(getattr(options, part))
    return data


def options_from_dict(options: Mapping[str, Any]) -> pb.TrainOptions:
    """Training options from their dict form; ValueError for what the message cannot carry."""
    with _as_value_error("options"):
        plain = {k: v for k, v in options.items() if k not in ("optimizer", "schedule") and v is not None}
        nested: dict[str, Any] = {
            part: message(**{k: v for k, v in options[part].items() if v is not None})
            for part, message in (("optimizer", pb.OptimizerOptions), ("schedule", pb.ScheduleOptions))
            if options.get(part) is not None
        }
        return pb.TrainOptions(**plain, **nested)


# ------------------------------------------------------------------------------------ history


def epoch_from_dict(record: Mapping[str, Any], epochs_planned: int = 0) -> pb.EpochProgress:
    """An engine history record (a dict; JSON nulls allowed) as a progress message, with an ETA."""
    elapsed = float(record.get("elapsed") or 0.0)
    epoch = int(record["epoch"])
    remaining = max(epochs_planned - epoch, 0)
    train_metric = record.get("train_metric")
    return pb.EpochProgress(
        epoch=epoch,
        train_loss=record["train_loss"],
        val_loss=record.get("val_loss"),
        metric_name=record.get("metric_name") or "",
        train_metric=math.nan if train_metric is None else train_metric,
        val_metric=record.get("val_metric"),
        learning_rate=record.get("learning_rate") or 0.0,
        grad_norms=record.get("grad_norms") or {},
        update_ratios=record.get("update_ratios") or {},
        elapsed_seconds=elapsed,
        eta_seconds=elapsed / epoch * remaining if epoch else 0.0,
        epochs_planned=epochs_planned,
        samples=int(record.get("samples") or 0),
    )


def epoch_to_dict(progress: pb.EpochProgress) -> dict[str, Any]:
    return {
        "epoch": progress.epoch,
        "train_loss": progress.train_loss,
        "val_loss": progress.val_loss if progress.HasField("val_loss") else None,
        "metric_name": progress.metric_name,
        "train_metric": progress.train_metric,
        "val_metric": progress.val_metric if progress.HasField("val_metric") else None,
        "learning_rate": progress.learning_rate,
        "grad_norms": dict(progress.grad_norms),
        "update_ratios": dict(progress.update_ratios),
        "elapsed": progress.elapsed_seconds,
        "eta": progress.eta_seconds,
        "epochs_planned": progress.epochs_planned,
        "samples": progress.samples,
    }


# ------------------------------------------------------------------------------------ answers


def prediction_to_proto(prediction: Prediction) -> pb.PredictResponse:
    reply = pb.PredictResponse(version=prediction.version)
    array_to_tensor(prediction.outputs, into=reply.outputs)
    if prediction.labels is not None:
        array_to_tensor(prediction.labels, into=reply.labels)
    return reply


def prediction_from_proto(reply: pb.PredictResponse) -> Prediction:
    labels = tensor_to_array(reply.labels) if reply.HasField("labels") else None
    return Prediction(tensor_to_array(reply.outputs), labels, reply.version)


def gradients_to_proto(gradients: Gradients) -> pb.GetGradientsResponse:
    return pb.GetGradientsResponse(
        loss=gradients.loss,
        gradients=[pb.NamedTensor(name=k, tensor=array_to_tensor(g)) for k, g in gradients.gradients.items()],
        version=gradients.version,
        max_relative_error=gradients.max_relative_error,
    )


def gradients_from_proto(reply: pb.GetGradientsResponse) -> Gradients:
    grads = {g.name: tensor_to_array(g.tensor) for g in reply.gradients}
    return Gradients(reply.loss, grads, reply.version, dict(reply.max_relative_error))
